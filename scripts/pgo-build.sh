#!/usr/bin/env bash
# A profile-guided (PGO) release build of acsgate, in target/pgo/acsgate.
#
#   scripts/pgo-build.sh [--training bench|demo] [--install]
#
# 1. Builds an instrumented acsgate (rustc -Cprofile-generate).
# 2. Trains it on loopback. `--training bench` (the default) uses the bench's traffic
#    (bench/lib.sh): the ACS request mix over HTTP/1.1 and h2c, a 64 MiB download and upload,
#    HMAC-signed calls (verified and signed again), then the mix over HTTP/1.1 and h2 through a
#    TLS listener to TLS upstreams speaking HTTP/1.1 and h2, as a gateway in front of ACS does.
#    `--training demo` runs the built-in `acsgate demo` instead (every catalogue route over
#    HTTP/1.1, to its simulated ACS): it needs no other program, so the Dockerfile uses it.
#    Its build runs as few instructions per request as the bench training's over HTTP/1.1,
#    and 3% more over h2c (README "Performance").
# 3. Merges the counts with llvm-profdata and builds again with them (-Cprofile-use).
# The PGO build runs about 25% fewer instructions per proxied request than target/release/acsgate
# (README "Performance"). It takes about 8.5 minutes cold, 4 when the instrumented build is
# up to date (the demo training: 3.5 to 6): the optimised build always starts from scratch.
#
# Needs: llvm-profdata of rustc's LLVM version (rustup's llvm-tools component, or Debian's
# llvm-N); with the bench training also nginx wrk h2load curl openssl taskset. It installs
# nothing unless --install is given.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/bench"

INSTALL=0 TRAINING=bench
while [ $# -gt 0 ]; do
  case "$1" in
    --install) INSTALL=1 ;;
    --training) TRAINING=${2:-}; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case "$TRAINING" in
  bench|demo) ;;
  *) echo "--training takes bench or demo, not '$TRAINING'" >&2; exit 2 ;;
esac

