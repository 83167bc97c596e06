#!/usr/bin/env bash
# The rewarder's end-to-end compute times (request sent to manifest
# received, upload included), one compute at a time, fresh epochs, for two
# builds side by side: both on the reference layout
# (tuning/reference-2c-ledger.toml: shard and committer on core 1, body
# limit raised to 64 MiB for the L vector), curl on core 0, the builds
# alternated request by request so both see the same machine.
#
#   bench/scripts/reward-figures.sh BEFORE_BIN AFTER_BIN [ROUNDS=5] [SCALES="S M L"]
#
# Pass the same binary twice to measure one build; BEFORE_ENV and
# AFTER_ENV add settings to either node's environment (e.g.
# AFTER_ENV=RON_PASSPORT_PQ_MODE=mirror for the cost of attestation). Vectors come from
# `ron-load reward-vectors` (written when absent). Prints one line per
# request and p50/p95/max per build and scale.
set -euo pipefail
before=${1:?the ron-node binary before the change}
after=${2:?the ron-node binary after the change}
rounds=${3:-5}
scales=${4:-"S M L"}
root=$(cd "$(dirname "$0")/../.." && pwd)
load=${LOAD:-$root/target/release/ron-load}
vectors="$root/testing/performance/vectors"
[ -f "$vectors/L.json" ] || "$load" reward-vectors --out "$vectors"
dir=$(mktemp -d /tmp/ron-reward.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
export RON_LIMITS_BODY_MAX_BYTES=67108864

source "$root/bench/scripts/node.sh"
# shellcheck disable=SC2086 # the settings are words
start_node before "$before" 8080 8100 ${BEFORE_ENV:-}
# shellcheck disable=SC2086
start_node after "$after" 8081 8200 ${AFTER_ENV:-}

compute() { # name port scale epoch
  local token
  token=$(cat "$dir/$1/data/admin.token")
  taskset -c 0 curl -s -o "$dir/$1/answer" -w '%{http_code} %{time_total}' \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data-binary "@$vectors/$3.json" "http://127.0.0.1:$2/rewarder/epochs/$4/compute"
}

run=$(date +%s)
for scale in $scales; do
  for round in $(seq 1 "$rounds"); do
    for pair in "before 8080" "after 8081"; do
      set -- $pair
      read -r code seconds <<< "$(compute "$1" "$2" "$scale" "fig-$run-$scale-$round")"
      [ "$code" = 200 ] || { echo "$1 $scale: HTTP $code $(head -c 300 "$dir/$1/answer")" >&2; exit 1; }
      ms=$(awk -v s="$seconds" 'BEGIN { printf "%.1f", s * 1000 }')
      echo "$scale round $round $1 $ms ms"
      echo "$ms" >> "$dir/$1-$scale.ms"
    done
  done
done
echo "--- p50 / p95 / max (ms), $rounds rounds"
for scale in $scales; do
  for name in before after; do
    sort -n "$dir/$name-$scale.ms" | awk -v n="$name" -v s="$scale" '
      { v[NR] = $1 } END {
        p50 = v[int((NR + 1) / 2)]; i95 = int(NR * 0.95 + 0.999); if (i95 > NR) i95 = NR
        printf "%s %s: %s / %s / %s\n", s, n, p50, v[i95], v[NR] }'
  done
done
