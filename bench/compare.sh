#!/usr/bin/env bash
# Puts Switchboard beside its peers in one run: Switchboard (2 gateways + services + Redis),
# Socket.IO 4 with its Redis adapter (2 replicas) and NATS over WebSocket (2-node cluster),
# each driven by the same load generator (../shared/bench/loadgen), one after another, each
# restarted between runs. Then `switchboard bench` measures churn (W4) on Switchboard.
#
#   bench/compare.sh                     # w1 w2 w3 w4 for every system (~10 min)
#   bench/compare.sh w1 sweep            # selected workloads (w1 w2 w3 w4 w5 sweep)
#   SYSTEMS="switchboard nats" bench/compare.sh w2
#   SWITCHBOARD_BIN=/path/to/other/switchboard SYSTEMS=switchboard bench/compare.sh w1 w2
#
# Results: target/bench/<stamp>/results.jsonl (loadgen JSON lines), *.log, summary.md.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/bench}"
PEERS="$ROOT/target/peers"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$ROOT/target/bench/$STAMP"
SYSTEMS="${SYSTEMS:-switchboard nats sio}"
WORKLOADS=("$@"); [ ${#WORKLOADS[@]} -eq 0 ] && WORKLOADS=(w1 w2 w3 w4)
# Switchboard's settings for these runs (see BENCHMARKS.md).
export SWITCHBOARD_WORKER_THREADS="${SWITCHBOARD_WORKER_THREADS:-1}"
export GATEWAY_ARGS="${GATEWAY_ARGS:---write-coalesce 30ms}"
mkdir -p "$OUT"

# --- setup: peers, load generator, servers, our release binary
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
if [ ! -d "$PEERS/node_modules" ]; then
  rm -rf "$PEERS" && mkdir -p "$PEERS" && cp -r "$PEERS_SRC"/. "$PEERS"/ && chmod -R u+w "$PEERS"
  (cd "$PEERS" && npm ci --no-audit --no-fund >/dev/null)
fi
LG="$PEERS/loadgen-target/release/loadgen"
[ -x "$LG" ] || (cd "$PEERS_SRC/loadgen" && CARGO_TARGET_DIR="$PEERS/loadgen-target" cargo build --release --locked)
[ -n "${SWITCHBOARD_BIN:-}" ] || (cd "$ROOT" && cargo build --release -p switchboard)
SWITCHBOARD="${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}"
ulimit -n "$(ulimit -Hn)"

stop_all() { "$ROOT/bench/switchboard.sh" stop >/dev/null 2>&1 || true; "$PEERS/scripts/stop.sh" >/dev/null 2>&1 || true; }
trap stop_all EXIT

start_system() { # system -> sets PROTO URLS PIDS EXTRA
  case $1 in
    switchboard)
      "$ROOT/bench/switchboard.sh" start
      PROTO=nk; URLS=ws://127.0.0.1:9010/api/ws,ws://127.0.0.1:9012/api/ws
      PIDS=$("$ROOT/bench/switchboard.sh" pids)
      EXTRA=(--nk-user admin --nk-password "${SWITCHBOARD_BENCH_PASSWORD:-bench}" --nk-class bench --nk-subclass s) ;;
    sio)
      "$PEERS/scripts/start_sio.sh" >/dev/null; PROTO=socketio; URLS=ws://127.0.0.1:3001,ws://127.0.0.1:3002
      PIDS=$("$PEERS/scripts/pids.sh" sio); EXTRA=() ;;
    nats)
      "$PEERS/scripts/start_nats.sh" cluster >/dev/null; PROTO=nats; URLS=ws://127.0.0.1:9221,ws://127.0.0.1:9222
      PIDS=$("$PEERS/scripts/pids.sh" nats); EXTRA=() ;;
    *) echo "unknown system $1" >&2; exit 64 ;;
  esac
  sleep 1
}

run_case() { # system label loadgen-args...
  local system=$1 label=$2; shift 2
  stop_all
  start_system "$system"
  echo "== $label ($system, pids $PIDS)"
  timeout 240 "$LG" --proto "$PROTO" --url "$URLS" --server-pids "$PIDS" --label "$label" \
    --json-out "$OUT/results.jsonl" --max-wall 220 "${EXTRA[@]}" "$@" > "$OUT/$label.log" 2>&1 \
    || echo "   (loadgen exit $?)"
  grep -E "^(publish|deliveries|latency|server cpu|server rss|subscribers|ABORTED|errors)" "$OUT/$label.log" | sed 's/^/   /'
  stop_all
}

COMMON=(--warmup 2 --settle 2 --duration 10 --drain 5)
for w in "${WORKLOADS[@]}"; do
  for system in $SYSTEMS; do
    case $w in
      w1)
        run_case "$system" "w1-200-$system-r1" --subs 1000 --topics 1 --rate 200 "${COMMON[@]}"
        run_case "$system" "w1-1000-$system-r1" --subs 1000 --topics 1 --rate 1000 "${COMMON[@]}" ;;
      w2)
        run_case "$system" "w2-$system-r1" --subs 2000 --topics 2000 --pub-topics random --rate 5000 "${COMMON[@]}" ;;
      w3)
        run_case "$system" "w3-$system-r1" --subs 10000 --topics 10000 --idle --settle 5 --duration 10 \
          --connect-concurrency 200 --connect-timeout 150 ;;
      sweep)
        for rate in ${SWEEP_RATES:-400 800 1600 3200}; do
          run_case "$system" "sweep-$rate-$system-r1" --subs 1000 --topics 1 --rate "$rate" "${COMMON[@]}"
        done ;;
      w5)
        # W2 with every subscription positioned (PROTOCOL.md §10), beside W2 measured by the
        # same tool, on one fresh cluster each. The load generator has no positioned
        # subscriptions; `switchboard bench` agrees with it on W2 (BENCHMARKS.md).
        if [ "$system" = switchboard ]; then
          for mode in plain recover; do
            stop_all; start_system switchboard
            echo "== w5-$mode (switchboard, pids $PIDS)"
            flag=(); [ "$mode" = recover ] && flag=(--recover)
            "$SWITCHBOARD" bench --workload targeted --subs 2000 --rate 5000 --duration 10 "${flag[@]}" \
              --url "$URLS" --password "${SWITCHBOARD_BENCH_PASSWORD:-bench}" --server-pids "$PIDS" \
              --json-out "$OUT/w5.jsonl" | tee "$OUT/w5-$mode-switchboard.log" | sed 's/^/   /'
            stop_all
          done
        fi ;;
      w4)
        if [ "$system" = switchboard ]; then
          stop_all; start_system switchboard
          echo "== w4-churn (switchboard, pids $PIDS)"
          "$SWITCHBOARD" bench --workload churn --duration 10 --churn-workers 16 \
            --url "$URLS" --password "${SWITCHBOARD_BENCH_PASSWORD:-bench}" --server-pids "$PIDS" \
            --json-out "$OUT/churn.jsonl" | tee "$OUT/w4-churn-switchboard.log" | sed 's/^/   /'
          stop_all
        fi ;;
      *) echo "unknown workload $w" >&2; exit 64 ;;
    esac
  done
done
if [ -s "$OUT/results.jsonl" ]; then
  python3 "$PEERS/scripts/summarize.py" "$OUT/results.jsonl" > "$OUT/summary.md"
fi
echo "results in $OUT"
