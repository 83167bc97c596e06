#!/usr/bin/env bash
# Starts a two-shard node (shards on cores 0 and 1, the committer on core 1)
# N times per binary, the binaries in turn, while busy loops (two per core)
# load the machine; counts the starts in which the shards had not both
# logged "serving" after 5 s and after 20 s, and lists the shard threads'
# states and wait channels of each start that hung.
#
#   bench/scripts/starts.sh N NODE_BINARY...
set -uo pipefail
n=$1; shift
declare -A slow hung
hogs=()
trap 'kill "${hogs[@]}" 2> /dev/null' EXIT
for core in 0 1 0 1; do taskset -c "$core" sh -c 'while :; do :; done' & hogs+=($!); done
serving() { local count; count=$(grep -c 'serving' "$1" 2> /dev/null); echo "${count:-0}"; }
for i in $(seq 1 "$n"); do
  for bin in "$@"; do
    dir=$(mktemp -d /tmp/ron-starts.XXXXXX)
    printf 'listen = "127.0.0.1:18080"\nshard_port_base = 18100\ndata_dir = "%s/data"\n[cores]\nshards = [0, 1]\ncommitter = 1\n' "$dir" > "$dir/node.toml"
    "$bin" --config "$dir/node.toml" > "$dir/out" 2> "$dir/log" &
    pid=$!
    ticks=0
    while [ "$(serving "$dir/log")" -lt 2 ] && [ $ticks -lt 400 ]; do sleep 0.05; ticks=$((ticks + 1)); done
    [ $ticks -ge 100 ] && slow[$bin]=$(( ${slow[$bin]:-0} + 1 ))
    if [ $ticks -ge 400 ]; then
      hung[$bin]=$(( ${hung[$bin]:-0} + 1 ))
      echo "$(basename "$bin") start $i: $(serving "$dir/log") shards serving after 20 s; threads (state, wait channel):"
      for task in /proc/$pid/task/*; do
        echo "   $(cat "$task/comm") $(awk '{print $3}' "$task/stat") $(cat "$task/wchan")"
      done | grep -E 'shard|committer'
    fi
    kill "$pid"; wait "$pid" 2> /dev/null; rm -rf "$dir"
  done
done
for bin in "$@"; do
  echo "$(basename "$bin"): $n starts, ${slow[$bin]:-0} over 5 s, ${hung[$bin]:-0} not serving after 20 s"
done
