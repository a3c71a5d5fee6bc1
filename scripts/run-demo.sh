#!/usr/bin/env bash
# Runs the data plane on this machine: the activator in front of one "pod" (a queue-proxy and a
# sample app), with the environments Knative would give them. The pod starts 5 seconds after the
# activator, so a request sent at once waits in the activator and is released when the pod's
# queue-proxy first answers its probe (a cold start). Ctrl-C stops everything.
#
#   activator                  :8012, :8013 (HTTP/1.1 + h2c), :9090 (Prometheus)
#   queue-proxy (the pod)      127.0.0.1:18012, stat on :19090, admin :18022
#   app (python3 http.server)  127.0.0.1:8080
#
# Then, in another terminal:
#   curl -i -H 'Host: hello-00001.default.svc.cluster.local' localhost:8012/   # through both
#   curl -s localhost:9090/metrics                                              # activator gauges
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p queue-proxy -p activator
work=$(mktemp -d)
echo "hello from the sample app" > "$work/index.html"
cat > "$work/revisions.json" <<JSON
{"revisions":[{"namespace":"default","name":"hello-00001","containerConcurrency":0,
  "timeoutSeconds":300,"endpoints":["127.0.0.1:18012"]}]}
JSON
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

env POD_NAME=activator-local SYSTEM_NAMESPACE=knative-serving \
    target/release/activator --revisions "$work/revisions.json" --ready-without-autoscaler \
    --drain-seconds 0 &
pids+=($!)
echo "activator up; the pod starts in 5 s: send a request now to watch it wait" >&2
sleep 5

python3 -m http.server 8080 --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
pids+=($!)
env CONTAINER_CONCURRENCY=0 \
    QUEUE_SERVING_PORT=18012 \
    QUEUE_SERVING_TLS_PORT=18112 \
    QUEUE_METRICS_PORT=19090 \
    QUEUE_ADMIN_PORT=18022 \
    USER_PORT=8080 \
    REVISION_TIMEOUT_SECONDS=300 \
    SERVING_LOGGING_CONFIG='' \
    SERVING_LOGGING_LEVEL=info \
    SERVING_NAMESPACE=default \
    SERVING_CONFIGURATION=hello \
    SERVING_REVISION=hello-00001 \
    SERVING_POD=hello-00001-deployment-local \
    SERVING_POD_IP=127.0.0.1 \
    SERVING_READINESS_PROBE='{"tcpSocket":{"port":8080,"host":"127.0.0.1"}}' \
    QUEUE_DRAIN_QUIET_SECONDS=1 \
    target/release/queue-proxy &
pids+=($!)
wait -n
