#!/usr/bin/env bash
# Resolve latency of keys another node provides, across real processes on
# loopback (issue 12): node C keeps KEYS manifests and provides them; node
# A (amnesia, so each phase starts empty) knows them only through the DHT.
# Each resolve on A (`index-remote`: ?fresh=true over uniform keys) looks
# the cid up in the DHT, asks C for its live records and fetches the
# manifest, verified. Phase 1: C is the only provider. Phase 2: a stalled
# provider (accepts, never answers) ranks first; A runs alpha = 1, beta = 1,
# so only the hedge after hedge_after_ms (150) reaches C.
#
#   bench/scripts/index-remote-figures.sh [KEYS=2000] [RATE=100] [DURATION=10s]
#
# Ports 8080/8090 (HTTP), 8100/8110 (shards), 4101/4103 (DHT), 8099 (the
# stalled provider). Node A: shard and committer on core 1; node C: on
# core 0 with the generator (a 2-core machine has no better split). Build
# first: cargo build --release. Stops everything it started.
set -euo pipefail
keys=${1:-2000}
rate=${2:-100}
duration=${3:-10s}
root=$(cd "$(dirname "$0")/../.." && pwd)
node="$root/target/release/ron-node"
load="$root/target/release/ron-load"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ready() { for _ in $(seq 1 200); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.05; done; echo "not ready: $1" >&2; exit 1; }
cat > "$work/a.toml" <<TOML
listen = "127.0.0.1:8080"
shard_port_base = 8100
[cores]
shards = [1]
committer = 1
[index]
dht_listen = "/ip4/127.0.0.1/tcp/4101"
alpha = 1
beta = 1
TOML
cat > "$work/c.toml" <<TOML
listen = "127.0.0.1:8090"
shard_port_base = 8110
data_dir = "$work/c"
[cores]
shards = [0]
committer = 0
[index]
dht_listen = "/ip4/127.0.0.1/tcp/4103"
peers = ["/ip4/127.0.0.1/tcp/4101"]
TOML
start_a() { "$node" --config "$work/$1" --amnesia > "$work/a.log" 2>&1 & pids+=($!); ready http://127.0.0.1:8080; }
# Restarted (a new identity: amnesia), A finds C through C's address.
sed 's|^beta = 1$|beta = 1\npeers = ["/ip4/127.0.0.1/tcp/4103"]|' "$work/a.toml" > "$work/a2.toml"
start_a a.toml
"$node" --config "$work/c.toml" > "$work/c.log" 2>&1 & pids+=($!)
ready http://127.0.0.1:8090
setup() {
  "$load" run --target 127.0.0.1:8090 --workload index-setup --keys "$keys" \
    --token-file "$work/c/admin.token" --provider-url "$1" --provider-ttl "$2" \
    --rate 2000 --duration "$(( 3 * keys / 2000 + 1 ))s" --warmup 0s --cores 0 | sed -n '3p'
}
remote() {
  "$load" run --target 127.0.0.1:8080 --workload index-remote --keys "$keys" --rate "$rate" \
    --duration "$duration" --warmup 1s --connections 16 --cores 0
  curl -s http://127.0.0.1:8080/metrics | grep -E '^(dht_hedged_requests_total|index_integrity_fail_total|index_dht_lookup_ms_(sum|count)|index_dht_lookup_hops_(sum|count))'
}
setup http://127.0.0.1:8090 3600
sleep 2
echo "== phase 1: C provides, nothing stalls"
remote
# A forgets what it fetched; a stalled provider ranks first on C.
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
python3 - <<'PY' > "$work/stall.log" 2>&1 &
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8099)); s.listen(1024); s.settimeout(1)
held, end = [], time.time() + 600
while time.time() < end:
    try:
        c, _ = s.accept(); held.append(c)
    except socket.timeout:
        pass
PY
pids+=($!)
sleep 3
start_a a2.toml
setup http://127.0.0.1:8099 86400
sleep 2
echo "== phase 2: a stalled provider ranks first (hedge after 150 ms)"
remote
