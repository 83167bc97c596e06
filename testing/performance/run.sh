#!/usr/bin/env bash
# The seeds' command line for one scenario of the suite, gated against a
# baseline:
#
#   testing/performance/run.sh --scenario write_mix --duration 10m --rate 2500 \
#       --baseline testing/performance/baselines/write_mix.json
#
# Options: --scenario NAME (see `ron-load suite --only`), --duration D,
# --rate R (requests per second; default the scenario's own), --rounds N
# (default 3), --baseline FILE (compare and exit 1 on a breach), --out DIR,
# --no-reference (skip nginx), --sweep (sweep the scenario after its
# rounds; off by default: the gates hold at one rate). Builds the release binaries when absent; the
# node runs on tuning/reference-2c-ledger.toml, the generator on core 0,
# nginx (the reference) on core 1.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scenario="" duration=10s rate="" rounds=3 baseline="" reference=(--nginx-core 1) sweep=(--no-sweep)
out="testing/performance/runs/$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-reference) reference=(); shift ;;
    --sweep) sweep=(); shift ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$scenario" ] || { echo "run.sh: --scenario is required" >&2; exit 2; }
[ -x target/release/ron-node ] && [ -x target/release/ron-load ] \
  || cargo build --release -p ron-server -p ron-bench
args=(suite --only "$scenario" --duration "$duration" --rounds "$rounds" --out "$out" "${reference[@]}" "${sweep[@]}")
[ -n "$rate" ] && args+=(--rate "$rate")
target/release/ron-load "${args[@]}"
if [ -n "$baseline" ]; then
  target/release/ron-load compare "$out/$scenario.json" "$baseline"
fi
