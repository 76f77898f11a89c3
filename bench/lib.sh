# shellcheck shell=bash
# shellcheck disable=SC2034  # PROXY, UPSTREAM, STREAM_PREFIX...: read by the scripts sourcing this
# What bench/run.sh, bench/instructions.sh and scripts/pgo-build.sh share: prerequisites, the
# binaries, the ports, the upstream, the proxies under test and process control. Sourced by them
# once they have set HERE (this directory), ROOT, BASE_PORT, LOAD_CPU, STREAM_MIB, INSTALL,
# BUILD, ACSGATE_BIN and FLOOR_BIN (and PGO_BIN, optionally). Every process started here is
# stopped by its PID (process group) on exit, Ctrl-C included.

# require SCRIPT TOOL:PACKAGE...: exits saying what to apt-get install when a tool is missing,
# or installs it with --install (INSTALL=1). Nothing is installed silently.
require() {
  local script=$1 tool need=(); shift
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$INSTALL" = 1 ]; then
    apt-get update && apt-get install -y --no-install-recommends "${need[@]}"
  else
    echo "$script needs: apt-get install ${need[*]}   (or run with --install)" >&2
    exit 1
  fi
}

# binaries TARGET...: ACSGATE_BIN, and FLOOR_BIN / PGO_BIN when hyper-floor / acsgate-pgo are among
# the TARGETs, default to the release builds (PGO_BIN: scripts/pgo-build.sh's), built first
# unless --no-build (BUILD=0).
binaries() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}" targets=" $* "
  local release="$target/release"
  if [ -z "$ACSGATE_BIN" ]; then
    ACSGATE_BIN="$release/acsgate"
    if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --quiet --bin acsgate); fi
  fi
  [ -x "$ACSGATE_BIN" ] || { echo "no acsgate binary at $ACSGATE_BIN" >&2; exit 1; }
  if [[ "$targets" == *" hyper-floor "* ]] && [ -z "$FLOOR_BIN" ]; then
    FLOOR_BIN="$release/examples/hyper_floor"
    if [ "$BUILD" = 1 ]; then (cd "$ROOT" && cargo build --release --quiet --example hyper_floor); fi
  fi
  if [[ "$targets" == *" acsgate-pgo "* ]] && [ -z "${PGO_BIN:-}" ]; then
    PGO_BIN="$target/pgo/acsgate"
    if [ "$BUILD" = 1 ]; then "$ROOT/scripts/pgo-build.sh"; fi
    [ -x "$PGO_BIN" ] || { echo "no PGO build at $PGO_BIN: run scripts/pgo-build.sh" >&2; exit 1; }
  fi
}

# bench_tmp: a fresh directory for configs, logs and results, in $TMP.
bench_tmp() {
  TMP="$(mktemp -d -t acsgate-bench.XXXXXX)"
  chmod 755 "$TMP"   # nginx workers (www-data) read the streaming file from here
  echo "bench: results in $TMP" >&2
}

# Ports.
UP=$BASE_PORT
declare -A LISTEN=([direct]=$UP [nginx]=$((UP + 1)) [haproxy]=$((UP + 3)) [caddy]=$((UP + 5))
                   [acsgate]=$((UP + 7)) [acsgate-2t]=$((UP + 7)) [nginx-stream]=$((UP + 1))
                   [socat]=$((UP + 11)) [hyper-floor]=$((UP + 12)) [acsgate-pgo]=$((UP + 13)))
# Streaming paths by target (nginx-stream is nginx's unbuffered /stream/ location).
declare -A STREAM_PREFIX=([nginx-stream]=/stream)
declare -A H2=([nginx]=$((UP + 2)) [haproxy]=$((UP + 4)) [caddy]=$((UP + 5)) [acsgate]=$((UP + 7))
               [acsgate-pgo]=$((UP + 13)))
declare -A ADMIN=([haproxy]=$((UP + 9)) [caddy]=$((UP + 10)) [acsgate]=$((UP + 8)) [acsgate-2t]=$((UP + 8))
                  [acsgate-pgo]=$((UP + 14)))

render() { # template -> $TMP/name with placeholders filled in
  sed -e "s#@TMP@#$TMP#g" -e "s#@UP_PORT@#$UP#g" -e "s#@LISTEN_PORT@#$2#g" \
      -e "s#@H2_PORT@#${3:-0}#g" -e "s#@METRICS_PORT@#${4:-0}#g" "$HERE/conf/$1" > "$TMP/$1"
}

