# Shared by benches/compare.sh and benches/cpu.sh: installs the peers on
# demand and starts and stops one server at a time on 127.0.0.1:4461, pinned
# with taskset. The caller sets $work (a scratch directory) and $bin.
peers=target/peers
pin_server=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0) pin_load=(taskset -c 1)
fi

# Installs what server $1 needs (the peers) if it is missing.
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

# Our servers and the bare-hyper ceiling get a fixed 256 KiB send buffer, as
# the official server fixes its own (64 KiB); SEND_BUFFER_BYTES=0 measures
# them with the kernel's autotuning instead.
export DS_SERVER__SEND_BUFFER_BYTES=${SEND_BUFFER_BYTES:-262144}

# Starts server $1; sets $url and $pid.
start() {
  local name=$1 data="$work/data-$1" port=4461
  rm -rf "$data" && mkdir -p "$data" # every run starts from empty storage
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

