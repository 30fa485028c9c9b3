#!/usr/bin/env bash
# What a subscription with many links costs over PostgreSQL: 2,000 streams
# in a fresh schema, a pull-wake subscription whose pattern links them all
# at creation (back-fill), then 5 rounds of append + claim + ack, each timed
# by curl. Every claim and ack decision reads the tails of all 2,000 links.
# Usage: benches/subscription_links.sh SERVER_BINARY LABEL, where
# SERVER_BINARY is examples/server built with --all-features. Needs
# PostgreSQL at 127.0.0.1:5432 (trust auth, database test), psql and curl.
set -u
bin=$1; label=$2; port=4491; schema="linkbench_$RANDOM"
psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
DS_SERVER__PORT=$port DS_STORAGE__MODE=postgres DS_STORAGE__POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
  DS_STORAGE__POSTGRES_SCHEMA=$schema DS_SUBSCRIPTIONS__ENABLED=true RUST_LOG=error $bin > /tmp/linkbench-srv.log 2>&1 &
pid=$!; sleep 2
base=http://127.0.0.1:$port/v1/stream
for i in $(seq 2000); do printf 'url = "%s/jobs/%d"\nrequest = "PUT"\nheader = "content-type: application/json"\ndata = "{\\"n\\":1}"\noutput = "/dev/null"\nnext\n' $base $i; done > /tmp/lb.cfg
sed -i '$ d' /tmp/lb.cfg
curl -s -K /tmp/lb.cfg
curl -s -o /dev/null -X PUT -H 'content-type: application/json' -d '[]' $base/wake/lb
t=$(curl -s -o /tmp/lb-put.json -w '%{time_total}' -X PUT -H 'content-type: application/json' \
  -d '{"type":"pull-wake","pattern":"jobs/*","wake_stream":"wake/lb"}' $base/__ds/subscriptions/lb)
links=$(grep -o '"path"' /tmp/lb-put.json | wc -l)
echo "$label: PUT with back-fill of $links links: ${t}s"
for r in 1 2 3 4 5; do
  curl -s -o /dev/null -X POST -H 'content-type: application/json' -d "{\"r\":$r}" $base/jobs/$r
  sleep 0.3
  out=$(curl -s -w ' %{time_total}' -X POST -H 'content-type: application/json' -d '{"worker":"w"}' $base/__ds/subscriptions/lb/claim)
  ct=${out##* }; body=${out% *}
  token=$(echo "$body" | python3 -c 'import sys,json; print(json.load(sys.stdin)["token"])' 2>/dev/null)
  wake=$(echo "$body" | python3 -c 'import sys,json; d=json.load(sys.stdin); print(d["wake_id"], d["generation"], [s for s in d["streams"] if s["path"]=="jobs/'$r'"][0]["tail_offset"])' 2>/dev/null)
  set -- $wake
  at=$(curl -s -o /dev/null -w '%{time_total}' -X POST -H 'content-type: application/json' -H "authorization: Bearer $token" \
    -d "{\"wake_id\":\"$1\",\"generation\":$2,\"acks\":[{\"stream\":\"jobs/$r\",\"offset\":\"$3\"}],\"done\":true}" $base/__ds/subscriptions/lb/ack)
  echo "$label: round $r claim ${ct}s ack ${at}s"
done
kill $pid; wait $pid 2>/dev/null
psql -h 127.0.0.1 -U postgres -d test -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