# ------------------------------------------------------------------- process control ----
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start CPUS NAME CMD...: runs CMD in its own process group (pinned to CPUS unless "all");
# the process group id is left in $STARTED.
start() {
  local cpus=$1 name=$2; shift 2
  if [ "$cpus" = all ]; then setsid "$@" >"$TMP/$name.out" 2>&1 &
  else setsid taskset -c "$cpus" "$@" >"$TMP/$name.out" 2>&1 & fi
  STARTED=$!
  PIDS+=("$STARTED")
}
stop() { # stop PGID
  kill -TERM -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done; PIDS=("${kept[@]}")
}
wait_port() { # up to WAIT_SECONDS (10 by default)
  for _ in $(seq $(( ${WAIT_SECONDS:-10} * 20 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1; logs in $TMP" >&2; exit 1
}
tree() { # the pids of a process group
  ps -o pid= -g "$1" 2>/dev/null | tr -s ' \n' ' '
}
# --------------------------------------------------------------------------- targets ----
start_upstream() {
  render upstream.nginx.conf "$UP"
  truncate -s "${STREAM_MIB}M" "$TMP/big.bin"   # sparse: no disk space used
  start "$LOAD_CPU" upstream nginx -e "$TMP/upstream-error.log" -c "$TMP/upstream.nginx.conf"
  UPSTREAM=$STARTED
  wait_port "$UP"
}

# A command the acsgate and hyper-floor processes run under (bench/instructions.sh: valgrind).
WRAP=()
# start_target NAME CPUS: starts the proxy NAME; its process group id in $PROXY ("" = direct)
start_target() {
  local name=$1 cpus=$2
  PROXY=""
  case "$name" in
    direct) return 0 ;;
    nginx|nginx-stream)
      render proxy.nginx.conf "${LISTEN[nginx]}" "${H2[nginx]}"
      start "$cpus" nginx nginx -e "$TMP/nginx-proxy-error.log" -c "$TMP/proxy.nginx.conf" ;;
    haproxy)
      render haproxy.cfg "${LISTEN[haproxy]}" "${H2[haproxy]}" "${ADMIN[haproxy]}"
      start "$cpus" haproxy haproxy -db -f "$TMP/haproxy.cfg" ;;
    socat) # the plainest user-space relay: TCP bytes copied through 256 KiB buffers
      start "$cpus" socat socat -b 262144 "TCP-LISTEN:${LISTEN[socat]},bind=127.0.0.1,reuseaddr,fork" \
        "TCP:127.0.0.1:$UP" ;;
    caddy)
      render Caddyfile "${LISTEN[caddy]}" "" "${ADMIN[caddy]}"
      start "$cpus" caddy env GOMAXPROCS=1 HOME="$TMP" XDG_DATA_HOME="$TMP" XDG_CONFIG_HOME="$TMP" \
        caddy run --adapter caddyfile --config "$TMP/Caddyfile" ;;
    hyper-floor) # the floor of any proxy built on hyper (examples/hyper_floor.rs)
      start "$cpus" hyper-floor "${WRAP[@]}" "$FLOOR_BIN" "127.0.0.1:${LISTEN[$name]}" "127.0.0.1:$UP" ;;
    acsgate|acsgate-2t|acsgate-pgo) # acsgate-pgo: scripts/pgo-build.sh's build
      local threads=1 bin=$ACSGATE_BIN
      [ "$name" = acsgate-2t ] && threads=2
      [ "$name" = acsgate-pgo ] && bin=$PGO_BIN
      start "$cpus" "$name" env RUST_LOG=warn "${WRAP[@]}" "$bin" --worker-threads "$threads" \
        --listen "127.0.0.1:${LISTEN[$name]}" --admin "127.0.0.1:${ADMIN[$name]}" \
        --upstream "http://127.0.0.1:$UP" ;;
  esac
  PROXY=$STARTED
  wait_port "${LISTEN[$name]}"
  # sanity: an ACS call passes through with the upstream's answer
  local body
  body=$(curl -sS --max-time 30 -X POST -H 'content-type: application/json' -d '{"content":"hi"}' \
    "http://127.0.0.1:${LISTEN[$name]}/chat/threads/19:abc@thread.v2/messages?api-version=2021-09-07")
  [ "$body" = '{"id":"1"}' ] || { echo "$name answered '$body'; logs in $TMP" >&2; exit 1; }
}

# ---------------------------------------------------------------------------- loads ----
# h2load over h2c (prior knowledge; h2 by ALPN with SCHEME https), 8 connections x 8 streams,
# GET requests of the mix (h2load cannot mix methods); prints an @@RESULT line like mix.lua's.
h2_load() { # h2_load PORT SECONDS WARMUP_SECONDS [SCHEME]
  local base="${4:-http}://127.0.0.1:$1" t="19:abc@thread.v2"
  taskset -c "$LOAD_CPU" h2load -c8 -m8 -t1 -D "$2" --warm-up-time="$3" \
    -H 'authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJza3lwZWlkIjoiYWNzOmJlbmNoIn0.c2ln' \
    -H 'x-ms-client-request-id: 8f6c2b1e-3d4a-4c5b-9e7f-0a1b2c3d4e5f' \
    "$base/chat/threads/$t/messages?api-version=2021-09-07" "$base/rooms/99413?api-version=2023-06-14" \
    "$base/routing/jobs/job-1?api-version=2023-11-01" "$base/chat/threads/$t/messages?api-version=2021-09-07&maxPageSize=20" \
    "$base/unknown/things/1?api-version=2020-01-01" |
  awk '/^finished in/ {gsub(",", ""); rps = $4}
       /^requests:/ {done = $8; failed = $10 + $12}
       /^status codes:/ {non2xx = $5 + $7 + $9}
       /^time for request:/ {mean = $6}
       END {
         # mean is printed with a unit (us/ms/s)
         m = mean + 0; if (mean ~ /ms$/) m *= 1000; else if (mean ~ /[^mu]s$/) m *= 1e6
         printf "@@RESULT requests=%d rps=%s mean_us=%d non2xx=%d sockerr=%d\n", done, rps, m, non2xx, failed }'
}
