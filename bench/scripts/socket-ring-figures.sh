#!/usr/bin/env bash
# The socket-ring figures of ARCHITECTURE.md: at one fixed open-loop rate,
# interleaved over rounds, for ron-node and the nginx reference, measure
#   * server CPU per request (utime + stime of the server process),
#   * reschedule IPIs (RES in /proc/interrupts) on the server's core per request,
#   * p50/p99 latency from ron-load,
# and for ron-node the lateness of its 1 ms timer probe under that load.
#
#   bench/scripts/socket-ring-figures.sh [RATE=80000] [ROUNDS=3] [SECONDS=5]
#
# Expects ron-node (tuning/reference-2c.toml: shard on core 0) on 127.0.0.1:8080
# and bench/scripts/nginx-reference.sh on 127.0.0.1:8089 (core 0); the
# generator runs on core 1. Build first: cargo build --release.
set -euo pipefail
rate=${1:-80000}
rounds=${2:-3}
seconds=${3:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
load="$root/target/release/ron-load"
server_core=0
node_pid=$(pgrep -f 'release/ron-node' | head -1)
nginx_pid=$(pgrep -f 'nginx: worker' | head -1)
[ -n "$node_pid" ] || { echo "ron-node is not running"; exit 1; }
[ -n "$nginx_pid" ] || { echo "nginx-reference is not running"; exit 1; }
ticks_per_s=$(getconf CLK_TCK)

res() { awk -v c=$((server_core + 2)) '$1 == "RES:" { print $c }' /proc/interrupts; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
metric() { curl -s http://127.0.0.1:8080/metrics | awk -v m="$1" '$1 == m { print $2 }'; }

measure() {
  local name=$1 pid=$2 port=$3 path=$4 json
  json=$(mktemp)
  local res0 cpu0 lat_sum0 lat_count0
  res0=$(res); cpu0=$(cpu_ticks "$pid")
  lat_sum0=$(metric executor_timer_lateness_seconds_sum); lat_count0=$(metric executor_timer_lateness_seconds_count)
  "$load" run --target "127.0.0.1:$port" --path "$path" --rate "$rate" --duration "${seconds}s" \
    --warmup 0s --connections 64 --cores 1 --json "$json" > /dev/null
  local res1 cpu1 lat_sum1 lat_count1
  res1=$(res); cpu1=$(cpu_ticks "$pid")
  lat_sum1=$(metric executor_timer_lateness_seconds_sum); lat_count1=$(metric executor_timer_lateness_seconds_count)
  python3 - "$name" "$json" "$((res1 - res0))" "$((cpu1 - cpu0))" "$ticks_per_s" \
    "$lat_sum0" "$lat_sum1" "$lat_count0" "$lat_count1" <<'PY'
import json, sys
name, path, res, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
report = json.load(open(path))
done = max(report["completed"], 1)
line = (f"{name:9} {report['achieved_rate']:9.0f}/s  cpu {ticks / hz / done * 1e6:5.2f} us/req"
        f"  RES {res / done:.4f}/req  p50 {report['latency']['p50_us']:7.1f} us"
        f"  p99 {report['latency']['p99_us']:8.1f} us  late {report['late_sends']}")
if name == "ron-node":
    s0, s1, c0, c1 = (float(x) for x in sys.argv[6:10])
    if c1 > c0:
        line += f"  timer lateness mean {(s1 - s0) / (c1 - c0) * 1e6:.0f} us over {int(c1 - c0)} probes"
print(line)
PY
  rm -f "$json"
}

echo "rate $rate/s, ${seconds}s per run, $rounds interleaved rounds, server core $server_core, generator core 1"
for ((round = 1; round <= rounds; round++)); do
  measure ron-node "$node_pid" 8080 /healthz
  measure nginx "$nginx_pid" 8089 /
done
curl -s http://127.0.0.1:8080/metrics | grep -E '^executor_timer_lateness_(max_seconds|seconds_bucket\{le="0.00(1|5)"\}|seconds_count)'
