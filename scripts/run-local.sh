#!/usr/bin/env bash
# Runs the sample app behind a queue-proxy on this machine, with Knative's ports:
# the app on 8080, the queue-proxy on 8012 (admin 8022, metrics 9090/9091).
# Override with APP_PORT, QUEUE_PORT, CONTAINER_CONCURRENCY. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
APP_PORT=${APP_PORT:-8080}
QUEUE_PORT=${QUEUE_PORT:-8012}
CC=${CONTAINER_CONCURRENCY:-10}

PORT=$APP_PORT TARGET=${TARGET:-Sluice} "$bin/sample-app" &
app=$!
stop() { kill -TERM $app ${qp:-} 2>/dev/null || true; wait 2>/dev/null || true; }
# Ctrl-C or SIGTERM: the queue-proxy drains (1 s quiet period), then both exit; so do we, cleanly.
trap 'stop; exit 0' INT TERM
trap stop EXIT

SERVING_NAMESPACE=default SERVING_SERVICE=hello SERVING_CONFIGURATION=hello \
SERVING_REVISION=hello-00001 SERVING_POD=hello-00001-local SERVING_POD_IP=127.0.0.1 \
QUEUE_SERVING_PORT=$QUEUE_PORT USER_PORT=$APP_PORT CONTAINER_CONCURRENCY=$CC \
REVISION_TIMEOUT_SECONDS=300 SLUICE_DRAIN_QUIET_PERIOD=${SLUICE_DRAIN_QUIET_PERIOD:-1s} \
SERVING_READINESS_PROBE="{\"tcpSocket\":{\"port\":$APP_PORT,\"host\":\"127.0.0.1\"}}" \
  "$bin/queue-proxy" &
qp=$!

cat <<MSG
sample-app on :$APP_PORT behind a queue-proxy on :$QUEUE_PORT (containerConcurrency $CC). Try:
  curl localhost:$QUEUE_PORT/
  curl 'localhost:$QUEUE_PORT/?sleep=100&prime=10000'
  hey -z 10s -c 50 'http://localhost:$QUEUE_PORT/?sleep=100'     # all 200: 10 run, 40 wait
  hey -n 300 -c 150 'http://localhost:$QUEUE_PORT/?sleep=300'   # past 110 admitted: 503s
  curl -H 'User-Agent: kube-probe/1.30' -H 'K-Network-Probe: queue' localhost:$QUEUE_PORT/
  curl -H 'Accept: text/plain' localhost:9090/metrics; curl localhost:9091/metrics
Ctrl-C drains and stops.
MSG
wait $qp
