#!/usr/bin/env bash
# Instructions, not seconds: runs one workload on two builds with the gateways and the bus
# under callgrind (valgrind), at a rate callgrind keeps up with, and prints each process's
# instruction count and the totals. Repeatable to ~0.1 % where CPU time spreads by ±20 %.
#
#   bench/callgrind-ab.sh OLD_BINARY NEW_BINARY w2     # 200 subscribers, 300 events/s, 20 s
#   bench/callgrind-ab.sh OLD_BINARY NEW_BINARY w1     # 1000 subscribers of one topic, 20 events/s
#
# Needs valgrind and the load generator bench/compare.sh builds (target/peers).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OLD=$1 NEW=$2 WORKLOAD=${3:-w2}
case "$WORKLOAD" in
  w1) LOAD=(--subs 1000 --topics 1 --rate 20) ;;
  w2) LOAD=(--subs 200 --topics 200 --pub-topics random --rate 300) ;;
  *) echo "workload: w1 or w2" >&2; exit 64 ;;
esac
LG="$ROOT/target/peers/loadgen-target/release/loadgen"
[ -x "$LG" ] || { echo "no load generator at $LG: run bench/compare.sh once" >&2; exit 1; }
OUT="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-callgrind.XXXXXX")"
for side in old new; do
  binary=$OLD; [ "$side" = new ] && binary=$NEW
  wrapper="$OUT/$side.sh"
  cat >"$wrapper" <<W
#!/usr/bin/env bash
case "\$1" in
  gateway|bus) exec valgrind --tool=callgrind --callgrind-out-file=$OUT/$side-\$1-%p.out $binary "\$@" ;;
  *) exec $binary "\$@" ;;
esac
W
  chmod +x "$wrapper"
  SWITCHBOARD_BIN=$wrapper GATEWAY_ARGS="--write-coalesce 30ms" SWITCHBOARD_WORKER_THREADS=1 \
    "$ROOT/bench/switchboard.sh" start
  sleep 5
  timeout 120 "$LG" --proto nk --url ws://127.0.0.1:9010/api/ws,ws://127.0.0.1:9012/api/ws \
    --label "callgrind-$side" --max-wall 100 --nk-user admin --nk-password bench --nk-class bench \
    --nk-subclass s "${LOAD[@]}" --warmup 2 --settle 2 --duration 20 --drain 5 | grep -E "deliveries"
  "$ROOT/bench/switchboard.sh" stop
  sleep 3
done
for side in old new; do
  total=0
  for file in "$OUT"/$side-*.out; do
    count=$(awk '/^summary:/ { print $2; exit }' "$file")
    total=$((total + count))
    echo "$side $(basename "$file" .out): $count instructions"
  done
  echo "$side total: $total"
done
rm -rf "$OUT"
