#!/usr/bin/env bash
# The index figures of issue 12 against one node, in one run:
#  * max sustained rate and p99 at 50 % of `index-hot` (cache hits) as a
#    ratio of `wallet-read` (balance reads), sweeps alternated over ROUNDS;
#  * the cache hit ratio under `index-resolve` (80/20 hot:cold) at RATE;
#  * `index-cold` at RATE (every answer made afresh from the owners' state:
#    the refill of a miss from the local view), p50/p95/p99.
#
#   bench/scripts/index-figures.sh [ROUNDS=2] [FROM=20000] [TO=140000] [STEP=20000] [RATE=10000] [KEYS=10000]
#
# Expects ron-node (tuning/reference-2c-ledger.toml: shard and committer on
# core 1) on 127.0.0.1:8080 with its data dir in $DATA (admin.token there),
# the wallet pool funded (ron-load --workload wallet-setup) and the index
# key space set up (ron-load --workload index-setup --keys KEYS, at least
# 3 × KEYS requests); the generator runs on core 0. Every step's line goes
# to $LOG when set. Build first: cargo build --release.
set -euo pipefail
rounds=${1:-2}
from=${2:-20000}
to=${3:-140000}
step=${4:-20000}
rate=${5:-10000}
keys=${6:-10000}
root=$(cd "$(dirname "$0")/../.." && pwd)
load="$root/target/release/ron-load"
token="${DATA:?set DATA to the data dir of the node}/admin.token"
metric() {
  curl -s http://127.0.0.1:8080/metrics | awk -v m="$1" '$1 == m { print $2 }'
}
for round in $(seq 1 "$rounds"); do
  for workload in wallet-read index-hot; do
    echo "== round $round $workload"
    "$load" sweep --target "$workload=127.0.0.1:8080" --workload "$workload" \
      --token-file "$token" --keys "$keys" --from "$from" --to "$to" --step "$step" \
      --duration 3s --warmup 1s --drain 1s --cores 0 --half-load-rounds 3 \
      | tee -a "${LOG:-/dev/null}" | sed -n '/^summary/,$p'
  done
done
for workload in index-resolve index-cold; do
  hits=$(metric index_cache_hits_total)
  misses=$(metric index_cache_misses_total)
  echo "== $workload at $rate/s"
  "$load" run --target 127.0.0.1:8080 --workload "$workload" --keys "$keys" --rate "$rate" \
    --duration 10s --warmup 2s --cores 0 | tee -a "${LOG:-/dev/null}"
  hits=$(echo "$(metric index_cache_hits_total) - $hits" | bc)
  misses=$(echo "$(metric index_cache_misses_total) - $misses" | bc)
  echo "  cache: $hits hits, $misses misses, hit ratio $(echo "scale=4; $hits / ($hits + $misses)" | bc)"
done
