#!/usr/bin/env bash
# Side-by-side figures for docs/benchmarks.md: every workload of the load tool
# against our example server (memory, file-fast, file-durable, acid), the
# official Rust server (durable-streams 0.1.5: memory, wal), the community Rust
# server (durable-streams-server 0.3.0: memory, file-durable, acid), the Node
# reference server (@durable-streams/server 0.3.7), and the ceilings (a bare
# hyper server answering 204; this disk's fdatasync rate). Peers are installed
# on demand under target/peers. Server and load tool are pinned to separate
# cores. Loopback only.
#
#   benches/compare.sh                          # everything
#   SERVERS="ours-memory official-memory" WORKLOADS="append16 streams" benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SECONDS_PER_RUN:-5}
peers=target/peers
servers=${SERVERS:-"bare-hyper ours-memory ours-file-fast ours-file-durable ours-acid official-memory official-wal community-memory community-file-durable community-acid node-memory"}
workloads=${WORKLOADS:-"append16 append64 catchup64k catchup1k fanout-sse fanout-long-poll streams"}
pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi

need() {
  case "$1" in
    official-*) [ -x "$peers/official/bin/durable-streams-server" ] ||
      cargo install --quiet durable-streams --version 0.1.5 --root "$peers/official" ;;
    community-*) [ -x "$peers/community/bin/durable-streams-server" ] ||
      cargo install --quiet durable-streams-server --version 0.3.0 --root "$peers/community" ;;
    node-*) [ -d "$peers/node/node_modules/@durable-streams/server" ] ||
      npm install --silent --no-audit --no-fund --prefix "$peers/node" @durable-streams/server@0.3.7
      cp benches/node-server.mjs "$peers/node/" ;;
  esac
}

cargo build --quiet --release --features redb,metrics \
  --example server --example loadgen --example bare_hyper --example fsync_rate
bin=target/release/examples
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

# Starts server $1; sets $url and $pid.
start() {
  local name=$1 data="$work/data-$1" port=4461
  mkdir -p "$data"
  case "$name" in
    bare-hyper) "${pin_server[@]}" "$bin/bare_hyper" $port >"$work/out" 2>&1 & ;;
    ours-*) DS_SERVER__PORT=$port DS_STORAGE__MODE=${name#ours-} DS_STORAGE__DATA_DIR="$data" \
              RUST_LOG=warn "${pin_server[@]}" "$bin/server" >"$work/out" 2>&1 & ;;
    official-*) "${pin_server[@]}" "$peers/official/bin/durable-streams-server" --host 127.0.0.1 \
              --port $port --data-dir "$data" --durability "${name#official-}" >"$work/out" 2>&1 & ;;
    community-*) DS_SERVER__PORT=$port DS_STORAGE__MODE=${name#community-} DS_STORAGE__DATA_DIR="$data" \
              RUST_LOG=warn "${pin_server[@]}" "$peers/community/bin/durable-streams-server" >"$work/out" 2>&1 & ;;
    node-memory) (cd "$peers/node" && exec "${pin_server[@]}" node node-server.mjs $port) >"$work/out" 2>&1 & ;;
  esac
  pid=$!
  url="http://127.0.0.1:$port/v1/stream"
  for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/stream/__probe" || true)
    if [ "$code" != "000" ] && [ "$code" != "503" ]; then return 0; fi
    sleep 0.1
  done
  echo "server $name did not start:" >&2; cat "$work/out" >&2; return 1
}

stop() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

load() { "${pin_load[@]}" "$bin/loadgen" "$@" --url "$url" --json 2>>"$work/load.err" || true; }

row() {
  python3 - "$@" <<'PY'
import json, sys
server, workload, raw = sys.argv[1:]
try:
    r = json.loads(raw.strip().splitlines()[-1])
except Exception:
    print(f"| {server} | {workload} | failed | | | |"); sys.exit()
w = r["workload"]
if w == "append":
    print(f"| {server} | {workload} | {r['appends_per_sec']:.0f} appends/s | {r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms | errors {r['errors']} |")
elif w == "catchup":
    print(f"| {server} | {workload} | {r['mb_per_sec']:.0f} MB/s | {r['read_p50_ms']:.1f} ms | {r['read_p99_ms']:.1f} ms | errors {r['errors']} |")
elif w == "fanout":
    ok = "all delivered once, in order" if r["every_message_delivered_once_in_order"] else f"LOST {r['lost']}, reordered {r['out_of_order']}, failed {r['failed_subscribers']}"
    idle = r.get('rss_bytes_per_idle_subscriber')
    idle = f"; {idle/1024:.1f} KiB RSS per idle subscriber" if idle is not None else ""
    print(f"| {server} | {workload} | {r['deliveries']} deliveries | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {ok}{idle} |")
elif w == "streams":
    rss = r.get('server_rss_bytes'); fds = r.get('server_fds'); per = r.get('rss_bytes_per_stream')
    print(f"| {server} | {workload} | {r['creates_per_sec']:.0f} creates/s | | | errors {r['errors']}; RSS {rss/1048576 if rss else 0:.0f} MiB ({per or 0:.0f} B/stream), {fds} fds |")
PY
}

echo "| server | workload | result | p50 | p99 | notes |"
echo "|---|---|---|---|---|---|"
for server in $servers; do
  need "$server"
  for workload in $workloads; do
    if [ "$server" = bare-hyper ] && [[ "$workload" != append* ]]; then continue; fi
    start "$server"
    case "$workload" in
      append16) out=$(load append --connections 16 --streams 1 --bytes 1024 --seconds "$secs") ;;
      append64) out=$(load append --connections 64 --streams 64 --bytes 1024 --seconds "$secs") ;;
      catchup64k) out=$(load catchup --megabytes 64 --append-bytes 65536 --readers 4 --seconds "$secs") ;;
      catchup1k) out=$(load catchup --megabytes 64 --append-bytes 1024 --readers 4 --seconds "$secs") ;;
      fanout-sse) out=$(load fanout --subscribers 1000 --rate 20 --seconds "$secs" --mode sse --server-pid "$pid") ;;
      fanout-long-poll) out=$(load fanout --subscribers 1000 --rate 20 --seconds "$secs" --mode long-poll --server-pid "$pid") ;;
      streams) out=$(load streams --count 100000 --connections 16 --server-pid "$pid") ;;
    esac
    stop
    row "$server" "$workload" "$out"
  done
done
echo
"$bin/fsync_rate" "$work" 5
