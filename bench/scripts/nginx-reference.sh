#!/usr/bin/env bash
# Starts the reference server of SPEC §10 for a same-run comparison: nginx,
# one worker pinned to a core, access log off, `return 200`.
#
#   bench/scripts/nginx-reference.sh start [PORT] [CORE]   # default 8089, core 0
#   bench/scripts/nginx-reference.sh stop
#
# Installs nginx (Debian's package) when it is absent. Keep-alive is unlimited so that, like
# ron-node, it never closes a busy connection (nginx closes after 1000
# requests by default, which an open-loop generator sees as lost requests).
set -euo pipefail
dir=/tmp/ron-nginx-reference
case "${1:-start}" in
start)
  port=${2:-8089}
  core=${3:-0}
  mkdir -p "$dir"
  mask=1
  for ((i = 0; i < core; i++)); do mask="${mask}0"; done
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity $mask;
daemon on;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$port reuseport;
    location / { return 200 "ok"; }
  }
}
CONF
  if ! command -v nginx > /dev/null; then
    echo "installing nginx (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx > /dev/null \
      || { apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx > /dev/null; }
    # The package starts a system nginx on port 80; the reference is ours.
    if command -v service > /dev/null; then service nginx stop > /dev/null 2>&1 || true; fi
  fi
  if [ -f "$dir/nginx.pid" ] && kill -0 "$(cat "$dir/nginx.pid")" 2> /dev/null; then
    kill "$(cat "$dir/nginx.pid")"
    sleep 0.2
  fi
  taskset -c "$core" nginx -c "$dir/nginx.conf"
  echo "nginx reference on 127.0.0.1:$port, worker pinned to core $core"
  ;;
stop)
  if [ -f "$dir/nginx.pid" ]; then kill "$(cat "$dir/nginx.pid")"; fi
  ;;
esac
