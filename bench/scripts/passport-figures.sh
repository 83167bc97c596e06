#!/usr/bin/env bash
# The passport figures of issue 5: max sustained rate and p99 at 50 % of
# `passport-verify` and `passport-mix` (80 % issue, 20 % verify) as ratios of
# `wallet-read` (the wallet balance-read rate), sweeps alternated over
# ROUNDS rounds against one node, so all three share the machine's state.
#
#   bench/scripts/passport-figures.sh [ROUNDS=2] [FROM=20000] [TO=140000] [STEP=20000] [ALGS]
#
# ALGS (e.g. ed25519) is passed as --accept-algs to the issues. Expects
# ron-node (tuning/reference-2c-ledger.toml: shard and committer on core 1)
# on 127.0.0.1:8080 with its data dir in $DATA (admin.token there) and the
# wallet pool funded (ron-load --workload wallet-setup); the generator runs
# on core 0. Every step's line goes to $LOG when set. Build first:
# cargo build --release.
set -euo pipefail
rounds=${1:-2}
from=${2:-20000}
to=${3:-140000}
step=${4:-20000}
algs=${5:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
load="$root/target/release/ron-load"
token="${DATA:?set DATA to the data dir of the node}/admin.token"
extra=()
[ -n "$algs" ] && extra=(--accept-algs "$algs")
for round in $(seq 1 "$rounds"); do
  for workload in wallet-read passport-verify passport-mix; do
    echo "== round $round $workload"
    "$load" sweep --target "$workload=127.0.0.1:8080" --workload "$workload" \
      --token-file "$token" --from "$from" --to "$to" --step "$step" \
      --duration 3s --warmup 1s --drain 1s --cores 0 --half-load-rounds 3 "${extra[@]}" \
      | tee -a "${LOG:-/dev/null}" | sed -n '/^summary/,$p'
  done
done
