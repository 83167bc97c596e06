#!/usr/bin/env bash
# What one workload costs the node at one rate: a release node on the
# reference layout (core 1), 10 000 funded accounts, the workload from core 0
# for RUN_S s (default 10) after 2 s of warm-up; over RUN_S − 4 s of it
# (from its third second), the committed entries per second
# (`ledger_batch_entries_sum`), the node's CPU (its /proc stat, every thread)
# and core 1's busy time (/proc/stat: user, nice, system, irq, softirq,
# steal; the kernel's work for the node's I/O included), and core 1's time
# per committed entry; and the CPU time per committed entry of the shard
# threads (`shard-*`), of the view writers (`worker-normal-*`) and of the
# views' LSM merging threads (`fjall:worker`), wherever they ran; and what the generator's core (core 0) was busy with, and the
# generator's own share of it; and the log's fsyncs slower than 50 ms
# over the whole run (`ledger_fsync_seconds`: a stall of the device shows
# there).
#
#   bench/scripts/cost.sh NODE_BINARY WORKLOAD RATE ENTRIES [NAME=VALUE...]
#
# WORKLOAD and ENTRIES as `ron-load run` takes them (`wallet-transfer` 1,
# `wallet-transfers` 64, `ledger-ingest` 16); NAME=VALUE go to the node's
# environment; LOAD_ARGS (say `--idle sleep`) go to the generator's run;
# LAYOUT names another layout of tuning/ (say reference-2c-ledger-batches).
# A run must hold several view writes (`ledger.view_write_ms`) for their
# cost to show: lengthen it with RUN_S.
# Run two builds in turn, several times, and compare.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source bench/scripts/node.sh
scratch ron-cost
bin=$1; w=$2; r=$3; e=$4; shift 4
start_node node $bin 8080 8100 "$@"
pid=${pids[0]}
load=("$root/target/release/ron-load" run --target 127.0.0.1:8080 --token-file "$dir/node/data/admin.token" --cores 0 --accounts 10000 --payers 10000)
"${load[@]}" --workload wallet-setup --rate 5000 --duration 3s --warmup 0s > /dev/null
"${load[@]}" --workload "$w" --rate "$r" --entries "$e" --duration "${RUN_S:-10}s" --warmup 2s ${LOAD_ARGS:-} > "$dir/load.txt" &
loader=$!
sleep 3
m() { curl -s 127.0.0.1:8080/metrics | awk '/^ledger_batch_entries_sum /{print $2}'; }
cpu1() { awk '/^cpu1 /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
cpu0() { awk '/^cpu0 /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# CPU ticks of the generator, every thread.
gen() { awk '{print $14+$15}' /proc/$loader/stat; }
# CPU ticks of the node's threads whose name matches $1.
threads() { cat /proc/$pid/task/*/stat | awk -v name="$1" '$2 ~ name {s+=$14+$15} END{print s+0}'; }
s0=$(threads "^.shard-"); w0=$(threads "^.worker-normal"); l0=$(threads "^.fjall"); e0=$(m); c0=$(awk '{print $14+$15}' /proc/$pid/stat); k0=$(cpu1); z0=$(cpu0); g0=$(gen); t0=$(date +%s.%N)
sleep $((${RUN_S:-10} - 4))
s1=$(threads "^.shard-"); w1=$(threads "^.worker-normal"); l1=$(threads "^.fjall"); e1=$(m); c1=$(awk '{print $14+$15}' /proc/$pid/stat); k1=$(cpu1); z1=$(cpu0); g1=$(gen); t1=$(date +%s.%N)
wait $loader
# fsyncs over 50 ms: all of them less those within 50 ms.
slow=$(curl -s 127.0.0.1:8080/metrics | awk '/^ledger_fsync_seconds_count /{n=$2} /^ledger_fsync_seconds_bucket\{le="0.05"\}/{b=$2} END{print n-b}')
lat=$(grep -E "latency us" "$dir/load.txt" | sed -E 's/.*p50 ([0-9.]+).*p99 ([0-9.]+).*/p50 \1 p99 \2/')
st=$(grep -oE "late [0-9]+ dropped [0-9]+|statuses \{[^}]*\}|NOT SUSTAINED" "$dir/load.txt" | tr "\n" " ")
python3 -c "d=$t1-$t0; n=($e1-$e0)/d; print('%s %s r=%s×%s | %s | committed/s %.0f | node %.0f%% core1 %.0f%% | %.1f µs core1/entry | %s' % ('$(basename $bin)', '$w', $r, $e, '$lat', n, ($c1-$c0)/d, ($k1-$k0)/d, ($k1-$k0)/d*1e4/max(n,1), '$st') + ' | fsyncs over 50 ms: $slow' + ' | shards %.2f µs/entry, view writers %.2f µs/entry, LSM merges %.2f µs/entry' % (($s1-$s0)/d*1e4/max(n,1), ($w1-$w0)/d*1e4/max(n,1), ($l1-$l0)/d*1e4/max(n,1)) + ' | core0 %.0f%%, generator %.0f%%' % (($z1-$z0)/d, ($g1-$g0)/d))"
