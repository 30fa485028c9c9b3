#!/usr/bin/env bash
# CPU time per request of each server under one load, split into user space
# and kernel, read from /proc/<pid>/stat around the run. This says where a
# server's time goes when it is the bottleneck: the kernel's TCP work is the
# same for every server, user-space time is what the HTTP stack and the
# server add. Same servers and pinning as benches/compare.sh.
#
#   benches/cpu.sh                              # append16 on the usual four
#   ROUNDS=3 SERVERS="ours-memory official-memory" benches/cpu.sh append --connections 64 --streams 64 --bytes 1024 --seconds 5
#   benches/cpu.sh fanout --subscribers 1000 --rate 20 --seconds 5 --mode sse
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-2}
servers=${SERVERS:-"bare-hyper ours-memory official-memory"}
[ $# -gt 0 ] || set -- append --connections 16 --streams 1 --bytes 1024 --seconds 5
# shellcheck source=benches/servers.sh
. benches/servers.sh

cargo build --quiet --release --features redb,metrics \
  --example server --example loadgen --example bare_hyper
bin=target/release/examples
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

ticks() { awk '{print $14, $15}' "/proc/$pid/stat"; }

for round in $(seq "$rounds"); do
  for server in $servers; do
    need "$server"
    start "$server"
    before=$(ticks)
    out=$("${pin_load[@]}" "$bin/loadgen" "$@" --url "$url" --json 2>>"$work/load.err" | tail -1 || true)
    after=$(ticks)
    stop
    python3 - "$server" "$out" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json, sys
server, out, before, after, hz = sys.argv[1:]
try:
    r = json.loads(out)
except Exception:
    print(f"{server:18} failed"); sys.exit()
(u0, k0), (u1, k1) = (map(int, before.split()), map(int, after.split()))
n = r.get("appends") or r.get("deliveries") or 0
rate = f"{r['appends_per_sec']:9.0f} appends/s" if "appends_per_sec" in r else f"p99 {r.get('p99_ms', 0):6.1f} ms"
per = lambda t: (t / int(hz)) / max(n, 1) * 1e6
print(f"{server:18} {rate}  user {per(u1 - u0):5.2f} us  kernel {per(k1 - k0):5.2f} us  per {'append' if 'appends' in r else 'delivery'}")
PY
  done
done
