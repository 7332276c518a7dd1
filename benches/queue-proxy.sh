#!/usr/bin/env bash
# Load benchmark for the queue-proxy (issue: "Benchmark"). Not a test: it prints figures
# and ratios measured in one run, so the shared machine's noise hits every row alike.
#
# Setup: sample-app and the proxy under test pinned to core 0, hey pinned to core 1.
# Rows: straight to the app; through the queue-proxy with CC=0 and CC=10; nginx and
# HAProxy (Debian packages) as reverse-proxy peers with keep-alive upstreams, if present.
# Columns: requests/s, p50/p99, the proxy's CPU per request (utime+stime from
# /proc/PID/stat), RSS idle and at the end of load; then CPU per request at a smooth
# 1,000 requests/s, and the queue-proxy's wake-ups per second when idle.
#
# Env: DURATION (default 10s), CONCURRENCY (50), RATE_DURATION (10s), BIN (target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DURATION=${DURATION:-10s}
CONC=${CONCURRENCY:-50}
RATE_DURATION=${RATE_DURATION:-10s}
TICK=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

for tool in hey taskset; do
  command -v $tool >/dev/null || { echo "bench: $tool is required (apt-get install -y hey util-linux)"; exit 1; }
done
[ -x "$BIN/queue-proxy" ] && [ -x "$BIN/sample-app" ] || { echo "bench: build first: make release"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.02; done; echo "port $1 never opened"; exit 1; }
# CPU ticks of a process and its children threads (nginx/haproxy: every process given).
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
user_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14}' /proc/$p/stat))); done; echo $t; }
rss_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/$p/status))); done; echo $t; }
# Voluntary context switches of every thread of a process: each is a wake-up.
vcsw() { cat /proc/$1/task/*/status | awk '/^voluntary_ctxt_switches/{t+=$2} END{print t}'; }

APP_PORT=$(free_port)
taskset -c 0 env PORT=$APP_PORT SAMPLE_APP_BIND=127.0.0.1 "$BIN/sample-app" 2>/dev/null & PIDS+=($!)
wait_port $APP_PORT

start_qp() { # CC -> sets QP_PID QP_PORT
  QP_PORT=$(free_port)
  taskset -c 0 env SERVING_NAMESPACE=default SERVING_CONFIGURATION=bench SERVING_REVISION=bench-00001 \
    SERVING_POD=bench-pod SERVING_POD_IP=127.0.0.1 QUEUE_SERVING_PORT=$QP_PORT USER_PORT=$APP_PORT \
    CONTAINER_CONCURRENCY=$1 REVISION_TIMEOUT_SECONDS=300 SLUICE_BIND_ADDRESS=127.0.0.1 \
    SLUICE_ADMIN_PORT=0 SLUICE_METRICS_PORT=0 SLUICE_USER_METRICS_PORT=0 SLUICE_DRAIN_QUIET_PERIOD=0s \
    RUST_LOG=warn "$BIN/queue-proxy" & QP_PID=$!; PIDS+=($QP_PID)
  wait_port $QP_PORT
}

start_nginx() { # -> NGINX_PIDS NGINX_PORT
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:$APP_PORT; keepalive 128; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }
CONF
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>/dev/null & PIDS+=($!)
  wait_port $NGINX_PORT
  NGINX_PIDS=$(pgrep -f "nginx -c $WORK/nginx/nginx.conf" | tr '\n' ' ')
  NGINX_PIDS="$NGINX_PIDS $(pgrep -P "$(echo $NGINX_PIDS | cut -d' ' -f1)" | tr '\n' ' ')"
  NGINX_PIDS=$(echo $NGINX_PIDS | tr ' ' '\n' | sort -u | tr '\n' ' ')
}

start_haproxy() { # -> HAPROXY_PID HAPROXY_PORT
  HAPROXY_PORT=$(free_port)
  cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend app
backend app
  server app 127.0.0.1:$APP_PORT
CONF
  taskset -c 0 haproxy -q -f "$WORK/haproxy.cfg" & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
  wait_port $HAPROXY_PORT
}

# run NAME URL PIDS... : hey at CONC for DURATION; prints a row
printf '\n%-22s %10s %9s %9s %12s %10s %10s\n' "closed loop (-c $CONC)" "req/s" "p50 ms" "p99 ms" "CPU us/req" "RSS idle" "RSS load"
declare -A RPS CPU
run() {
  local name=$1 url=$2; shift 2
  local idle=0 c0=0
  if [ $# -gt 0 ]; then idle=$(rss_kib "$@"); c0=$(cpu_ticks "$@"); fi
  taskset -c 1 hey -z "$DURATION" -c "$CONC" "$url" > "$WORK/hey.out" &
  local hey=$!
  sleep $(( ${DURATION%s} * 3 / 4 ))
  local load=0; [ $# -gt 0 ] && load=$(rss_kib "$@")
  wait $hey
  local n rps p50 p99 cpu="-"
  n=$(grep -oP '\[200\]\s+\K\d+' "$WORK/hey.out" || echo 0)
  rps=$(grep -oP 'Requests/sec:\s+\K[\d.]+' "$WORK/hey.out")
  p50=$(grep -oP '50% in \K[\d.]+' "$WORK/hey.out"); p99=$(grep -oP '99% in \K[\d.]+' "$WORK/hey.out")
  if [ $# -gt 0 ]; then
    cpu=$(echo "($(cpu_ticks "$@") - $c0) * 1000000 / $TICK / $n" | bc -l)
    CPU[$name]=$cpu; cpu=$(printf '%.1f' "$cpu")
  fi
  RPS[$name]=$rps
  printf '%-22s %10.0f %9.2f %9.2f %12s %8s K %8s K\n' "$name" "$rps" "$(echo "$p50*1000" | bc -l)" "$(echo "$p99*1000" | bc -l)" "$cpu" \
    "$([ $# -gt 0 ] && echo $idle || echo -)" "$([ $# -gt 0 ] && echo $load || echo -)"
  if grep -q 'Error distribution' "$WORK/hey.out" || [ "$(grep -c '^\s*\[' "$WORK/hey.out")" -gt 1 ]; then
    echo "   (not all 200:)"; sed -n '/Status code distribution/,$p' "$WORK/hey.out" | sed 's/^/   /'
  fi
}

# rate NAME URL PIDS... : a smooth 1,000 requests/s (10 workers x 100/s) for RATE_DURATION
declare -A RCPU
rate() {
  local name=$1 url=$2; shift 2
  local c0; c0=$(cpu_ticks "$@")
  taskset -c 1 hey -z "$RATE_DURATION" -c 10 -q 100 "$url" > "$WORK/hey.out"
  local n; n=$(grep -oP '\[200\]\s+\K\d+' "$WORK/hey.out" || echo 0)
  RCPU[$name]=$(echo "($(cpu_ticks "$@") - $c0) * 1000000 / $TICK / $n" | bc -l)
  printf '%-22s %10s %12.1f\n' "$name" "$n" "${RCPU[$name]}"
}

run direct "http://127.0.0.1:$APP_PORT/"
start_qp 0;  QP0=$QP_PID;  QP0_PORT=$QP_PORT
run "queue-proxy CC=0" "http://127.0.0.1:$QP0_PORT/" $QP0
start_qp 10; QP10=$QP_PID; QP10_PORT=$QP_PORT
run "queue-proxy CC=10" "http://127.0.0.1:$QP10_PORT/" $QP10
HAVE_NGINX=0; HAVE_HAPROXY=0
if command -v nginx >/dev/null; then start_nginx; HAVE_NGINX=1; run nginx "http://127.0.0.1:$NGINX_PORT/" $NGINX_PIDS; fi
if command -v haproxy >/dev/null; then start_haproxy; HAVE_HAPROXY=1; run haproxy "http://127.0.0.1:$HAPROXY_PORT/" $HAPROXY_PID; fi

printf '\n%-22s %10s %12s\n' "1,000 req/s (-q)" "requests" "CPU us/req"
rate "queue-proxy CC=0" "http://127.0.0.1:$QP0_PORT/" $QP0
rate "queue-proxy CC=10" "http://127.0.0.1:$QP10_PORT/" $QP10
[ $HAVE_NGINX = 1 ] && rate nginx "http://127.0.0.1:$NGINX_PORT/" $NGINX_PIDS
[ $HAVE_HAPROXY = 1 ] && rate haproxy "http://127.0.0.1:$HAPROXY_PORT/" $HAPROXY_PID

# Idle: the queue-proxy should wake once a second (the stats report), nothing else.
s0=$(vcsw $QP10); sleep 10; s1=$(vcsw $QP10)
printf '\nqueue-proxy idle wake-ups: %.1f/s (voluntary context switches of all its threads over 10 s)\n' "$(echo "($s1-$s0)/10" | bc -l)"

printf '\nratios (same run)\n'
for cc in 0 10; do
  q="queue-proxy CC=$cc"
  printf '  %-18s throughput vs direct %.2fx' "$q" "$(echo "${RPS[$q]} / ${RPS[direct]}" | bc -l)"
  [ $HAVE_NGINX = 1 ] && printf ', CPU/req vs nginx %.2fx' "$(echo "${CPU[$q]} / ${CPU[nginx]}" | bc -l)"
  [ $HAVE_HAPROXY = 1 ] && printf ', vs haproxy %.2fx' "$(echo "${CPU[$q]} / ${CPU[haproxy]}" | bc -l)"
  [ $HAVE_NGINX = 1 ] && printf ', at 1k req/s vs nginx %.2fx' "$(echo "${RCPU[$q]} / ${RCPU[nginx]}" | bc -l)"
  echo
done
