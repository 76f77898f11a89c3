#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: acsgate (one worker
# thread, every metric on) and hyper-floor under wrk's ACS mix, and acsgate over h2c under
# h2load, against the same nginx upstream as bench/run.sh; see bench/README.md.
#
#   bench/instructions.sh [--pgo] [--cache] [--install] [--no-build]
#
# Needs: valgrind nginx wrk h2load curl taskset. It installs nothing unless --install is given. Where
# run.sh's timings move 5-15% with the host, these counts repeat: two runs of one build agree
# within about 0.3%, so a change of a few hundred instructions per request shows. Under a
# minute.
#
# --pgo adds acsgate-pgo, scripts/pgo-build.sh's profile-guided build (built first unless
# --no-build), with its own h2c row. --cache also simulates the caches (callgrind's
# --cache-sim: the host's L1i and L1d, and its per-core L2 as the last level) and adds each
# row's misses per request.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

INSTALL=0 BUILD=1 PGO=0 CACHE=0
for arg in "$@"; do
  case "$arg" in
    --pgo) PGO=1 ;;
    --cache) CACHE=1 ;;
    --install) INSTALL=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

PGO_TARGET=""; [ "$PGO" = 1 ] && PGO_TARGET=" acsgate-pgo"
TARGETS=${TARGETS:-"acsgate$PGO_TARGET hyper-floor"}
DURATION=${DURATION:-8}             # seconds counted (after a 3 s warm-up, not counted)
H2C=${H2C:-1}                       # 0: no h2c row for acsgate
CONNS=${CONNS:-16}                  # wrk: 1 thread, 16 connections
BASE_PORT=${BASE_PORT:-28180}
PROXY_CPU=${PROXY_CPU:-1}           # valgrind runs the proxy on one core; wrk and the upstream get LOAD_CPU
LOAD_CPU=${LOAD_CPU:-0}
STREAM_MIB=1                        # the upstream's streaming file, unused here
ACSGATE_BIN=${ACSGATE_BIN:-}        # default: target/release/acsgate (built unless --no-build)
FLOOR_BIN=${FLOOR_BIN:-}            # default: target/release/examples/hyper_floor (likewise)

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
require bench/instructions.sh valgrind:valgrind nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl \
  taskset:util-linux
# shellcheck disable=SC2086  # the target list is words
binaries $TARGETS
bench_tmp
WAIT_SECONDS=60   # a proxy starts in seconds under valgrind
WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$TMP/callgrind.%p")
if [ "$CACHE" = 1 ]; then
  # valgrind finds the L1 sizes itself; its last level is the L2 that an L1 miss reaches first
  L2=/sys/devices/system/cpu/cpu0/cache/index2
  WRAP+=(--cache-sim=yes "--LL=$(($(tr -d K <"$L2/size") * 1024)),$(cat "$L2/ways_of_associativity"),$(cat "$L2/coherency_line_size")")
fi

mix() { # mix PORT SECONDS: wrk's ACS mix; prints wrk's @@RESULT line
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${2}s" -s "$HERE/mix.lua" "http://127.0.0.1:$1" |
    grep -m1 '^@@RESULT'
}

# count ROW LOAD...: runs LOAD (which prints an @@RESULT line) with the proxy's counters zeroed
# before and dumped after, so that what is counted is what LOAD asked for and nothing else.
# With --cache, MISSES holds the row's L1i, L1d and last-level misses per request.
declare -A REQUESTS=() COUNTED=() MISSES=()
ROWS=()
count() {
  local row=$1 label="counted-${#ROWS[@]}" result dump; shift
  callgrind_control --zero "$PROXY" >/dev/null 2>&1
  result=$("$@")
  callgrind_control --dump="$label" "$PROXY" >/dev/null 2>&1
  REQUESTS[$row]=$(grep -oP 'requests=\K\d+' <<<"$result")
  dump=$(grep -l "^desc: Trigger: .*$label\$" "$TMP/callgrind.$PROXY".* | head -1)
  COUNTED[$row]=$(grep -m1 -oP '^(summary|totals): \K\d+' "$dump")
  # The events line names the summary's columns: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
  [ "$CACHE" = 1 ] && MISSES[$row]=$(awk -v n="${REQUESTS[$row]}" '
    /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i - 1 }
    /^(summary|totals):/ && !done { done = 1
      printf "%.0f | %.0f | %.1f", $(col["I1mr"] + 1) / n, ($(col["D1mr"] + 1) + $(col["D1mw"] + 1)) / n,
        ($(col["ILmr"] + 1) + $(col["DLmr"] + 1) + $(col["DLmw"] + 1)) / n }' "$dump")
  ROWS+=("$row")
  echo "  $row: ${REQUESTS[$row]} requests, ${COUNTED[$row]} instructions ($dump)" >&2
}

start_upstream
for t in $TARGETS; do
  start_target "$t" "$PROXY_CPU"
  mix "${LISTEN[$t]}" 3 >/dev/null
  count "$t" mix "${LISTEN[$t]}" "$DURATION"
  if [[ "$t" == acsgate* ]] && [ "$H2C" = 1 ]; then
    h2_load "${H2[$t]}" 3 0 >/dev/null
    count "$t, h2c" h2_load "${H2[$t]}" "$DURATION" 0
  fi
  stop "$PROXY"
done
stop_all

per_request() { echo $(( COUNTED[$1] / REQUESTS[$1] )); }
{
  echo "## user-space instructions per proxied request (callgrind, ${DURATION} s; HTTP/1.1: wrk 1 thread × $CONNS connections, ACS mix; h2c: h2load 8 connections × 8 streams, GET mix)"
  echo
  header="| target | requests | instructions | per request | × hyper-floor |" rule="|---|---|---|---|---|"
  [ "$CACHE" = 1 ] && header+=" L1i misses | L1d misses | L2 misses |" rule+="---|---|---|"
  echo "$header"
  echo "$rule"
  for row in "${ROWS[@]}"; do
    ratio="–"
    [ -n "${COUNTED[hyper-floor]:-}" ] && [[ "$row" != *h2c ]] &&
      ratio=$(awk -v a="$(per_request "$row")" -v b="$(per_request hyper-floor)" 'BEGIN {printf "%.2f×", a / b}')
    line="| $row | ${REQUESTS[$row]} | ${COUNTED[$row]} | $(per_request "$row") | $ratio |"
    [ "$CACHE" = 1 ] && line+=" ${MISSES[$row]} |"
    echo "$line"
  done
  [ "$CACHE" = 1 ] && echo && echo "misses per request, simulated: $(grep -h -m3 -oP '^desc: \K(I1|D1|LL) cache: .*' "$TMP"/callgrind.* | head -3 | paste -sd ';' | sed 's/;/; /g')"
  echo
  echo "bench: $(valgrind --version), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}'), h2load $(h2load --version | awk '{print $2}'), $("$ACSGATE_BIN" --version)"
} | tee "$TMP/summary.txt"
