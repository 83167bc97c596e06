#!/usr/bin/env bash
# Two builds of ron-node side by side, in one run: both on the reference
# layout (tuning/reference-2c-ledger.toml: shard and committer on core 1),
# the generator on core 0, sweeps interleaved step by step so both see the
# same machine. For "no slower" checks of a change: the commit before it
# against the commit after it.
#
#   bench/scripts/compare-builds.sh BEFORE_BIN AFTER_BIN [ROUNDS=3] [WORKLOADS="wallet-read wallet-transfer"]
#
# Each round sweeps every workload (rates in READ_RATES / TRANSFER_RATES,
# "from to step"). With FIXED="RATE …", each round instead runs every
# workload at each fixed rate on both nodes, one after the other, and
# reports the node's CPU time per answered request (from /proc), which is
# far less noisy on a shared VM than where a sweep stops; at a rate past
# the node's capacity, `ok/s` (2xx answers per second, the rest shed with
# 429) is its throughput. The two nodes share one set of keys (the first node's),
# so one admin token works on both; each gets its own data dir and funded
# pool (wallet-setup). Output: every step's line, then a summary per round
# with after/before of the max sustained rate. Build ron-load first
# (cargo build --release -p ron-bench); LOAD overrides its path.
set -euo pipefail
before=${1:?the ron-node binary before the change}
after=${2:?the ron-node binary after the change}
rounds=${3:-3}
workloads=${4:-"wallet-read wallet-transfer"}
read_rates=${READ_RATES:-"20000 160000 20000"}
transfer_rates=${TRANSFER_RATES:-"4000 24000 2000"}
root=$(cd "$(dirname "$0")/../.." && pwd)
load=${LOAD:-$root/target/release/ron-load}
dir=$(mktemp -d /tmp/ron-compare.XXXXXX)
profile="$root/tuning/reference-2c-ledger.toml"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # name binary listen-port shard-port-base
  local name=$1 binary=$2 port=$3 base=$4
  mkdir -p "$dir/$name"
  "$binary" --config "$profile" --data-dir "$dir/$name/data" \
    --listen "127.0.0.1:$port" --shard-port-base "$base" > "$dir/$name/out" 2> "$dir/$name/log" &
  pids+=($!)
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "$name did not become ready: $(tail -5 "$dir/$name/log")" >&2
  exit 1
}

# The first node makes the keys; the second starts with a copy of them.
start before "$before" 8080 8100
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
mkdir -p "$dir/after/data"
cp -r "$dir/before/data/keys" "$dir/after/data/keys"
cp "$dir/before/data/admin.token" "$dir/after/data/admin.token"
start before "$before" 8080 8100
start after "$after" 8081 8200
token="$dir/before/data/admin.token"
for port in 8080 8081; do
  "$load" run --target "127.0.0.1:$port" --rate 8000 --workload wallet-setup \
    --token-file "$token" --cores 0 --duration 3s --warmup 0s > /dev/null
done
echo "nodes: before=$before after=$after (data in $dir)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

fixed() { # round workload rate
  local round=$1 workload=$2 rate=$3 order=(0 1)
  # Alternate which node goes first, round by round.
  [ $((round % 2)) -eq 0 ] && order=(1 0)
  for i in "${order[@]}"; do
    local names=(before after)
    local name=${names[$i]} port=$((8080 + i)) pid=${pids[$i]}
    local t0; t0=$(cpu_ticks "$pid")
    "$load" run --target "127.0.0.1:$port" --rate "$rate" --workload "$workload" \
      --token-file "$token" --cores 0 --duration 5s --warmup 1s --drain 1s \
      --json "$dir/fixed-$round-$workload-$rate-$name.json" > /dev/null
    local t1; t1=$(cpu_ticks "$pid")
    python3 - "$dir/fixed-$round-$workload-$rate-$name.json" "$name" "$((t1 - t0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
name, ticks, hz = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
answered = sum(run["statuses"].values())
lat = run["latency"]
# The node's CPU over warm-up, run and drain, per request answered in all.
total = answered * (run["warmup_s"] + run["duration_s"]) / run["duration_s"]
ok = sum(c for s, c in run["statuses"].items() if int(s) < 300) / run["duration_s"]
print(f"  {name:<7} rate {run['target_rate']:.0f}/s achieved {run['achieved_rate']:.0f}/s ok {ok:.0f}/s "
      f"p50 {lat['p50_us']:.0f} us p99 {lat['p99_us']:.0f} us late {run['late_sends']} "
      f"errors {sum(c for s, c in run['statuses'].items() if int(s) >= 400)} "
      f"cpu/request {ticks / hz / max(total, 1) * 1e6:.1f} us")
PY
  done
}

for round in $(seq 1 "$rounds"); do
  if [ -n "${FIXED:-}" ]; then
    for workload in $workloads; do
      for rate in $FIXED; do
        echo "== round $round $workload at $rate/s"
        fixed "$round" "$workload" "$rate"
      done
    done
    continue
  fi
  for workload in $workloads; do
    case $workload in
      wallet-read) read -r from to step <<< "$read_rates" ;;
      *) read -r from to step <<< "$transfer_rates" ;;
    esac
    echo "== round $round $workload"
    "$load" sweep --target "before=127.0.0.1:8080" --target "after=127.0.0.1:8081" \
      --workload "$workload" --token-file "$token" --from "$from" --to "$to" --step "$step" \
      --duration 3s --warmup 1s --drain 1s --cores 0 --half-load-rounds 1 \
      --json "$dir/round-$round-$workload.json" | sed -n '/^summary/,$p'
    python3 - "$dir/round-$round-$workload.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
rates = {t["name"]: t["max_rate"] for t in report["targets"]}
ratio = rates["after"] / rates["before"] if rates["before"] else float("nan")
print(f"max sustained: before {rates['before']:.0f}/s, after {rates['after']:.0f}/s, after/before {ratio:.2f}")
PY
  done
done
