#!/usr/bin/env bash
# Runs the libFuzzer targets on a stable compiler, without cargo-fuzz:
# coverage instrumentation via -Cpasses=sancov-module, corpus under
# target/fuzz-corpus/<target>. With cargo-fuzz and nightly installed,
# `cargo +nightly fuzz run <target>` works too.
#
#   proto/fuzz/run.sh [SECONDS per target, default 60] [TARGET ...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http_request token_text log_segment)
triple=$(rustc -vV | sed -n 's/^host: //p')
target_dir="$here/../../target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS away from build scripts.
cargo build --release --manifest-path "$here/Cargo.toml" --target "$triple" --target-dir "$target_dir"
for target in "${targets[@]}"; do
  corpus="$target_dir/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "== $target for ${seconds}s (corpus $corpus)"
  "$target_dir/$triple/release/$target" "$corpus" -max_total_time="$seconds" -max_len=4096 \
    -artifact_prefix="$target_dir/$target-"
done
