#!/usr/bin/env bash
# Runs Switchboard's whole test suite: formatting, lints, docs, every unit and integration test,
# the TypeScript SDK's and the web console's tests (the console's in headless Chromium), then the
# docker-compose deployment built, run and broken on purpose (deploy/compose-test.sh).
# Installs what the tests need when it is missing (on Debian/Ubuntu, through apt-get).
# SWITCHBOARD_SKIP_COMPOSE=1 leaves the compose test out (e.g. where no Docker engine can run).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
# jemalloc (the binary's allocator) is built from C sources with make.
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The TypeScript SDK (clients/typescript) builds and tests with Node.js and npm.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The console's browser tests drive Debian's Chromium (CHROMIUM overrides the path).
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
if ((${#need_apt[@]})); then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
# Tests start their own redis-server on free loopback ports and never use a system one.
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

jobs="${CARGO_BUILD_JOBS:-$(nproc)}"
echo "== module cycles"
scripts/module-cycles.py
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy -j "$jobs" --workspace --all-targets --locked -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc -j "$jobs" --workspace --no-deps --locked
echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test -j "$jobs" --workspace --locked 2>&1 | tee "$log"
echo "== cargo test: the process-cluster tests again, on a 3-master Redis Cluster"
# Every test that starts the services on Redis (tests/it/common/cluster.rs) lives in these
# modules; the broker, registry and gateway crates test their cluster paths in the run above.
SWITCHBOARD_TEST_REDIS=cluster cargo test -j "$jobs" --locked -p switchboard --test it -- \
    cluster:: ctl:: operations:: presence:: recovery:: takeover:: traces:: 2>&1 | tee -a "$log"
# One closing line for the cargo tests (cargo prints one per test binary).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"

echo "== TypeScript SDK (clients/typescript: npm ci from the lock file, build, tests)"
(
    cd clients/typescript
    npm ci --no-audit --no-fund
    SWITCHBOARD_BIN="$(pwd)/../../target/debug/switchboard" npm test
)
echo "== web console (clients/console: npm ci, dist/ matches its sources, tests in headless Chromium)"
# playwright-core needs Node.js 20 or later; Debian 12's own package is 18.
if node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    (
        cd clients/console
        npm ci --no-audit --no-fund
        SWITCHBOARD_BIN="$(pwd)/../../target/debug/switchboard" npm test
    )
else
    echo "SKIPPED: the console's browser tests need Node.js >= 20 (this is $(node --version))"
fi

if [ "${SWITCHBOARD_SKIP_COMPOSE:-0}" != 1 ]; then
    echo "== docker-compose cluster"
    cargo build -j "$jobs" --release --locked -p switchboard
    deploy/compose-test.sh
fi
