#!/usr/bin/env bash
# Appends/s with 0 and with 1,000 subscriptions defined that match nothing the
# load writes (patterns tenant-<i>/**), and with one more that does match
# (a pull-wake subscription with pattern `*`, woken by the first append and
# never claimed, so its wake stays out): a fresh example server for each run,
# the three taking turns, ROUNDS times (default 3); memory mode with 8
# connections (the load tool stays under its 85 % limit) and file-durable with
# 16. Server on core 0, examples/loadgen on core 1.
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
cargo build --quiet --release --all-features --example server --example loadgen || exit 1
bin=target/release/examples
for i in $(seq 1000); do
  printf 'url = "http://127.0.0.1:PORT/v1/stream/__ds/subscriptions/s%d"\nrequest = "PUT"\nheader = "content-type: application/json"\ndata = "{\\"type\\":\\"pull-wake\\",\\"pattern\\":\\"tenant-%d/**\\",\\"wake_stream\\":\\"wake/t%d\\"}"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nnext\n' $i $i $i
done > /tmp/subs.tmpl
sed -i '$ d' /tmp/subs.tmpl
run() { # $1 mode, $2 subscriptions (0, 1000, or 1001: one of them matching)
  local port=4473 data=/tmp/subbench-data
  rm -rf $data; mkdir -p $data
  DS_SERVER__SEND_BUFFER_BYTES=262144 DS_SERVER__PORT=$port DS_STORAGE__MODE=$1 DS_STORAGE__DATA_DIR=$data \
    DS_SUBSCRIPTIONS__ENABLED=true RUST_LOG=error taskset -c 0 $bin/server > /tmp/srv-bench.log 2>&1 &
  local pid=$!
  sleep 1
  created=0
  if [ "$2" -ge 1000 ]; then
    sed "s/PORT/$port/" /tmp/subs.tmpl > /tmp/subs.cfg
    created=$(curl -s -K /tmp/subs.cfg | grep -c 201)
  fi
  if [ "$2" = 1001 ]; then
    curl -s -o /dev/null -X PUT -H 'content-type: application/json' -d '[]' \
      http://127.0.0.1:$port/v1/stream/wake/matching
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'content-type: application/json' \
      -d '{"type":"pull-wake","pattern":"*","wake_stream":"wake/matching"}' \
      http://127.0.0.1:$port/v1/stream/__ds/subscriptions/matching)
    [ "$code" = 201 ] && created=$((created + 1))
  fi
  r=$(taskset -c 1 $bin/loadgen append --url http://127.0.0.1:$port/v1/stream --connections $3 --streams 1 --bytes 1024 --seconds 5 --server-pid $pid 2>&1 | tail -1)
  local woken=""
  if [ "$2" = 1001 ]; then
    woken=" wake events=$(curl -s "http://127.0.0.1:$port/v1/stream/wake/matching?offset=-1" | grep -o '"type":"wake"' | wc -l)"
  fi
  echo "$1 subs=$created$woken conns=$3: $(echo "$r" | grep -o '= [0-9]*/s'), $(echo "$r" | grep -o 'p99 [0-9.]*[µm]s'), $(echo "$r" | grep -o 'errors [0-9]*'), $(echo "$r" | grep -o 'load tool CPU [0-9]*%'), $(echo "$r" | grep -o 'server CPU [0-9]*%') $(echo "$r" | grep -o 'REFUSED.*busy')"
  kill $pid; wait $pid 2>/dev/null
}
for round in $(seq "$rounds"); do
  echo "round $round"
  for subs in 0 1000 1001; do run memory $subs 8; done
  for subs in 0 1000 1001; do run file-durable $subs 16; done
done
