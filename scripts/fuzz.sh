#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ (libFuzzer through libfuzzer-sys, with the
# coverage instrumentation cargo-fuzz would add, on the stable toolchain) and
# runs each for SECONDS (default 10; CI's smoke run) on its corpus in
# fuzz/corpus/<target>. A crash stops the run and leaves its input in
# fuzz/artifacts/<target>/. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-10}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(offset headers query json sse)
triple="$(rustc -vV | sed -n 's/^host: //p')"
# Where cargo puts the binaries: CARGO_TARGET_DIR when set, else fuzz/target.
binaries="${CARGO_TARGET_DIR:-$PWD/target}/$triple/release"

RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --locked --release --target "$triple" --bins

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  echo "fuzzing $target for ${seconds}s"
  log="artifacts/$target.log"
  # libFuzzer exits 0 when the time is up and non-zero on a crash (or when it
  # cannot run at all): either way the run stops here, with the fuzzer's words.
  if ! "$binaries/$target" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" "corpus/$target" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $target failed; inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log"
done
