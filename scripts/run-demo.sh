#!/usr/bin/env bash
# The data plane on this machine, without Kubernetes: builds the activator, the queue-proxy and
# the sample app, then runs `activator --local examples/local.toml`. The activator listens on
# :8012 (HTTP/1.1 and h2c) and starts instances of the `hello` service (the sample app behind a
# real queue-proxy) when requests arrive; after 30 s without traffic it stops them again.
#
# Then, in another terminal:
#   curl -i -H 'Host: hello.localhost' localhost:8012/    # a cold start: an instance starts, 200
#   curl -s localhost:9090/metrics | grep kn_revision      # the activator's gauges
# Ctrl-C stops the activator and every instance.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p activator -p queue-proxy --bins --example hello
exec target/release/activator --local examples/local.toml
