#!/usr/bin/env bash
# What a receipt lookup costs once the view holds millions of receipts: a
# release node on the reference layout (core 1), 10 000 funded accounts,
# batched transfers from core 0 for WRITE_S s (default 60) at 805 × 256/s,
# then `wallet-read` (95 % balances, 5 % receipts of the setup issues, the
# oldest receipts) at READ_RATE/s (default 4000) for 20 s. Prints both
# runs' latency lines, the sizes of shard 0's view (LMDB file, LSM tree),
# and the server-side latency histogram of `GET /v1/tx/{txid}` (cumulative
# counts per upper bound, in seconds).
#
#   bench/scripts/receipt-lookups.sh NODE_BINARY
#
# Run two builds in turn and compare.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source bench/scripts/node.sh
scratch ron-lookups
start_node node "$1" 8080 8100
load=("$root/target/release/ron-load" run --target 127.0.0.1:8080 --token-file "$dir/node/data/admin.token" --cores 0 --accounts 10000 --payers 10000)
"${load[@]}" --workload wallet-setup --rate 5000 --duration 3s --warmup 0s > /dev/null
echo "writes: $("${load[@]}" --workload wallet-transfers --rate 805 --entries 256 --duration "${WRITE_S:-60}s" --warmup 2s --idle sleep | grep "latency us")"
sleep 5
du -sh "$dir/node/data/shard-0/data.mdb" "$dir/node/data/shard-0/lsm" 2> /dev/null || true
echo "reads: $("${load[@]}" --workload wallet-read --rate "${READ_RATE:-4000}" --duration 20s --warmup 2s --idle sleep | grep "latency us")"
curl -s 127.0.0.1:8080/metrics | grep -F 'request_latency_seconds_bucket{route="/v1/tx/{txid}"' |
  sed -E 's/.*le="([^"]+)"\} ([0-9]+)/\1:\2/' | tr '\n' ' '
echo
