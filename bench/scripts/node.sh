# Sourced by the figure scripts: starts a release ron-node on the reference
# layout (or on tuning/$LAYOUT.toml) and waits for it. Needs $dir (data and
# logs go to $dir/NAME) and the array `pids` (the node's pid is appended),
# which `scratch` below makes and cleans up.
#
#   start_node NAME BINARY PORT SHARD_PORT_BASE [SETTINGS…]
# SETTINGS are NAME=VALUE pairs for the node's environment.
# A scratch directory in $dir and an empty `pids`; on exit the nodes are
# stopped, waited for (a stopping node still writes its view) and the
# directory removed.
#
#   scratch NAME
scratch() {
  dir=$(mktemp -d "/tmp/$1.XXXXXX"); pids=()
  trap 'kill "${pids[@]}" 2> /dev/null || true; wait 2> /dev/null; rm -rf "$dir"' EXIT
}

start_node() {
  local name=$1 binary=$2 port=$3 base=$4
  shift 4
  mkdir -p "$dir/$name"
  env "$@" "$binary" --config "$root/tuning/${LAYOUT:-reference-2c-ledger}.toml" \
    --data-dir "$dir/$name/data" --listen "127.0.0.1:$port" --shard-port-base "$base" \
    > "$dir/$name/out" 2> "$dir/$name/log" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if curl -sf "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 \
      && [ -s "$dir/$name/data/admin.token" ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "$name did not become ready: $(tail -5 "$dir/$name/log")" >&2
  exit 1
}
