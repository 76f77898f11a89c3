#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# formatting, lints, the API docs' links, the ring-only TLS guard, shellcheck on the shell
# scripts, then every unit and end-to-end test.
# Tests use loopback sockets only; besides the Rust toolchain they need a real Prometheus
# (prometheus and promtool, from Debian's package) and shellcheck, installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings

step "cargo doc (broken or private intra-doc links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet

step "TLS stays on ring (aws-lc-rs doubles the build)"
if cargo tree --locked -i aws-lc-rs >/dev/null 2>&1; then
    echo "aws-lc-rs is in the dependency tree: some rustls-family crate has default features on" >&2
    cargo tree --locked -i aws-lc-rs >&2
    exit 1
fi
echo "ok: aws-lc-rs absent"

step "prometheus and promtool (tests/prometheus.rs runs a real server), shellcheck"
missing=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    # The package's service does not start in a container (policy-rc.d); the tests start their own.
    missing+=(prometheus)
fi
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
prometheus --version 2>&1 | sed -n 1p

step "shellcheck (the test, bench and PGO scripts: nothing else runs them in CI)"
shellcheck -x .ci/run scripts/*.sh bench/*.sh
echo "ok"

step "cargo test"
cargo test --locked --no-fail-fast
