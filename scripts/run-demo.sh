#!/usr/bin/env bash
# Runs queue-proxy in front of a sample app on this machine, with the environment Knative's
# controller would give it. Ctrl-C stops both.
#
#   app (python3 http.server)  127.0.0.1:8080
#   queue-proxy                :8012 (HTTP/1.1 + h2c), :9090 (autoscaler stat), :8022 (admin)
#
# Then, in another terminal:
#   curl -i localhost:8012/                                            # proxied to the app
#   curl -i -H 'User-Agent: kube-probe/1.30' -H 'K-Network-Probe: queue' localhost:8012/   # 200 queue
#   curl -s localhost:9090/metrics | od -c | head                      # protobuf Stat
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p queue-proxy
site=$(mktemp -d)
echo "hello from the sample app" > "$site/index.html"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
app=$!
trap 'kill $app 2>/dev/null; rm -rf "$site"' EXIT

env CONTAINER_CONCURRENCY=0 \
    QUEUE_SERVING_PORT=8012 \
    QUEUE_SERVING_TLS_PORT=8112 \
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
    target/release/queue-proxy
