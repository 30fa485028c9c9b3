#!/usr/bin/env bash
# Append throughput and latency per storage mode, as in docs/benchmarks.md:
# 1, 16 and 64 concurrent writers, to 1 stream and to 1,000 streams, 1 KiB
# appends; the storage writer's flush and fsync counts; and the raw fdatasync
# ceiling of the disk under the data directory. Server and load tool are pinned
# to separate cores with taskset when the machine has two or more.
#
#   benches/durability.sh            # 5 s per run
#   SECONDS_PER_RUN=10 benches/durability.sh
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SECONDS_PER_RUN:-5}
cargo build --quiet --release --features redb --example server --example loadgen --example fsync_rate
bin=target/release/examples
pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "| mode | writers | streams | appends/s | MB/s | p50 | p99 | errors | storage writer |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in memory file-fast file-durable acid; do
  for streams in 1 1000; do
    for writers in 1 16 64; do
      data="$work/data-$mode-$streams-$writers"
      DS_SERVER__HOST=127.0.0.1 DS_SERVER__PORT=0 DS_STORAGE__MODE=$mode \
        DS_STORAGE__DATA_DIR="$data" RUST_LOG=warn \
        "${pin_server[@]}" "$bin/server" >"$work/out" 2>"$work/err" &
      server=$!
      for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
      url=$(sed -n 's/^listening on \(http:[^ ]*\)\/$/\1/p' "$work/out")
      result=$("${pin_load[@]}" "$bin/loadgen" append --url "$url" --connections "$writers" \
        --streams "$streams" --bytes 1024 --seconds "$secs" --json || true)
      kill -TERM "$server"; wait "$server" || true
      writer=$(sed -n 's/^storage: //p' "$work/err")
      python3 - "$mode" "$writers" "$streams" "$writer" "$result" <<'PY'
import json, sys
mode, writers, streams, writer, result = sys.argv[1:]
r = json.loads(result)
print(f"| {mode} | {writers} | {streams} | {r['appends_per_sec']:.0f} | {r['mb_per_sec']:.1f} | "
      f"{r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms | {r['errors']} | {writer} |")
PY
    done
  done
done
echo
"$bin/fsync_rate" "$work" 5
