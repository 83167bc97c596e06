#!/usr/bin/env bash
# Wallet reads while the rewarder computes L runs back to back, against the
# same reads on the idle node, interleaved round by round (issue 13: the
# read p99 under L stays within 20 % of idle). One node on the reference
# layout (tuning/reference-2c-ledger.toml, body limit 64 MiB); ron-load on
# core 0 at a fixed read rate (it polls without sleeping: the core is its);
# the L computes from curl, fresh epochs, one at a time, for the whole
# loaded run, at SCHED_IDLE on core L_CORE (default 1, the node's: curl
# takes what the shard leaves, and never delays the generator, which a
# client on core 0 would: its sends then go late and the tail is the
# generator's). NODE_ENV adds settings to the node's environment (e.g.
# RON_REWARDER_LANE=idle).
#
#   bench/scripts/reward-wallet-figures.sh [ROUNDS=3] [RATE=5000] [DURATION=10s]
set -euo pipefail
rounds=${1:-3}
rate=${2:-5000}
duration=${3:-10s}
root=$(cd "$(dirname "$0")/../.." && pwd)
load=${LOAD:-$root/target/release/ron-load}
node=${NODE:-$root/target/release/ron-node}
vectors="$root/testing/performance/vectors"
[ -f "$vectors/L.json" ] || "$load" reward-vectors --out "$vectors"
dir=$(mktemp -d /tmp/ron-reward-wallet.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
source "$root/bench/scripts/node.sh"
# shellcheck disable=SC2086 # the settings are words
start_node node "$node" 8080 8100 RON_LIMITS_BODY_MAX_BYTES=67108864 ${NODE_ENV:-}
token="$dir/node/data/admin.token"
"$load" run --target 127.0.0.1:8080 --rate 8000 --workload wallet-setup \
  --token-file "$token" --cores 0 --duration 3s --warmup 0s > /dev/null

computes() { # until the file $dir/stop exists: L computes, one at a time
  local n=0 auth
  auth="Authorization: Bearer $(cat "$token")"
  while [ ! -e "$dir/stop" ]; do
    n=$((n + 1))
    chrt -i 0 taskset -c "${L_CORE:-1}" curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "$auth" \
      -H 'Content-Type: application/json' --data-binary "@$vectors/L.json" \
      "http://127.0.0.1:8080/rewarder/epochs/wallet-fig-$$-$1-$n/compute" >> "$dir/computes-$1"
  done
}

reads() { # label
  "$load" run --target 127.0.0.1:8080 --rate "$rate" --workload wallet-read \
    --token-file "$token" --cores 0 --duration "$duration" --warmup 2s --json "$dir/$1.json" \
    | grep -E "latency|statuses" | sed "s/^/$1: /"
}

for round in $(seq 1 "$rounds"); do
  reads "idle-$round"
  rm -f "$dir/stop"
  computes "$round" &
  cpid=$!
  sleep 1
  reads "under-L-$round"
  touch "$dir/stop"
  wait "$cpid"
  echo "under-L-$round: L computes $(grep -c '^200' "$dir/computes-$round") ok," \
    "times $(awk '{ printf "%.0f ", $2 * 1000 }' "$dir/computes-$round")ms"
done
echo "--- p99 (us): idle vs under L, per round"
for round in $(seq 1 "$rounds"); do
  idle=$(grep -o '"p99_us": *[0-9.]*' "$dir/idle-$round.json" | grep -o '[0-9.]*$')
  busy=$(grep -o '"p99_us": *[0-9.]*' "$dir/under-L-$round.json" | grep -o '[0-9.]*$')
  awk -v r="$round" -v i="$idle" -v b="$busy" \
    'BEGIN { printf "round %s: idle %.0f, under L %.0f, ratio %.2f\n", r, i, b, b / i }'
done