BASE_PORT=${BASE_PORT:-28480} LOAD_CPU=${LOAD_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
STREAM_MIB=64 BUILD=0 ACSGATE_BIN='' FLOOR_BIN=''
TRAIN_SECONDS=${TRAIN_SECONDS:-5}   # per load; three trainings gave builds within 1% in instructions
DEMO_REQUESTS=${DEMO_REQUESTS:-100000}  # per demo run
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/pgo"

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
# The profile's format follows LLVM's version: the merging tool must be rustc's LLVM's. rustup's
# llvm-tools component is that by construction; else Debian's package of the same major version.
RUSTC_VERSION=$(rustc -vV)
LLVM=$(sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' <<<"$RUSTC_VERSION")
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$(sed -n 's/^host: //p' <<<"$RUSTC_VERSION")/bin/llvm-profdata"
NEEDS=()
[ -x "$PROFDATA" ] || { PROFDATA="llvm-profdata-$LLVM"; NEEDS+=("$PROFDATA:llvm-$LLVM"); }
[ "$TRAINING" = bench ] && NEEDS+=(nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl \
  openssl:openssl taskset:util-linux)
require scripts/pgo-build.sh "${NEEDS[@]}"
bench_tmp

build() { # build DIR RUSTFLAGS...: a release build of the acsgate binary into $TARGET/DIR
  local dir=$1; shift
  echo "pgo: cargo build --release ($*)" >&2
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} $*" cargo build --release --locked --quiet \
    --bin acsgate --target-dir "$TARGET/$dir")
}

gateway() { # gateway NAME PORT ARGS...: starts the instrumented gateway, waits for PORT
  local name=$1 port=$2; shift 2
  start "$PROXY_CPU" "$name" env RUST_LOG=warn "$TARGET/generate/release/acsgate" \
    --worker-threads 1 --listen "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))" "$@"
  PROXY=$STARTED
  wait_port "$port"
}

mix() { # mix URL [SCRIPT [ARGS...]]: wrk for TRAIN_SECONDS with SCRIPT (the bench's ACS mix);
  # a run with answers other than 2xx would train the error paths instead: it stops the build
  local url=$1 script=${2:-mix.lua} result
  shift $(($# > 1 ? 2 : 1))
  result=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${TRAIN_SECONDS}s" -s "$HERE/$script" "$url" -- "$@" |
    grep -m1 '^@@RESULT')
  echo "pgo: $url $script: $result" >&2
  [[ "$result" == *" non2xx=0 "* ]] || { echo "pgo: answers other than 2xx; logs in $TMP" >&2; exit 1; }
}

SIGNED=() # sign HOST METHOD PATH BODY: appends the request, signed with $TMP/caller.key as an
          # ACS SDK signs it, to SIGNED in bench/signed.lua's four arguments
sign() {
  local date hash key signature
  date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
  hash=$(printf '%s' "$4" | openssl dgst -sha256 -binary | base64 -w0)
  key=$(base64 -d "$TMP/caller.key" | od -An -tx1 | tr -d ' \n')
  signature=$(printf '%s\n%s\n%s;%s;%s' "$2" "$3" "$date" "$1" "$hash" |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | base64 -w0)
  SIGNED+=("$2" "$3" "$4" "x-ms-date: $date|x-ms-content-sha256: $hash|Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=$signature")
}

check() { # check URL: one ACS call answered by the upstream, through the gateway
  local body
  body=$(curl -sSk --max-time 10 -X POST -H 'content-type: application/json' -d '{"content":"hi"}' \
    "$1/chat/threads/19:abc@thread.v2/messages?api-version=2021-09-07")
  [ "$body" = '{"id":"1"}' ] || { echo "pgo: $1 answered '$body'; logs in $TMP" >&2; exit 1; }
}

# ------------------------------------------------------------------ 1. instrumented ----
rm -rf "$TARGET/profiles"
build generate "-Cprofile-generate=$TARGET/profiles"

# ------------------------------------------------------------------------ 2. train ----
# The built-in demo: the gateway in front of its simulated ACS, every catalogue route (and unknown
# ones) over HTTP/1.1, with the simulator's 4xx and 5xx answers among them. One run on the
# sidecar's single thread, one on the multi-threaded scheduler.
train_demo() {
  local threads
  for threads in 1 2; do
    RUST_LOG=warn "$TARGET/generate/release/acsgate" demo --requests "$DEMO_REQUESTS" \
      --concurrency 64 --once --worker-threads "$threads" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
      >"$TMP/demo-$threads.out" 2>&1 || { echo "pgo: the demo failed: $TMP/demo-$threads.out" >&2; exit 1; }
    grep -m1 ' answered in ' "$TMP/demo-$threads.out" | sed "s/^/pgo: demo --worker-threads $threads: /" >&2
    grep -q ', 0 failed without an answer' "$TMP/demo-$threads.out" ||
      { echo "pgo: requests failed in the demo: $TMP/demo-$threads.out" >&2; exit 1; }
  done
}

train_bench() {
  # A CA and a certificate for 127.0.0.1, for the TLS upstreams and the gateway's TLS listener.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=acsgate-pgo-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$TMP/tls.key" -out "$TMP/tls.csr" 2>/dev/null
  openssl x509 -req -in "$TMP/tls.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -out "$TMP/tls.pem" 2>/dev/null -extfile <(printf '%s\n' \
    'subjectAltName=IP:127.0.0.1' 'basicConstraints=CA:FALSE' 'extendedKeyUsage=serverAuth')

  TLS_H1=$((UP + 20)) TLS_H2=$((UP + 21))
  start_upstream
  render upstream-tls.nginx.conf "$TLS_H1" "$TLS_H2"
  start "$LOAD_CPU" upstream-tls nginx -e "$TMP/upstream-tls-error.log" -c "$TMP/upstream-tls.nginx.conf"
  wait_port "$TLS_H1"

  PLAIN=$((UP + 30)) TLS=$((UP + 32))
  gateway plain "$PLAIN" --upstream "http://127.0.0.1:$UP"
  check "http://127.0.0.1:$PLAIN"
  mix "http://127.0.0.1:$PLAIN"
  h2_load "$PLAIN" "$TRAIN_SECONDS" 0 | sed 's/^/pgo: h2c /' >&2
  curl -sS --max-time 60 -o /dev/null "http://127.0.0.1:$PLAIN/big"
  curl -sS --max-time 60 -o /dev/null -T "$TMP/big.bin" -X POST "http://127.0.0.1:$PLAIN/sink"
  stop "$PROXY"   # SIGTERM: the gateway drains, exits and writes its counts

  # HMAC-signed calls, as an SDK with the resource's access key sends them: the gateway verifies
  # each with the callers' key and signs it again with the resource's key for the upstream.
  openssl rand -base64 32 > "$TMP/caller.key"
  openssl rand -base64 32 > "$TMP/upstream.key"
  gateway signed "$PLAIN" --upstream "http://127.0.0.1:$UP" \
    --caller-access-key-file "$TMP/caller.key" --upstream-access-key-file "$TMP/upstream.key"
  THREAD="/chat/threads/19:abc@thread.v2/messages?api-version=2021-09-07"
  sign "127.0.0.1:$PLAIN" POST "$THREAD" '{"content":"hi","senderDisplayName":"PGO","type":"text"}'
  sign "127.0.0.1:$PLAIN" GET "$THREAD&maxPageSize=20" ""
  sign "127.0.0.1:$PLAIN" POST "/identities?api-version=2023-10-01" '{"createTokenWithScopes":["chat"]}'
  mix "http://127.0.0.1:$PLAIN" signed.lua "${SIGNED[@]}"
  stop "$PROXY"

  for upstream in "$TLS_H1" "$TLS_H2"; do
    gateway "tls-$upstream" "$TLS" --upstream "https://127.0.0.1:$upstream" \
      --extra-ca-file "$TMP/ca.pem" --tls-cert-file "$TMP/tls.pem" --tls-key-file "$TMP/tls.key"
    check "https://127.0.0.1:$TLS"
    mix "https://127.0.0.1:$TLS"
    h2_load "$TLS" "$TRAIN_SECONDS" 0 https | sed "s/^/pgo: h2 over TLS, upstream $upstream: /" >&2
    stop "$PROXY"
  done
}

if [ "$TRAINING" = demo ]; then train_demo; else train_bench; fi
stop_all
ls "$TARGET/profiles"/*.profraw >/dev/null || { echo "pgo: the gateway wrote no profile" >&2; exit 1; }

# ---------------------------------------------------------------- 3. merge, rebuild ----
"$PROFDATA" merge -o "$TARGET/acsgate.profdata" "$TARGET/profiles"
# Cargo does not see that the profile's contents changed (the flag names the same file), and
# every crate, hyper's and tokio's included, is optimised with it: build them all again.
rm -rf "$TARGET/use"
build use "-Cprofile-use=$TARGET/acsgate.profdata"
cp "$TARGET/use/release/acsgate" "$TARGET/acsgate"
echo "pgo: built $TARGET/acsgate ($("$TARGET/acsgate" --version))" >&2
