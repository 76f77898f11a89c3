#!/usr/bin/env bash
# acsgate vs nginx, HAProxy and Caddy on this machine, in one interleaved run; see bench/README.md.
#
#   bench/run.sh [--quick] [--pgo] [--install] [--no-build]
#
# Needs: nginx haproxy caddy wrk h2load (nghttp2-client) socat curl python3 taskset. It
# installs nothing unless --install is given (then: apt-get install nginx haproxy caddy wrk
# nghttp2-client socat). Everything listens on 127.0.0.1, every run is bounded in time, and every
# process started here is stopped by its PID (process group) on exit, Ctrl-C included.
#
# --pgo adds acsgate-pgo, the profile-guided build of scripts/pgo-build.sh (built first unless
# --no-build; that script needs llvm-profdata too), to every phase but the threads one.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

QUICK=0 INSTALL=0 BUILD=1 PGO=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --pgo) PGO=1 ;;
    --install) INSTALL=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# ------------------------------------------------------------------------------ knobs ----
if [ "$QUICK" = 1 ]; then   # under 2 minutes; no 1-vs-2-thread phase (it needs the full run's rounds to say anything)
  : "${DURATION:=2}" "${WARMUP:=1}" "${REPEATS:=3}" "${H2_REPEATS:=1}" "${SCALE_REPEATS:=0}" "${STREAM_REPEATS:=1}"
  : "${STREAM_MIB:=256}"
else                        # 7.6 minutes here (2026-12-07); 8 s rounds took 9 min 13 s on 2026-12-06, about 9.5 on 2026-12-07
  : "${DURATION:=6}" "${WARMUP:=2}" "${REPEATS:=3}" "${H2_REPEATS:=3}" "${SCALE_REPEATS:=3}" "${STREAM_REPEATS:=3}"
fi
PGO_TARGET=""; [ "$PGO" = 1 ] && PGO_TARGET=" acsgate-pgo"
TARGETS=${TARGETS:-"direct nginx haproxy caddy acsgate$PGO_TARGET hyper-floor"}
CONNS=${CONNS:-64}                  # wrk: 1 thread, 64 connections
PACED_RATE=${PACED_RATE:-2000}      # req/s of the paced latency run
STREAM_MIB=${STREAM_MIB:-1024}      # streaming check body size
STREAM_TARGETS=${STREAM_TARGETS:-"direct nginx nginx-stream socat acsgate$PGO_TARGET"}
BASE_PORT=${BASE_PORT:-28180}       # below the ephemeral range (32768+)
PROXY_CPU=${PROXY_CPU:-1}           # the proxy's core; wrk and the upstream get LOAD_CPU
LOAD_CPU=${LOAD_CPU:-0}
ACSGATE_BIN=${ACSGATE_BIN:-}        # default: target/release/acsgate (built unless --no-build)
FLOOR_BIN=${FLOOR_BIN:-}            # default: target/release/examples/hyper_floor (likewise)

# ---------------------------------------------------------------- shared with others ----
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
require bench/run.sh nginx:nginx haproxy:haproxy caddy:caddy wrk:wrk h2load:nghttp2-client \
  socat:socat curl:curl python3:python3 taskset:util-linux
# shellcheck disable=SC2086  # the target lists are words
binaries $TARGETS $STREAM_TARGETS
bench_tmp
RESULTS="$TMP/results.tsv"
EXTRA=""   # more fields for measure's line (the streaming phase's RSS before)

