#!/usr/bin/env bash
# Checks the Prometheus side of ron-node with promtool (installed from
# Debian's `prometheus` package when absent):
#   * the recording and alerting rules (promtool check rules),
#   * their unit tests: every alert fires and stays quiet when it should
#     (promtool test rules),
#   * the Grafana dashboard's queries, as recording rules (check rules),
#   * given a file with a node's /metrics, its exposition (check metrics).
#
#   ops/check.sh [METRICS_FILE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v promtool > /dev/null; then
  echo "installing promtool (apt-get install prometheus)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus > /dev/null \
    || { apt-get update -qq > /dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus > /dev/null; }
  # The package starts a Prometheus server; only promtool is wanted.
  if command -v service > /dev/null; then service prometheus stop > /dev/null 2>&1 || true; fi
fi
promtool check rules "$here/prometheus/rules.yml"
(cd "$here/prometheus" && promtool test rules rules_test.yml)

# Every query of the dashboard, as a recording rule.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$here/grafana/ron-node.json" "$work/dashboard-rules.yml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, expr in enumerate(exprs):
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n")
print(f"{len(exprs)} dashboard queries")
PY
promtool check rules "$work/dashboard-rules.yml"

if [ $# -ge 1 ]; then
  # Exit 3 is lint only: `index_dht_lookup_ms` keeps the name SPEC and the
  # index's seed give it; any other finding fails.
  status=0
  found=$(promtool check metrics < "$1" 2>&1) || status=$?
  if [ "$status" -eq 3 ]; then
    others=$(printf '%s\n' "$found" | grep -v '^index_dht_lookup_ms metric names should not contain abbreviated units$' | grep -v '^$' || true)
    [ -z "$others" ] && status=0 || found=$others
  fi
  if [ "$status" -ne 0 ]; then
    printf 'promtool check metrics: %s\n' "$found" >&2
    exit 1
  fi
  echo "metrics: $(grep -c '^# TYPE' "$1") families, exposition checked"
fi
