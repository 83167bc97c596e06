#!/usr/bin/env bash
# A flamegraph of the node under one ron-load workload, as the seeds'
# runbooks ask: the release node on the reference layout (core 1), the
# workload from core 0 at a fixed rate, `perf record -g` on the node for the
# run, rendered to SVG with inferno (installed with `cargo install inferno`
# when absent; perf from Debian's linux-perf when absent).
#
#   bench/scripts/flamegraph.sh WORKLOAD [RATE=10000] [SECONDS=10] [OUT=flamegraph.svg]
#
# WORKLOAD is a ron-load workload (wallet-read, wallet-write,
# passport-verify, index-resolve, ledger-ingest, reward-replay, …); the
# wallet's and the index's are set up first.
set -euo pipefail
workload=${1:?a ron-load workload, e.g. wallet-read}
rate=${2:-10000}
seconds=${3:-10}
out=${4:-flamegraph.svg}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v perf > /dev/null \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf > /dev/null
if ! command -v inferno-flamegraph > /dev/null; then
  cargo install --quiet inferno
fi
[ -x target/release/ron-node ] && [ -x target/release/ron-load ] \
  || cargo build --release -p ron-server -p ron-bench
dir=$(mktemp -d /tmp/ron-flamegraph.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2> /dev/null || true' EXIT
source "$root/bench/scripts/node.sh"
start_node node target/release/ron-node 8080 8100
node=${pids[0]}
load=(target/release/ron-load run --target 127.0.0.1:8080 --token-file "$dir/node/data/admin.token" --cores 0)
case "$workload" in
  wallet-*) "${load[@]}" --workload wallet-setup --rate 5000 --duration 3s --warmup 0s > /dev/null ;;
  index-*) "${load[@]}" --workload index-setup --rate 5000 --duration 7s --warmup 0s > /dev/null ;;
esac
"${load[@]}" --workload "$workload" --rate "$rate" --duration "$((seconds + 2))s" --warmup 1s \
  > "$dir/load.txt" &
loader=$!
sleep 1
perf record -F 999 -g -p "$node" -o "$dir/perf.data" -- sleep "$seconds" 2> /dev/null
wait "$loader"
grep -E "latency|statuses" "$dir/load.txt"
perf script -i "$dir/perf.data" 2> /dev/null | inferno-collapse-perf | inferno-flamegraph \
  --title "ron-node: $workload at $rate/s" > "$out"
echo "flamegraph: $out ($(du -h "$out" | cut -f1))"
