#!/usr/bin/env bash
# Opens a suite's report.html in headless Chromium and checks that its plots
# rendered: the page's own script counts the scenario SVGs that have a
# non-zero box and a polyline (`data-plots-rendered` on `<body>`, set on
# window load), and a screenshot of the page must hold more than a blank page.
#
#   bench/scripts/report-browser-check.sh REPORT.html SCREENSHOT.png [PLOTS_MIN=1]
#
# Installs Chromium (Debian's package) when it is absent. Prints the count of
# rendered plots and the screenshot's size; exits non-zero with one line on
# any failure.
set -euo pipefail
report=${1:?a report.html, e.g. testing/performance/runs/latest/report.html}
screenshot=${2:?where to write the screenshot, e.g. report.png}
plots_min=${3:-1}
# A blank page at this window size is a 23 KB PNG (Chromium 156); the
# two-scenario quick report without sweeps is about 190 KB, its text and
# tables alone about 160 KB. So the size only catches a blank or broken
# page; whether the plots drew is the count's job. 100 KB sits well clear
# of blank on both sides.
window_size=1280,4000
screenshot_bytes_min=100000
# Each Chromium run normally takes about a second.
timeout_seconds=60

fail() {
  echo "report-browser-check: $*" >&2
  exit 1
}

find_chromium() {
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" > /dev/null; then
      command -v "$name"
      return
    fi
  done
}

install_chromium() {
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium)
  echo "installing chromium (apt-get)" >&2
  "${install[@]}" > /dev/null \
    || { "${sudo[@]}" apt-get update -qq > /dev/null && "${install[@]}" > /dev/null; } \
    || fail "could not install chromium with apt-get"
}

[ -f "$report" ] || fail "no report at $report"
url="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
chromium=$(find_chromium)
if [ -z "$chromium" ]; then
  install_chromium
  chromium=$(find_chromium)
  [ -n "$chromium" ] || fail "chromium installed but not on PATH"
fi

profile=$(mktemp -d /tmp/ron-report-browser.XXXXXX)
trap 'rm -rf "$profile"' EXIT
# The virtual time budget lets the page finish loading (and its load
# handler run) before Chromium dumps or shoots it.
browser=(timeout "$timeout_seconds" "$chromium" --headless=new --no-sandbox --disable-gpu
  --hide-scrollbars --user-data-dir="$profile" --virtual-time-budget=5000)

"${browser[@]}" --dump-dom "$url" > "$profile/dom.html" 2> "$profile/dom.log" \
  || fail "chromium --dump-dom failed: $(tail -n 1 "$profile/dom.log")"
body=$(grep -o '<body[^>]*>' "$profile/dom.html" | head -n 1 || true)
plots=$(echo "$body" | sed -n 's/.*data-plots-rendered="\([0-9]*\)".*/\1/p')
[ -n "$plots" ] || fail "no data-plots-rendered on <body> (the load handler did not run): $body"
[ "$plots" -ge "$plots_min" ] || fail "$plots plots rendered, want at least $plots_min"
echo "plots rendered: $plots"

rm -f "$screenshot"
"${browser[@]}" --window-size="$window_size" --screenshot="$screenshot" "$url" \
  > /dev/null 2> "$profile/screenshot.log" \
  || fail "chromium --screenshot failed: $(tail -n 1 "$profile/screenshot.log")"
[ -f "$screenshot" ] || fail "chromium wrote no screenshot at $screenshot"
magic=$(head -c 8 "$screenshot" | od -An -tx1 | tr -d ' \n')
[ "$magic" = 89504e470d0a1a0a ] || fail "$screenshot is not a PNG"
bytes=$(stat -c %s "$screenshot")
[ "$bytes" -gt "$screenshot_bytes_min" ] \
  || fail "$screenshot is $bytes bytes, a near-blank page (want more than $screenshot_bytes_min)"
echo "screenshot: $screenshot ($bytes bytes)"