# ------------------------------------------------------------------------- measuring ----
cpu_ticks() { # utime+stime of every process in the group, and of its reaped children, in clock ticks
  local sum=0 pid; for pid in $(tree "$1"); do
    [ -r "/proc/$pid/stat" ] || continue
    # fields after the ")" of the command name: utime, stime, cutime, cstime are the 12th to
    # 15th (the children's count for socat, which forks one per connection)
    sum=$((sum + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13 + $14 + $15}')))
  done; echo "$sum"
}
hwm_kb() { # sum of VmHWM over the group
  local sum=0 pid kb; for pid in $(tree "$1"); do
    kb=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    sum=$((sum + ${kb:-0}))
  done; echo "$sum"
}
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
HZ=$(getconf CLK_TCK)

# measure KIND ROUND NAME CMD...: runs the load command (pinned to LOAD_CPU by the caller),
# and appends one line to results.tsv: the load's @@RESULT fields plus the proxy's CPU per
# request, its peak RSS and how busy the rest of the machine was.
measure() {
  local kind=$1 round=$2 name=$3; shift 3
  local p0=0 u0 b0 t0 out TIMEFORMAT='@@LOADCPU %U %S'
  [ -n "$PROXY" ] && p0=$(cpu_ticks "$PROXY")
  u0=$(cpu_ticks "$UPSTREAM"); b0=$(busy_ticks); t0=$(date +%s%N)
  out=$( { time "$@" 2>&1; } 2>&1 ) || { echo "$kind $name: load failed: $out" >&2; exit 1; }
  local t1 b1 u1 p1=0 rss=0
  t1=$(date +%s%N); b1=$(busy_ticks); u1=$(cpu_ticks "$UPSTREAM")
  [ -n "$PROXY" ] && { p1=$(cpu_ticks "$PROXY"); rss=$(hwm_kb "$PROXY"); }
  local result load_s
  result=$(grep -m1 '^@@RESULT' <<<"$out" | cut -d' ' -f2-) || {
    echo "$kind $name: no result in: $out" >&2; exit 1; }
  load_s=$(awk '/^@@LOADCPU/ {print $2 + $3}' <<<"$out")
  echo "  $kind $name #$round: $result" >&2
  printf 'kind=%s round=%s target=%s %s proxy_ticks=%s upstream_ticks=%s load_s=%s busy_ticks=%s wall_ns=%s rss_kb=%s hz=%s %s\n' \
    "$kind" "$round" "$name" "$result" $((p1 - p0)) $((u1 - u0)) "$load_s" $((b1 - b0)) $((t1 - t0)) "$rss" "$HZ" "$EXTRA" >> "$RESULTS"
}

wrk_load() { # wrk_load CPUS PORT SECONDS [THREADS] [-- mix.lua args]
  local cpus=$1 port=$2 secs=$3 threads=$4; shift 4
  local pin=(taskset -c "$cpus"); [ "$cpus" = all ] && pin=()
  "${pin[@]}" wrk -t"$threads" -c"$CONNS" -d"${secs}s" --latency -s "$HERE/mix.lua" "http://127.0.0.1:$port" "$@"
}

# ----------------------------------------------------------------------------- phases ----
start_upstream
echo "bench: [${SECONDS} s] saturation + paced ${PACED_RATE} req/s, proxy on CPU $PROXY_CPU, load + upstream on CPU $LOAD_CPU" >&2
for round in $(seq "$REPEATS"); do
  for t in $TARGETS; do
    start_target "$t" "$PROXY_CPU"
    wrk_load "$LOAD_CPU" "${LISTEN[$t]}" "$WARMUP" 1 >/dev/null
    measure sat "$round" "$t" wrk_load "$LOAD_CPU" "${LISTEN[$t]}" "$DURATION" 1
    measure paced "$round" "$t" wrk_load "$LOAD_CPU" "${LISTEN[$t]}" "$DURATION" 1 -- rate="$PACED_RATE" conns="$CONNS"
    [ -n "$PROXY" ] && stop "$PROXY"
  done
done

echo "bench: [${SECONDS} s] acsgate 1 vs 2 worker threads, nothing pinned, wrk -t2" >&2
for round in $(seq "$SCALE_REPEATS"); do
  for t in acsgate acsgate-2t; do
    start_target "$t" all
    wrk_load all "${LISTEN[$t]}" "$WARMUP" 2 >/dev/null
    measure scale "$round" "$t" wrk_load all "${LISTEN[$t]}" "$DURATION" 2
    stop "$PROXY"
  done
done

echo "bench: [${SECONDS} s] h2c, h2load 8 connections x 8 streams" >&2
for round in $(seq "$H2_REPEATS"); do
  for t in nginx haproxy caddy acsgate acsgate-pgo; do
    [[ " $TARGETS " == *" $t "* ]] || continue
    start_target "$t" "$PROXY_CPU"
    measure h2c "$round" "$t" h2_load "${H2[$t]}" "$DURATION" "$WARMUP"
    stop "$PROXY"
  done
done

echo "bench: [${SECONDS} s] streaming ${STREAM_MIB} MiB down and up: $STREAM_TARGETS, nothing pinned" >&2
# stream_load down|up URL: prints an @@RESULT line: bytes and rate (bytes/s) of a download of
# /big or an upload (PUT, no 100-continue round trip) to /sink.
stream_load() {
  local dir=$1 url=$2 size rate
  if [ "$dir" = down ]; then
    read -r size rate < <(curl -fsS --max-time 120 -o /dev/null -w '%{size_download} %{speed_download}' "$url/big")
  else
    read -r size rate < <(curl -fsS --max-time 120 -H 'Expect:' -T "$TMP/big.bin" -o /dev/null \
      -w '%{size_upload} %{speed_upload}' "$url/sink")
  fi
  [ "$size" = $((STREAM_MIB * 1048576)) ] || { echo "stream $dir: moved $size bytes" >&2; return 1; }
  echo "@@RESULT bytes=$size bps=$rate"
}
# The first read of the sparse file fills the page cache (about a third of the later rate):
# done here, unmeasured, or round 1's direct download would carry it.
curl -fsS --max-time 120 -o /dev/null "http://127.0.0.1:$UP/big"
for round in $(seq "$STREAM_REPEATS"); do
  for t in $STREAM_TARGETS; do
    start_target "$t" all
    # No upload through nginx: its defaults buffer a request body to a temp file (and refuse
    # one over 1 MiB); unbuffered, it stops forwarding once the sink has answered (the sink
    # answers at once) and discards the rest itself, so the upstream never reads the GiB.
    dirs="down up"; [[ "$t" == nginx* ]] && dirs=down
    for dir in $dirs; do
      EXTRA="rss_before_kb=0"; [ -n "$PROXY" ] && EXTRA="rss_before_kb=$(hwm_kb "$PROXY")"
      measure "stream-$dir" "$round" "$t" stream_load "$dir" "http://127.0.0.1:${LISTEN[$t]}${STREAM_PREFIX[$t]:-}"
    done
    EXTRA=""
    [ -n "$PROXY" ] && stop "$PROXY"
  done
done

stop_all
echo "bench: [${SECONDS} s] done" >&2
python3 "$HERE/summarize.py" "$RESULTS" | tee "$TMP/summary.txt"
echo "bench: machine: $(nproc) CPUs; versions: $(nginx -v 2>&1 | cut -d/ -f2), haproxy $(haproxy -v | awk 'NR==1 {print $3}'), caddy $(caddy version | cut -d' ' -f1), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}'), $(socat -V | awk '/socat version/ {print "socat", $3}'), $("$ACSGATE_BIN" --version)" | tee -a "$TMP/summary.txt"
