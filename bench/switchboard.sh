#!/usr/bin/env bash
# Starts or stops a Switchboard cluster on loopback for benchmarks: a private redis-server
# (:6391), auth (:9101), registry (:9102), bus (:9103) and two gateways (ws :9010 and :9012,
# SessionControl :9104 and :9105), all from target/release/switchboard (or $SWITCHBOARD_BIN, for
# an A/B of two builds).
#
#   bench/switchboard.sh start      # prints nothing; PIDs in bench/run/*.pid, logs in bench/run/*.log
#   bench/switchboard.sh pids       # comma-separated PIDs: gateways, auth, registry, bus, redis
#   bench/switchboard.sh stop
#
# SWITCHBOARD_BENCH_REDIS=cluster runs a 3-master Redis Cluster instead (:6391-6393, cluster
# bus ports +10000, no replicas) and points every service at it (sharded pub/sub).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$ROOT/bench/run"
BIN="${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}"
PASSWORD="${SWITCHBOARD_BENCH_PASSWORD:-bench}"
REDIS_PORT=6391
mkdir -p "$RUN"

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  return 1
}

start_one() { # name command...
  local name=$1; shift
  "$@" > "$RUN/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
}

case "${1:-}" in
  start)
    [ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -p switchboard)
    ulimit -n "$(ulimit -Hn)"
    if [ "${SWITCHBOARD_BENCH_REDIS:-}" = cluster ]; then
      seeds=""
      for n in 1 2 3; do
        port=$((REDIS_PORT + n - 1))
        rm -f "$RUN/nodes-$port.conf"
        (cd "$RUN" && start_one "redis$n" redis-server --port "$port" --bind 127.0.0.1 --save '' \
          --appendonly no --cluster-enabled yes --cluster-config-file "nodes-$port.conf")
        wait_port "$port"
        seeds="$seeds${seeds:+,}127.0.0.1:$port"
      done
      redis-cli --cluster create ${seeds//,/ } --cluster-yes > "$RUN/cluster-create.log"
      for _ in $(seq 1 100); do
        redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
      done
      export SWITCHBOARD_REDIS_CLUSTER="$seeds" RUST_LOG=warn
    else
      start_one redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
      wait_port "$REDIS_PORT"
      export SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_LOG=warn
    fi
    # Every load-generator connection comes from 127.0.0.1, up to 200 at once before login:
    # lift the per-address cap on connections waiting to log in (the peers have none).
    export SWITCHBOARD_MAX_PRELOGIN_PER_ADDRESS="${SWITCHBOARD_MAX_PRELOGIN_PER_ADDRESS:-0}"
    export SWITCHBOARD_INTERNAL_SECRET="${SWITCHBOARD_INTERNAL_SECRET:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
    # Admin listeners (health, metrics) go by variable, which a binary without them ignores.
    SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:9111 start_one auth "$BIN" auth --grpc-listen 127.0.0.1:9101 --admin-password "$PASSWORD"
    # Every benchmark client logs in as the same user.
    SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:9112 start_one registry "$BIN" registry --grpc-listen 127.0.0.1:9102 --max-sessions-per-user 0
    SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:9113 start_one bus "$BIN" bus --grpc-listen 127.0.0.1:9103
    wait_port 9101; wait_port 9102; wait_port 9103
    SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:9110 start_one gateway1 "$BIN" gateway $GATEWAY_ARGS --listen 127.0.0.1:9010 --control-listen 127.0.0.1:9104
    SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:9120 start_one gateway2 "$BIN" gateway $GATEWAY_ARGS --listen 127.0.0.1:9012 --control-listen 127.0.0.1:9105
    wait_port 9010; wait_port 9012
    ;;
  pids)
    pids=""
    for name in gateway1 gateway2 auth registry bus redis redis1 redis2 redis3; do
      [ -f "$RUN/$name.pid" ] && pids="$pids${pids:+,}$(cat "$RUN/$name.pid")"
    done
    echo "$pids"
    ;;
  stop)
    # Gateways first, so they can unregister their sessions while the services still run.
    for name in gateway1 gateway2 auth registry bus redis redis1 redis2 redis3; do
      pidfile="$RUN/$name.pid"
      [ -f "$pidfile" ] || continue
      pid="$(cat "$pidfile")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$pidfile"
    done
    ;;
  *) echo "usage: $0 start|pids|stop" >&2; exit 64 ;;
esac
