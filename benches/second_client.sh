#!/usr/bin/env bash
# The load tool checked against a second, independent client (docs/benchmarks.md,
# "Two clients, one figure"): the same workloads against the same server run by
# examples/loadgen.rs and by wrk (Debian's package), server pinned to core 0,
# client to core 1, alternating, ROUNDS times:
#   - appends/s: 16 connections, one stream, 1 KiB bodies;
#   - catch-up MB/s: 4 connections reading a stream of CATCHUP_MB MiB (1 by
#     default; 64 is compare.sh's catchup64k) written in 64 KiB appends, from
#     the start (one response each: the whole stream fits one answer).
# Each line carries loadgen's CPU and the server's, and wrk's own CPU (from
# /usr/bin/time); loadgen refuses to report a figure it was the limit of.
# wrk's catch-up figure is requests/s x CATCHUP_MB MiB.
#
#   benches/second_client.sh                        # memory mode, 5 s, 3 rounds
#   MODE=file-durable ROUNDS=2 SECONDS_PER_RUN=10 benches/second_client.sh
#   CATCHUP_MB=64 benches/second_client.sh
#   MODE=official-memory benches/second_client.sh  # the official server (memory, wal)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${MODE:-memory}
secs=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
mb=${CATCHUP_MB:-1}
# As in compare.sh: a fixed 256 KiB send buffer for our server.
export DS_SERVER__SEND_BUFFER_BYTES=${SEND_BUFFER_BYTES:-262144}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset is needed (util-linux)" >&2; exit 1; }
cargo build --quiet --release --features redb,metrics --example server --example loadgen
bin=target/release/examples
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -z "$server_pid" ] || kill -TERM "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

case "$mode" in
  official-*)
    # The official server (benches/servers.sh installs it): the same two
    # clients against it, for the workloads loadgen alone cannot measure.
    official=target/peers/official/bin/durable-streams-server
    [ -x "$official" ] || cargo install --quiet durable-streams --version 0.1.5 --root target/peers/official
    taskset -c 0 "$official" --host 127.0.0.1 --port 4463 --data-dir "$work/data" \
      --durability "${mode#official-}" >"$work/out" 2>"$work/err" &
    server_pid=$!
    url=http://127.0.0.1:4463/v1/stream
    for _ in $(seq 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/__probe" || true)" != 000 ] && break
      sleep 0.1
    done ;;
  *)
    DS_SERVER__HOST=127.0.0.1 DS_SERVER__PORT=0 DS_STORAGE__MODE=$mode \
      DS_STORAGE__DATA_DIR="$work/data" DS_LIMITS__MAX_MEMORY_BYTES=8589934592 RUST_LOG=warn \
      taskset -c 0 "$bin/server" >"$work/out" 2>"$work/err" &
    server_pid=$!
    for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
    url=$(sed -n 's/^listening on \(http:[^ ]*\)\/$/\1/p' "$work/out")
    for _ in $(seq 100); do curl -sf "${url%/v1/stream}/readyz" >/dev/null && break; sleep 0.1; done ;;
esac

# wrk's inputs: a 1 KiB append script, and a 1 MiB stream to read.
cat >"$work/append.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
# The catch-up stream is laid out as loadgen's: appends of 64 KiB (how a
# stream was written decides how its bytes are held, and so the server's
# cost of sending them).
head -c 65536 /dev/zero | tr '\0' 'c' >"$work/chunk"
curl -sf -X PUT -H 'content-type: application/octet-stream' "$url/wrk-catchup" >/dev/null
for _ in $(seq $((mb * 16))); do
  curl -sf -X POST -H 'content-type: application/octet-stream' --data-binary "@$work/chunk" \
    "$url/wrk-catchup" >/dev/null
done

# Runs wrk pinned to core 1 with "$@"; prints its requests/s and its own CPU
# share (user + system over wall time) on one line.
wrk_run() {
  local rps
  rps=$(/usr/bin/time -f '%U %S %e' -o "$work/wrk-time" taskset -c 1 wrk "$@" |
    sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p')
  echo "$rps $(awk '{ printf "%.2f", ($1 + $2) / $3 }' "$work/wrk-time")"
}

echo "| round | workload | loadgen | wrk | wrk / loadgen | loadgen CPU, server CPU | wrk CPU |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
  # A new stream per round for each client, as loadgen makes its own.
  curl -sf -X PUT -H 'content-type: application/octet-stream' "$url/wrk-append-$round" >/dev/null
  lg=$(taskset -c 1 "$bin/loadgen" append --url "$url" --connections 16 --streams 1 \
    --bytes 1024 --seconds "$secs" --server-pid "$server_pid" --json || true)
  wk=$(wrk_run -t1 -c16 -d"${secs}s" -s "$work/append.lua" "$url/wrk-append-$round")
  python3 - "$round" "$lg" "$wk" <<'PY'
import json, sys
r, lg = sys.argv[1], json.loads(sys.argv[2])
wk, wcpu = map(float, sys.argv[3].split())
a, c = lg.get("appends_per_sec"), lg["cpu"]
if a is None:
    print(f"| {r} | appends/s, 16 conns, 1 KiB | refused (tool {c['client_busy']*100:.0f}% busy) | {wk:,.0f} | | | {wcpu*100:.0f}% |")
    sys.exit(0)
print(f"| {r} | appends/s, 16 conns, 1 KiB | {a:,.0f} | {wk:,.0f} | {wk/a:.2f} | {c['client_busy']*100:.0f}%, {c['server_cpu']*100:.0f}% | {wcpu*100:.0f}% |")
PY
  lg=$(taskset -c 1 "$bin/loadgen" catchup --url "$url" --megabytes "$mb" --append-bytes 65536 \
    --readers 4 --seconds "$secs" --server-pid "$server_pid" --json || true)
  wk=$(wrk_run -t1 -c4 -d"${secs}s" "$url/wrk-catchup?offset=-1")
  python3 - "$round" "$lg" "$wk" "$mb" <<'PY'
import json, sys
r, lg = sys.argv[1], json.loads(sys.argv[2])
rps, wcpu = map(float, sys.argv[3].split())
mb = int(sys.argv[4])
wk = rps * mb * 1048576 / 1e6
m, c = lg.get("mb_per_sec"), lg["cpu"]
if m is None:
    print(f"| {r} | catch-up MB/s, 4 conns, {mb} MiB | refused (tool {c['client_busy']*100:.0f}% busy) | {wk:,.0f} | | | {wcpu*100:.0f}% |")
    sys.exit(0)
print(f"| {r} | catch-up MB/s, 4 conns, {mb} MiB | {m:,.0f} | {wk:,.0f} | {wk/m:.2f} | {c['client_busy']*100:.0f}%, {c['server_cpu']*100:.0f}% | {wcpu*100:.0f}% |")
PY
done
