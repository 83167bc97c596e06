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
# "from to step"). The two nodes share one set of keys (the first node's),
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
for round in $(seq 1 "$rounds"); do
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
