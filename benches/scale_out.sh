#!/usr/bin/env bash
# Several instances over PostgreSQL, as in docs/benchmarks.md ("Scale-out"):
# appends/s with 64 writers over 64 streams (1 KiB) through one and through two
# PostgreSQL instances beside file-durable on one instance, appends per
# transaction, catch-up MB/s, and the wake-up latency of 1,000 SSE readers on
# one instance for appends made on another. Each run starts on an empty
# schema (or data directory). The servers are pinned to core 0 and the load
# tool to core 1 with taskset; PostgreSQL runs unpinned on the same machine,
# so every figure is for instances, database and load tool sharing its cores.
# The load tool's own CPU (user + system seconds over wall seconds) is printed
# beside each figure: above ~0.85 the tool, not the server, is the limit.
#
#   benches/scale_out.sh                       # 5 s per run
#   SECONDS_PER_RUN=10 TEST_POSTGRES_URL=postgres://... benches/scale_out.sh
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SECONDS_PER_RUN:-5}
pg=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
psql "$pg" -qAtc 'SELECT 1' >/dev/null || { echo "PostgreSQL at $pg is unreachable" >&2; exit 1; }
cargo build --quiet --release --all-features --example server --example loadgen
bin=target/release/examples
pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi
work=$(mktemp -d)
schema=ds_bench_$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$pg" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts one server of storage mode $1 (log in $work/server-$2); sets $url.
start() {
  local mode=$1 n=$2
  DS_SERVER__HOST=127.0.0.1 DS_SERVER__PORT=0 DS_STORAGE__MODE=$mode \
    DS_STORAGE__DATA_DIR="$work/data-$n" DS_STORAGE__POSTGRES_URL="$pg" \
    DS_STORAGE__POSTGRES_SCHEMA=$schema DS_STORAGE__POSTGRES_POOL_SIZE=16 RUST_LOG=warn \
    "${pin_server[@]}" "$bin/server" >"$work/out-$n" 2>"$work/server-$n" &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$work/out-$n" && break; sleep 0.1; done
  url=$(sed -n 's/^listening on \(http:[^ ]*\)\/$/\1/p' "$work/out-$n")
  for _ in $(seq 100); do curl -sf "${url%/v1/stream}/readyz" >/dev/null && break; sleep 0.1; done
}

stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  psql "$pg" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
}

# Runs the load tool with "$@"; prints its JSON and, on stderr, its CPU share.
load() {
  local t0 t1
  t0=$(date +%s.%N)
  "${pin_load[@]}" /usr/bin/time -f '%U %S' -o "$work/time" "$bin/loadgen" "$@" --json
  t1=$(date +%s.%N)
  python3 -c "import sys; u,s=map(float,open('$work/time').read().split()); print(f'{(u+s)/($t1-$t0):.2f}')" >"$work/cpu"
}

summary() { sed -n 's/^storage: //p' "$work/server-$1"; }

echo "| workload | setup | result | load tool CPU | storage writer |"
echo "|---|---|---|---|---|"
append_row() {
  python3 - "$1" "$2" "$3" "$(cat "$work/cpu")" "$4" <<'PY'
import json, sys
workload, setup, result, cpu, writer = sys.argv[1:]
r = json.loads(result)
print(f"| {workload} | {setup} | {r['appends_per_sec']:.0f} appends/s, p50 {r['p50_us']/1000:.2f} ms, "
      f"p99 {r['p99_us']/1000:.2f} ms, {r['errors']} errors | {cpu} | {writer} |")
PY
}

# Appends: 64 writers over 64 streams.
start file-durable 0
result=$(load append --url "$url" --connections 64 --streams 64 --bytes 1024 --seconds "$secs")
stop_all
append_row "appends 64x64, 1 KiB" "file-durable, 1 instance" "$result" "$(summary 0)"

start postgres 0
result=$(load append --url "$url" --connections 64 --streams 64 --bytes 1024 --seconds "$secs")
stop_all
append_row "appends 64x64, 1 KiB" "postgres, 1 instance" "$result" "$(summary 0)"

start postgres 0; a=$url
start postgres 1; b=$url
result=$(load append --url "$a" --also "$b" --connections 64 --streams 64 --bytes 1024 --seconds "$secs")
stop_all
append_row "appends 64x64, 1 KiB" "postgres, 2 instances" "$result" "$(summary 0); $(summary 1)"

# Catch-up: 64 MiB in 64 KiB appends, 4 readers.
for mode in file-durable postgres; do
  start $mode 0
  result=$(load catchup --url "$url" --megabytes 64 --append-bytes 65536 --readers 4 --seconds "$secs")
  stop_all
  python3 - "$mode" "$result" "$(cat "$work/cpu")" <<'PY'
import json, sys
mode, result, cpu = sys.argv[1:]
r = json.loads(result)
print(f"| catch-up 64 MiB in 64 KiB appends, 4 readers | {mode}, 1 instance | "
      f"{r['mb_per_sec']:.0f} MB/s | {cpu} | |")
PY
done

# Wake-ups: 1,000 SSE readers on instance B, 20 appends/s made on instance A.
start postgres 0; a=$url
start postgres 1; b=$url
result=$(load fanout --url "$b" --writer-url "$a" --subscribers 1000 --rate 20 --seconds "$secs" --mode sse)
stop_all
python3 - "$result" "$(cat "$work/cpu")" <<'PY'
import json, sys
result, cpu = sys.argv[1:]
r = json.loads(result)
print(f"| wake-up, 1,000 SSE readers on B, 20 appends/s on A | postgres, 2 instances | "
      f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['lost']} lost | {cpu} | |")
PY
