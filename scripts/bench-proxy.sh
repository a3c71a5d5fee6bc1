#!/usr/bin/env bash
# bench-proxy.sh -- compare queue-proxy against nginx as a reverse proxy.
#
# What it measures (everything on 127.0.0.1, all servers started by this script):
#   * HTTP/1.1 throughput and latency with `wrk -t1 -c32 --latency` against
#       direct  : the "app" (nginx, 1 worker, `return 200 "ok\n"`)
#       nginx   : nginx reverse proxy (1 worker, upstream keepalive) -> app
#       qp      : queue-proxy (CONTAINER_CONCURRENCY=0)              -> app
#     in interleaved rounds (direct, nginx, qp, direct, nginx, qp, ...);
#     reports the median over rounds of req/s, p50 and p99, and the ratios
#     qp/nginx, qp/direct, nginx/direct.
#   * RSS of queue-proxy (VmRSS/VmHWM from /proc): idle (after readiness, before
#     any load), peak while `wrk -t1 -c1000` hammers it (VmRSS sampled every
#     100 ms, plus VmHWM), and after that load ended. Same for the nginx proxy
#     (master + worker summed) for scale.
#   * h2c end to end: `h2load -c10 -m10` against an h2c (prior-knowledge) nginx
#     app, directly and through a second queue-proxy instance.
#   * The queue-proxy worker-thread count, taken from its JSON startup log
#     ("workers":N).
# The report (markdown) goes to stdout and to $OUT; progress goes to stderr.
#
# Usage (from anywhere; paths are resolved relative to the repo root):
#   scripts/bench-proxy.sh
#   DURATION=2 ROUNDS=1 QP_BIN=/path/to/queue-proxy scripts/bench-proxy.sh
#
# Env knobs:
#   DURATION      seconds per wrk throughput run              (default 10)
#   ROUNDS        interleaved rounds (direct, nginx, qp)      (default 3)
#   QP_BIN        queue-proxy binary; when set, the `cargo build --release
#                 -p queue-proxy` step is skipped   (default target/release/queue-proxy)
#   OUT           where to also write the report              (default target/bench-proxy.md)
#   KEEP=1        keep the temp dir (configs, logs, raw wrk/h2load output)
#   QUEUE_WORKER_THREADS  passed through to queue-proxy if set
#   Less common:  CONNS (32), WARMUP seconds per target before the rounds (1, 0=off),
#                 RSS_CONNS (1000), RSS_DURATION (10), H2_REQUESTS (20000),
#                 H2_CLIENTS (10), H2_STREAMS (10), READY_TIMEOUT seconds (15)
#
# Requires: wrk, nginx, h2load, curl, python3 (port picking), awk, timeout, ps.
#   apt-get install -y wrk nginx-light nghttp2-client curl python3
# nginx is run with `user root;` when the script runs as root.

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-1}
RSS_CONNS=${RSS_CONNS:-1000}
RSS_DURATION=${RSS_DURATION:-10}
H2_REQUESTS=${H2_REQUESTS:-20000}
H2_CLIENTS=${H2_CLIENTS:-10}
H2_STREAMS=${H2_STREAMS:-10}
READY_TIMEOUT=${READY_TIMEOUT:-15}
KEEP=${KEEP:-0}

log()  { printf '[bench] %s\n' "$*" >&2; }
warn() { printf '[bench] WARNING: %s\n' "$*" >&2; }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

for v in DURATION ROUNDS CONNS WARMUP RSS_CONNS RSS_DURATION H2_REQUESTS H2_CLIENTS H2_STREAMS READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
(( ROUNDS >= 1 && DURATION >= 1 )) || die "ROUNDS and DURATION must be >= 1"

