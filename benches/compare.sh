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
#   ROUNDS=3 benches/compare.sh                 # median of 3 alternating rounds
#
# The raw results, the table and SVG charts of it (benches/charts.py) are kept
# in target/bench/<time>/ (or $RESULTS).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-1}
servers=${SERVERS:-"bare-hyper ours-memory ours-file-fast ours-file-durable ours-acid official-memory official-wal community-memory community-file-durable community-acid node-memory"}
workloads=${WORKLOADS:-"append16 append64 catchup64k catchup1k fanout-sse fanout-long-poll streams"}
# shellcheck source=benches/servers.sh
. benches/servers.sh

cargo build --quiet --release --features redb,metrics \
  --example server --example loadgen --example bare_hyper --example fsync_rate
bin=target/release/examples
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# Each run's raw results, its table and its charts are kept here.
keep=${RESULTS:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$keep"

load() { "${pin_load[@]}" "$bin/loadgen" "$@" --url "$url" --json 2>>"$work/load.err" || true; }

# Prints the table row of server $1, workload $2 from the result files $3...:
# the round with the median primary figure (the better middle one of an even
# count), and the range over the rounds.
row() {
  python3 - "$@" <<'PY'
import json, sys
server, workload, files = sys.argv[1], sys.argv[2], sys.argv[3:]
runs, failed = [], 0
for f in files:
    try:
        runs.append(json.loads(open(f).read().strip().splitlines()[-1]))
    except Exception:
        failed += 1
if not runs:
    print(f"| {server} | {workload} | failed | | | |"); sys.exit()
w = runs[0]["workload"]
key, fmt = {
    "append": ("appends_per_sec", "{:.0f} appends/s"),
    "catchup": ("mb_per_sec", "{:.0f} MB/s"),
    "fanout": ("p99_ms", "{:.1f} ms p99"),
    "streams": ("creates_per_sec", "{:.0f} creates/s"),
}[w]
refused = [x for x in runs if key not in x]
runs = [x for x in runs if key in x]
if not runs:
    busy = max((x.get("cpu") or {}).get("client_busy", 0) for x in refused)
    print(f"| {server} | {workload} | refused | | | the load tool was the limit ({busy*100:.0f}% of its core busy) |"); sys.exit()
failed += len(refused)
runs.sort(key=lambda r: r[key])
r = runs[(len(runs) - 1) // 2] if w == "fanout" else runs[len(runs) // 2]
spread = ""
if len(files) > 1:
    lo, hi = fmt.format(runs[0][key]), fmt.format(runs[-1][key])
    which = "median" if len(runs) % 2 else "better middle"
    spread = f"; {which} of {len(files)} rounds ({lo} to {hi}"
    spread += f", {failed} failed)" if failed else ")"
cpu = r.get("cpu") or {}
cpu_note = ""
if cpu:
    cpu_note = f"; load tool CPU {cpu['client_busy']*100:.0f}%"
    if cpu.get("server_cpu") is not None:
        cpu_note += f", server CPU {cpu['server_cpu']*100:.0f}%"
        if w == "catchup" and cpu["server_cpu"] > 0:
            cpu_note += f" ({r['mb_per_sec']/cpu['server_cpu']:.0f} MB per server CPU-second)"
    if cpu.get("refused"):
        cpu_note += " (REFUSED: the load tool was the limit)"
if w == "append":
    errors = sum(x["errors"] for x in runs)
    print(f"| {server} | {workload} | {r['appends_per_sec']:.0f} appends/s | {r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms | errors {errors}{cpu_note}{spread} |")
elif w == "catchup":
    errors = sum(x["errors"] for x in runs)
    print(f"| {server} | {workload} | {r['mb_per_sec']:.0f} MB/s | {r['read_p50_ms']:.1f} ms | {r['read_p99_ms']:.1f} ms | errors {errors}{cpu_note}{spread} |")
elif w == "fanout":
    bad = [x for x in runs if not x["every_message_delivered_once_in_order"]]
    ok = "all delivered once, in order" if not bad else "; ".join(
        f"LOST {x['lost']}, reordered {x['out_of_order']}, failed {x['failed_subscribers']}" for x in bad)
    idle = r.get('rss_bytes_per_idle_subscriber')
    idle = f"; {idle/1024:.1f} KiB RSS per idle subscriber" if idle is not None else ""
    print(f"| {server} | {workload} | {r['deliveries']} deliveries | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {ok}{idle}{cpu_note}{spread} |")
elif w == "streams":
    errors = sum(x["errors"] for x in runs)
    rss = r.get('server_rss_bytes'); fds = r.get('server_fds'); per = r.get('rss_bytes_per_stream')
    print(f"| {server} | {workload} | {r['creates_per_sec']:.0f} creates/s | | | errors {errors}; RSS {rss/1048576 if rss else 0:.0f} MiB ({per or 0:.0f} B/stream), {fds} fds{spread} |")
PY
}

results="$keep/raw"
mkdir -p "$results"
# Rounds alternate the servers, so a noisy minute on a shared machine lands
# on every server alike; each row is the median round.
for round in $(seq "$rounds"); do
  for server in $servers; do
    need "$server"
    for workload in $workloads; do
      if [ "$server" = bare-hyper ] && [[ "$workload" != append* && "$workload" != catchup* && "$workload" != fanout-sse ]]; then continue; fi
      start "$server"
      case "$workload" in
        append16) out=$(load append --connections 16 --streams 1 --bytes 1024 --seconds "$secs") ;;
        append64) out=$(load append --connections 64 --streams 64 --bytes 1024 --seconds "$secs") ;;
        catchup64k) out=$(load catchup --megabytes 64 --append-bytes 65536 --readers 4 --seconds "$secs" --server-pid "$pid") ;;
        catchup1k) out=$(load catchup --megabytes 16 --append-bytes 1024 --readers 4 --seconds "$secs" --server-pid "$pid") ;;
        fanout-sse) out=$(load fanout --subscribers 1000 --rate 20 --seconds "$secs" --mode sse --server-pid "$pid") ;;
        fanout-long-poll) out=$(load fanout --subscribers 1000 --rate 20 --seconds "$secs" --mode long-poll --server-pid "$pid") ;;
        streams) out=$(load streams --count 100000 --connections 16 --server-pid "$pid") ;;
      esac
      stop
      printf '%s\n' "$out" >"$results/$server.$workload.$round"
    done
  done
  echo "round $round of $rounds done" >&2
done

{
  echo "| server | workload | result | p50 | p99 | notes |"
  echo "|---|---|---|---|---|---|"
  for server in $servers; do
    for workload in $workloads; do
      if [ "$server" = bare-hyper ] && [[ "$workload" != append* && "$workload" != catchup* && "$workload" != fanout-sse ]]; then continue; fi
      row "$server" "$workload" "$results/$server.$workload".*
    done
  done
} | tee "$keep/results.md"
python3 benches/charts.py "$keep/results.md" "$keep/charts" >&2
echo "raw results, table and charts: $keep" >&2
echo
"$bin/fsync_rate" "$work" 5
