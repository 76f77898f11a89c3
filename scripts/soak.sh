#!/usr/bin/env bash
# Soak tier of the reliability plan: long, loud runs that CI does not do.
#
#   scripts/soak.sh           full run: 100,000-request accounting, 1 GiB streams, 10,000 idle
#                             connections, h2load 100,000 requests, slowhttptest -H and -B
#   scripts/soak.sh --quick   the same scenarios at smaller sizes (a few minutes)
#
# Everything runs on 127.0.0.1. Each step is bounded by `timeout`; the gateway and upstreams
# are started by the test binaries, which kill them by PID when they end, and this script
# kills every PID it started itself on exit. Release build unless SOAK_PROFILE=debug.
# Prints a summary table; the raw log is in $SOAK_LOG (default target/soak.log).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
profile_flag=--release
[[ "${SOAK_PROFILE:-release}" == "debug" ]] && profile_flag=
log=${SOAK_LOG:-target/soak.log}
mkdir -p "$(dirname "$log")"
: >"$log"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

if ((quick)); then
  accounting=20000 stream_mib=256 idle=2000 h2load_n=20000
else
  accounting=100000 stream_mib=1024 idle=10000 h2load_n=100000
fi

# Tools for the external-attack steps; the steps say "skipped" when they are missing.
if ! command -v slowhttptest >/dev/null || ! command -v h2load >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    echo "soak: installing slowhttptest and nghttp2-client (h2load) with apt-get"
    { apt-get update && apt-get install -y --no-install-recommends slowhttptest nghttp2-client; } >>"$log" 2>&1 || true
  fi
fi

# Idle connections need one descriptor each, in the gateway and in the test process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < idle * 2 + 100)); then
  idle=$((($(ulimit -n) - 100) / 2))
  echo "soak: ulimit -n is $(ulimit -n); idle connections reduced to $idle"
fi

step() { # step NAME TIMEOUT ENV... -- CARGO TEST ARGS...
  local name=$1 limit=$2
  shift 2
  local env=()
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  echo "soak: $name"
  env "${env[@]}" timeout "$limit" cargo test $profile_flag --quiet "$@" -- --include-ignored --nocapture --test-threads=1 >>"$log" 2>&1 &
  pids+=($!)
  if ! wait $!; then
    echo "soak: $name FAILED (see $log)"
    echo "soak| $name | result | FAILED" >>"$log"
  fi
}

step "accounting" 1200 ACSGATE_ACCOUNTING_REQUESTS=$accounting -- --test accounting
step "streams" 1200 ACSGATE_STREAM_MIB=$stream_mib -- --test streaming
step "idle connections" 600 ACSGATE_SOAK_IDLE=$idle -- --test soak soak_idle_connections
step "h2load" 900 ACSGATE_SOAK_H2LOAD_REQUESTS=$h2load_n -- --test soak soak_h2load
step "slowloris" 300 -- --test soak soak_slowloris
step "slow body" 300 -- --test soak soak_slow_body

echo
printf '%-42s | %-44s | %s\n' scenario figure value
printf '%s\n' "-------------------------------------------+----------------------------------------------+------------------"
grep -o 'soak| .*' "$log" | sed 's/^soak| //' | awk -F' [|] ' '{ printf "%-42s | %-44s | %s\n", $1, $2, $3 }'