# ---------------------------------------------------------------- tools ----
NGINX=${NGINX:-$(command -v nginx || true)}
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
for t in wrk h2load curl python3 awk timeout ps sort; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[[ -n $NGINX && -x $NGINX ]] || missing+=(nginx)
if (( ${#missing[@]} )); then
  printf '[bench] ERROR: missing tools: %s\n' "${missing[*]}" >&2
  printf '[bench] install with: apt-get install -y wrk nginx-light nghttp2-client curl python3\n' >&2
  exit 1
fi

# ---------------------------------------------------------------- paths ----
ORIG_PWD=$PWD
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ORIG_PWD/$1" ;; esac; }

if [[ -n ${QP_BIN:-} ]]; then
  QP_BIN=$(abspath "$QP_BIN")
  log "using QP_BIN=$QP_BIN (skipping cargo build)"
else
  log "building: cargo build --release -p queue-proxy"
  (cd "$REPO_ROOT" && cargo build --release -p queue-proxy) >&2
  tdir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
  case $tdir in /*) ;; *) tdir=$REPO_ROOT/$tdir ;; esac
  QP_BIN=$tdir/release/queue-proxy
fi
[[ -x $QP_BIN ]] || die "queue-proxy binary not found or not executable: $QP_BIN"

if [[ -n ${OUT:-} ]]; then OUT=$(abspath "$OUT"); else OUT=$REPO_ROOT/target/bench-proxy.md; fi
mkdir -p "$(dirname "$OUT")"
cd "$REPO_ROOT"

# --------------------------------------------------------------- ulimit ----
want_nofile=65536
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && (( hard < want_nofile )); then want_nofile=$hard; fi
ulimit -n "$want_nofile" 2>/dev/null || warn "could not raise ulimit -n to $want_nofile"
NOFILE=$(ulimit -n)
(( NOFILE >= RSS_CONNS + 200 )) || warn "ulimit -n is $NOFILE; the -c$RSS_CONNS run needs more (raise the hard limit)"
NGX_CONNS=$(( NOFILE / 2 > 1024 ? NOFILE / 2 : 1024 ))

# ------------------------------------------------------ temp + cleanup ----
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-proxy.XXXXXX")
PIDS=()

alive() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

cleanup() {
  local rc=$? pid kids=() i
  trap - EXIT INT TERM
  set +e
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    alive "$pid" || continue
    kids+=($(children "$pid"))
    kill -TERM "$pid" 2>/dev/null
  done
  for (( i = 0; i < 50; i++ )); do
    local any=0
    for pid in ${PIDS[@]+"${PIDS[@]}"} ${kids[@]+"${kids[@]}"}; do alive "$pid" && any=1; done
    (( any )) || break
    sleep 0.1
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"} ${kids[@]+"${kids[@]}"}; do
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do wait "$pid" 2>/dev/null; done
  if [[ $KEEP == 1 ]]; then
    log "kept temp dir: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- ports ----
# Pick free ports *below* the ephemeral range so wrk's client sockets never
# collide with them.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
try:
    lo = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
except Exception:
    lo = 32768
cands = list(range(max(1025, lo - 12000), lo))
random.shuffle(cands)
got = []
for p in cands:
    s = socket.socket()
    try:
        s.bind(('127.0.0.1', p))
    except OSError:
        continue
    finally:
        s.close()
    got.append(p)
    if len(got) == n:
        break
if len(got) < n:
    sys.exit("not enough free ports")
print(' '.join(map(str, got)))
PY
}
PORTS=$(free_ports 11) || die "could not allocate free ports"
read -r APP_PORT NGX_PORT QP_PORT QP_TLS QP_METRICS QP_ADMIN H2APP_PORT QP2_PORT QP2_TLS QP2_METRICS QP2_ADMIN <<<"$PORTS"

# ---------------------------------------------------------------- nginx ----
NGX_USER_LINE=""
(( EUID == 0 )) && NGX_USER_LINE="user root;"
NGX_V=$("$NGINX" -V 2>&1 || true)

# nginx_conf DIR LISTEN_ARGS LOCATION_BODY [EXTRA_HTTP]
nginx_conf() {
  local dir=$1 listen=$2 loc=$3 extra=${4:-} temps="" m
  temps+="    client_body_temp_path $dir/client_body;"$'\n'
  temps+="    proxy_temp_path $dir/proxy;"$'\n'
  for m in fastcgi uwsgi scgi; do
    [[ $NGX_V == *"--without-http_${m}_module"* ]] || temps+="    ${m}_temp_path $dir/$m;"$'\n'
  done
  cat >"$dir/nginx.conf" <<EOF
$NGX_USER_LINE
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $NGX_CONNS; }
http {
    access_log off;
$temps
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
$extra
    server {
        listen $listen;
        location / { $loc }
    }
}
EOF
}

# start_nginx NAME -> sets LAST_PID
start_nginx() {
  local dir=$TMP/$1
  "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_ready NAME PID LOGFILE URL [curl args...]; returns 1 on failure
wait_ready() {
  local name=$1 pid=$2 logf=$3 url=$4 code i
  shift 4
  for (( i = 0; i < READY_TIMEOUT * 10; i++ )); do
    if ! alive "$pid"; then
      warn "$name (pid $pid) exited during startup; last log lines of $logf:"
      tail -n 20 "$logf" >&2 2>/dev/null || true
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null || true)
    [[ $code == 200 ]] && { log "$name ready at $url"; return 0; }
    sleep 0.1
  done
  warn "$name did not answer 200 at $url within ${READY_TIMEOUT}s (last code: ${code:-none}); last log lines of $logf:"
  tail -n 20 "$logf" >&2 2>/dev/null || true
  return 1
}

# ---------------------------------------------------------- queue-proxy ----
# start_qp NAME USER_PORT SERVING_PORT TLS_PORT METRICS_PORT ADMIN_PORT -> LAST_PID
start_qp() {
  local dir=$TMP/$1
  mkdir -p "$dir"
  (
    export CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT=$3 QUEUE_SERVING_TLS_PORT=$4 USER_PORT=$2 \
      REVISION_TIMEOUT_SECONDS=300 SERVING_LOGGING_CONFIG='' SERVING_LOGGING_LEVEL='' \
      SERVING_NAMESPACE=default SERVING_CONFIGURATION='' SERVING_REVISION=bench-00001 \
      SERVING_POD=bench-pod SERVING_POD_IP=127.0.0.1 QUEUE_METRICS_PORT=$5 QUEUE_ADMIN_PORT=$6 \
      QUEUE_CERTS_DIR=$dir/certs-does-not-exist QUEUE_DRAIN_QUIET_SECONDS=0
    if [[ -n ${QUEUE_WORKER_THREADS:-} ]]; then export QUEUE_WORKER_THREADS; fi
    exec "$QP_BIN"
  ) >"$dir/qp.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

qp_workers() {
  local logf=$1 w="" i
  for (( i = 0; i < 10; i++ )); do
    w=$(grep -o '"workers":[0-9]*' "$logf" 2>/dev/null | head -n 1 | cut -d: -f2 || true)
    [[ -n $w ]] && break
    sleep 0.1
  done
  printf '%s\n' "${w:-unknown}"
}

# ------------------------------------------------------------------ RSS ----
status_kb() {   # PID FIELD -> kB (0 if the process is gone)
  local v=""
  [[ -r /proc/$1/status ]] && v=$(awk -v f="$2:" '$1 == f { print $2; exit }' "/proc/$1/status" 2>/dev/null || true)
  [[ $v =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}
tree_kb() {   # PID FIELD: sum over PID and its direct children (nginx master + workers)
  local pid=$1 f=$2 sum=0 p k
  for p in "$pid" $(children "$pid"); do
    k=$(status_kb "$p" "$f"); sum=$(( sum + ${k:-0} ))
  done
  echo "$sum"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
reset_hwm() { local p; for p in "$1" $(children "$1"); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || HWM_RESET_FAILED=1; done; }
HWM_RESET_FAILED=0

# ------------------------------------------------------------------ wrk ----
# run_bg OUTFILE CMD... : run CMD in the background (so INT/TERM traps fire
# immediately instead of after the command), register it for cleanup, wait.
run_bg() {
  local out=$1 pid
  shift
  "$@" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid"
}
# run_wrk URL CONNS SECONDS OUTFILE
run_wrk() {
  run_bg "$4" timeout -k 5 $(( $3 + 30 )) wrk -t1 -c"$2" -d"$3"s --latency "$1" ||
    warn "wrk against $1 exited non-zero (see $4)"
}
# parse_wrk FILE -> "rps p50_ms p99_ms errors requests"
parse_wrk() {
  awk '
    function ms(v,   n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000; if (u == "ms") return n; if (u == "s") return n * 1000
      if (u == "m") return n * 60000; if (u == "h") return n * 3600000; return n }
    $1 == "50%"           { p50 = ms($2) }
    $1 == "99%"           { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    / requests in /       { reqs = $1 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/      { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) err += $i + 0 }
    END { printf "%s %s %s %d %s\n", (rps == "" ? "nan" : rps), (p50 == "" ? "nan" : p50),
                  (p99 == "" ? "nan" : p99), err, (reqs == "" ? 0 : reqs) }' "$1"
}

median() {   # numbers on stdin (nan ignored) -> median or nan
  grep -v '^nan$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fmt()   { awk -v x="$1" -v f="$2" 'BEGIN { if (x == "nan" || x == "") print "n/a"; else printf f, x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# ---------------------------------------------------------------- start ----
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l + 0 > 0.5) }'; then
  warn "1-min load average is ${LOADAVG_START%% *}: the machine is busy, numbers will be noisy"
fi
mkdir -p "$TMP/app" "$TMP/nginx" "$TMP/h2app" "$TMP/raw"

nginx_conf "$TMP/app" "127.0.0.1:$APP_PORT" 'return 200 "ok\n";'
start_nginx app; APP_PID=$LAST_PID
wait_ready "app nginx" "$APP_PID" "$TMP/app/error.log" "http://127.0.0.1:$APP_PORT/" || die "app nginx failed to start"

nginx_conf "$TMP/nginx" "127.0.0.1:$NGX_PORT" \
  'proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";' \
  "    upstream app { server 127.0.0.1:$APP_PORT; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }"
start_nginx nginx; NGX_PID=$LAST_PID
wait_ready "nginx proxy" "$NGX_PID" "$TMP/nginx/error.log" "http://127.0.0.1:$NGX_PORT/" || die "nginx proxy failed to start"

start_qp qp "$APP_PORT" "$QP_PORT" "$QP_TLS" "$QP_METRICS" "$QP_ADMIN"; QP_PID=$LAST_PID
wait_ready "queue-proxy" "$QP_PID" "$TMP/qp/qp.log" "http://127.0.0.1:$QP_PORT/" || die "queue-proxy failed to start (log: $TMP/qp/qp.log; rerun with KEEP=1 to keep it)"

# Idle RSS: after readiness, before any load.
QP_IDLE_KB=$(tree_kb "$QP_PID" VmRSS)
NGX_IDLE_KB=$(tree_kb "$NGX_PID" VmRSS)
QP_WORKERS=$(qp_workers "$TMP/qp/qp.log")
log "queue-proxy pid $QP_PID, workers=$QP_WORKERS, idle RSS $(mib "$QP_IDLE_KB") MiB"

# ----------------------------------------------------------- throughput ----
TARGETS=(direct nginx qp)
declare -A URL=(
  [direct]="http://127.0.0.1:$APP_PORT/"
  [nginx]="http://127.0.0.1:$NGX_PORT/"
  [qp]="http://127.0.0.1:$QP_PORT/"
)
declare -A LABEL=(
  [direct]="direct (nginx app)"
  [nginx]="nginx proxy (upstream keepalive 64)"
  [qp]="queue-proxy"
)

if (( WARMUP > 0 )); then
  for t in "${TARGETS[@]}"; do
    log "warmup $t (${WARMUP}s)"
    run_wrk "${URL[$t]}" "$CONNS" "$WARMUP" "$TMP/raw/warmup-$t.txt"
  done
fi

for (( r = 1; r <= ROUNDS; r++ )); do
  for t in "${TARGETS[@]}"; do
    log "round $r/$ROUNDS: $t (wrk -t1 -c$CONNS -d${DURATION}s)"
    f=$TMP/raw/wrk-$t-r$r.txt
    run_wrk "${URL[$t]}" "$CONNS" "$DURATION" "$f"
    read -r rps p50 p99 errs reqs <<<"$(parse_wrk "$f")"
    log "  $t: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $errs"
    echo "$r $rps $p50 $p99 $errs" >>"$TMP/raw/$t.tsv"
  done
done

declare -A RPS P50 P99 ERRS ROUNDS_RPS
for t in "${TARGETS[@]}"; do
  RPS[$t]=$(awk '{ print $2 }' "$TMP/raw/$t.tsv" | median)
  P50[$t]=$(awk '{ print $3 }' "$TMP/raw/$t.tsv" | median)
  P99[$t]=$(awk '{ print $4 }' "$TMP/raw/$t.tsv" | median)
  ERRS[$t]=$(awk '{ s += $5 } END { print s + 0 }' "$TMP/raw/$t.tsv")
  ROUNDS_RPS[$t]=$(awk '{ printf "%s%.0f", (NR > 1 ? " / " : ""), $2 }' "$TMP/raw/$t.tsv")
done

# ------------------------------------------------------------ RSS load ----
# rss_load NAME PID URL -> sets PEAK_KB AFTER_KB SAMPLE_MAX_KB HWM_KB C1000_LINE
rss_load() {
  local name=$1 pid=$2 url=$3 f=$TMP/raw/wrk-rss-$1.txt wpid kb max=0 hwm
  reset_hwm "$pid"
  log "RSS load: $name (wrk -t1 -c$RSS_CONNS -d${RSS_DURATION}s), sampling VmRSS every 100 ms"
  # started directly (no subshell) so that $! is timeout(1), which forwards TERM to wrk
  timeout -k 5 $(( RSS_DURATION + 30 )) wrk -t1 -c"$RSS_CONNS" -d"$RSS_DURATION"s --latency "$url" >"$f" 2>&1 &
  wpid=$!
  PIDS+=("$wpid")
  while alive "$wpid"; do
    kb=$(tree_kb "$pid" VmRSS)
    (( kb > max )) && max=$kb
    sleep 0.1
  done
  wait "$wpid" || warn "wrk against $url exited non-zero (see $f)"
  hwm=$(tree_kb "$pid" VmHWM)
  SAMPLE_MAX_KB=$max
  HWM_KB=$hwm
  PEAK_KB=$(( max > hwm ? max : hwm ))
  sleep 1
  AFTER_KB=$(tree_kb "$pid" VmRSS)
  read -r rps _ p99 errs _ <<<"$(parse_wrk "$f")"
  C1000_LINE="$(fmt "$rps" '%.0f') req/s, p99 $(fmt "$p99" '%.2f') ms, errors $errs"
  log "  $name: peak $(mib "$PEAK_KB") MiB (max sample $(mib "$max"), VmHWM $(mib "$hwm")), after $(mib "$AFTER_KB") MiB; $C1000_LINE"
}

alive "$QP_PID" || die "queue-proxy died during the throughput runs (log: $TMP/qp/qp.log)"
rss_load qp "$QP_PID" "${URL[qp]}"
QP_PEAK_KB=$PEAK_KB QP_AFTER_KB=$AFTER_KB QP_SMAX_KB=$SAMPLE_MAX_KB QP_HWM_KB=$HWM_KB QP_C1000=$C1000_LINE
rss_load nginx "$NGX_PID" "${URL[nginx]}"
NGX_PEAK_KB=$PEAK_KB NGX_AFTER_KB=$AFTER_KB NGX_C1000=$C1000_LINE

# ------------------------------------------------------------------ h2c ----
H2_CMD="h2load -n $H2_REQUESTS -c $H2_CLIENTS -m $H2_STREAMS"
# run_h2 NAME URL -> "succeeded failed errored 2xx rps p50_ms p99_ms"
run_h2() {
  local name=$1 url=$2 out=$TMP/raw/h2load-$1.txt lf=$TMP/raw/h2load-$1.log
  # warmup (discarded)
  run_bg /dev/null timeout -k 5 60 h2load -n $(( H2_REQUESTS / 10 + 1 )) -c "$H2_CLIENTS" -m "$H2_STREAMS" "$url" || true
  run_bg "$out" timeout -k 5 120 $H2_CMD --log-file="$lf" "$url" || warn "h2load against $url exited non-zero (see $out)"
  local pct
  pct=$(awk -F'\t' 'NF >= 3 { print $3 }' "$lf" 2>/dev/null | sort -n | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "nan nan"; exit }
      i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
      printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')
  awk -v pct="$pct" '
    /^finished in/ { rps = $4 }
    /^requests:/ { for (i = 2; i < NF; i++) { w = $(i + 1); sub(/,$/, "", w)
        if (w == "succeeded") s = $i; if (w == "failed") f = $i; if (w == "errored") e = $i } }
    /^status codes:/ { ok = $3 }
    END { printf "%s %s %s %s %s %s\n", (s == "" ? "n/a" : s), (f == "" ? "n/a" : f), (e == "" ? "n/a" : e),
                 (ok == "" ? "n/a" : ok), (rps == "" ? "nan" : rps), pct }' "$out"
}

H2_STATUS="ok"
H2_DIRECT="" H2_QP="" QP2_WORKERS="n/a"
nginx_conf "$TMP/h2app" "127.0.0.1:$H2APP_PORT http2" 'return 200 "ok\n";'
start_nginx h2app; H2APP_PID=$LAST_PID
if ! wait_ready "h2c app nginx" "$H2APP_PID" "$TMP/h2app/error.log" "http://127.0.0.1:$H2APP_PORT/" --http2-prior-knowledge; then
  H2_STATUS="h2c app (nginx \`listen ... http2\`) failed to start; h2c section skipped"
else
  log "h2load direct h2c app: $H2_CMD"
  H2_DIRECT=$(run_h2 direct "http://127.0.0.1:$H2APP_PORT/")
  start_qp qp2 "$H2APP_PORT" "$QP2_PORT" "$QP2_TLS" "$QP2_METRICS" "$QP2_ADMIN"; QP2_PID=$LAST_PID
  if ! wait_ready "queue-proxy #2 (h2c)" "$QP2_PID" "$TMP/qp2/qp.log" "http://127.0.0.1:$QP2_PORT/" --http2-prior-knowledge; then
    H2_STATUS="queue-proxy did not answer 200 to an h2c (prior knowledge) request with an h2c-only upstream (rerun with KEEP=1 for its log)"
  else
    QP2_WORKERS=$(qp_workers "$TMP/qp2/qp.log")
    log "h2load via queue-proxy: $H2_CMD"
    H2_QP=$(run_h2 qp "http://127.0.0.1:$QP2_PORT/")
  fi
fi

# --------------------------------------------------------------- report ----
REPORT=$TMP/report.md
if GIT_DESC=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null); then
  git -C "$REPO_ROOT" diff --quiet HEAD 2>/dev/null || GIT_DESC+="+dirty"
  GIT_DESC="git $GIT_DESC"
else
  GIT_DESC="no git commit"
fi
{
  echo "## queue-proxy vs nginx: reverse-proxy benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(nproc) CPUs, $(uname -sr); load average at start: $LOADAVG_START"
  echo "- tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -n 1 | awk '{ print "wrk " $2 }'), $(h2load --version 2>&1 | head -n 1)"
  echo "- queue-proxy: \`$QP_BIN\` ($GIT_DESC), worker threads: $QP_WORKERS (QUEUE_WORKER_THREADS=${QUEUE_WORKER_THREADS:-unset})"
  echo "- app: nginx, 1 worker, \`return 200 \"ok\\n\"\`; nginx proxy: 1 worker, upstream keepalive 64; everything on 127.0.0.1, load generator on the same host"
  echo
  echo "### HTTP/1.1 throughput: median of $ROUNDS interleaved round(s), wrk -t1 -c$CONNS -d${DURATION}s"
  echo
  echo "| target | req/s | p50 ms | p99 ms | ratio vs nginx | ratio vs direct |"
  echo "|---|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    echo "| ${LABEL[$t]} | $(fmt "${RPS[$t]}" '%.0f') | $(fmt "${P50[$t]}" '%.3f') | $(fmt "${P99[$t]}" '%.3f') | $(ratio "${RPS[$t]}" "${RPS[nginx]}") | $(ratio "${RPS[$t]}" "${RPS[direct]}") |"
  done
  echo
  echo "- qp ÷ nginx req/s: **$(ratio "${RPS[qp]}" "${RPS[nginx]}")**, qp ÷ direct: **$(ratio "${RPS[qp]}" "${RPS[direct]}")**, nginx ÷ direct: **$(ratio "${RPS[nginx]}" "${RPS[direct]}")**"
  echo "- per-round req/s: direct ${ROUNDS_RPS[direct]}; nginx ${ROUNDS_RPS[nginx]}; qp ${ROUNDS_RPS[qp]}"
  echo "- errors (non-2xx + socket errors, all rounds): direct ${ERRS[direct]}, nginx ${ERRS[nginx]}, qp ${ERRS[qp]}"
  echo
  echo "### Memory (RSS, MiB)"
  echo
  echo "| process | idle | peak under wrk -t1 -c$RSS_CONNS -d${RSS_DURATION}s | after that load | -c$RSS_CONNS run |"
  echo "|---|---:|---:|---:|---|"
  echo "| queue-proxy | $(mib "$QP_IDLE_KB") | $(mib "$QP_PEAK_KB") | $(mib "$QP_AFTER_KB") | $QP_C1000 |"
  echo "| nginx proxy (master + worker) | $(mib "$NGX_IDLE_KB") | $(mib "$NGX_PEAK_KB") | $(mib "$NGX_AFTER_KB") | $NGX_C1000 |"
  echo
  echo "- idle = VmRSS right after the readiness check, before any load; peak = max(VmRSS sampled every 100 ms, VmHWM after the run); queue-proxy: max sample $(mib "$QP_SMAX_KB"), VmHWM $(mib "$QP_HWM_KB")"
  if (( HWM_RESET_FAILED )); then
    echo "- note: could not reset VmHWM via /proc/PID/clear_refs, so VmHWM includes the throughput runs"
  else
    echo "- VmHWM was reset (/proc/PID/clear_refs) just before the -c$RSS_CONNS run"
  fi
  echo
  echo "### HTTP/2 cleartext (h2c, prior knowledge): $H2_CMD"
  echo
  if [[ -n $H2_DIRECT ]]; then
    echo "| target | succeeded | failed | errored | 2xx | req/s | p50 ms | p99 ms | ratio vs direct |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    read -r ds df de dok drps dp50 dp99 <<<"$H2_DIRECT"
    echo "| direct (nginx h2c app) | $ds | $df | $de | $dok | $(fmt "$drps" '%.0f') | $(fmt "$dp50" '%.3f') | $(fmt "$dp99" '%.3f') | 1.00 |"
    if [[ -n $H2_QP ]]; then
      read -r qs qf qe qok qrps qp50 qp99 <<<"$H2_QP"
      echo "| queue-proxy -> h2c app | $qs | $qf | $qe | $qok | $(fmt "$qrps" '%.0f') | $(fmt "$qp50" '%.3f') | $(fmt "$qp99" '%.3f') | $(ratio "$qrps" "$drps") |"
    fi
    echo
  fi
  [[ $H2_STATUS == ok ]] || echo "- **h2c: $H2_STATUS**"
  echo "- h2load percentiles are computed from \`--log-file\` (3rd column, response time in µs), nearest rank"
  echo
  echo "### Commands"
  echo
  echo "- throughput: \`wrk -t1 -c$CONNS -d${DURATION}s --latency http://127.0.0.1:<port>/\` × $ROUNDS round(s), order direct → nginx → qp$( (( WARMUP > 0 )) && echo ", after a ${WARMUP}s warmup per target")"
  echo "- memory: \`wrk -t1 -c$RSS_CONNS -d${RSS_DURATION}s --latency http://127.0.0.1:<port>/\` (ulimit -n $NOFILE)"
  echo "- h2c: \`$H2_CMD --log-file=<file> http://127.0.0.1:<port>/\` (after a discarded warmup of $(( H2_REQUESTS / 10 + 1 )) requests)"
  echo "- queue-proxy worker threads: $QP_WORKERS (from its \"workers\" startup log field); env: CONTAINER_CONCURRENCY=0 REVISION_TIMEOUT_SECONDS=300 QUEUE_DRAIN_QUIET_SECONDS=0"
} >"$REPORT"

cp "$REPORT" "$OUT"
cat "$REPORT"
log "report written to $OUT"
