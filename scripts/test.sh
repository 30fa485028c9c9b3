#!/usr/bin/env bash
# The project's whole test run: formatting, lints, docs, unit/integration/doc
# tests, and the Durable Streams conformance suite against examples/server in
# every storage mode, including PostgreSQL through a load balancer.
# Needs the Rust toolchain and Node.js (npm); installs the suite's pinned npm
# packages on first use. The PostgreSQL tests use TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/test) and nginx; without them they are
# skipped, and listed at the end, unless CI is set: then they must run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
skipped=()

export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
postgres=yes
if ! (command -v psql >/dev/null && psql "$TEST_POSTGRES_URL" -qAtc 'SELECT 1' >/dev/null 2>&1); then
  postgres=no
  if [ -n "${CI:-}" ]; then
    echo "PostgreSQL at $TEST_POSTGRES_URL is unreachable and CI is set" >&2
    exit 1
  fi
  skipped+=("PostgreSQL tests (tests/postgres.rs, tests/scale_out.rs, tests/postgres_restart.rs) and the postgres conformance runs: start PostgreSQL or set TEST_POSTGRES_URL")
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo check --lib (no optional features, and each backend alone)"
cargo check --lib --no-default-features
cargo check --lib --no-default-features --features postgres
cargo check --lib --no-default-features --features subscriptions

step "cargo doc (warnings denied: broken links, missing docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "cargo test --all-features"
cargo test --all-features
if [ -z "${CI:-}" ] && [ -z "${TEST_POSTGRES_RESTART:-}" ] && [ "$postgres" = yes ]; then
  skipped+=("tests/postgres_restart.rs (restarts the local PostgreSQL cluster): TEST_POSTGRES_RESTART=1 cargo test --all-features --test postgres_restart")
fi

if [ "$(id -u)" != 0 ]; then
  [ -z "${CI:-}" ] || { echo "tests/disk_full.rs mounts a tmpfs and CI must run it as root" >&2; exit 1; }
  skipped+=("tests/disk_full.rs (mounts a small tmpfs to fill it): run the tests as root")
fi

step "fuzz smoke run (each target in fuzz/ for ${FUZZ_SECONDS:-10} s)"
scripts/fuzz.sh "${FUZZ_SECONDS:-10}"

step "conformance suite (npm @durable-streams/server-conformance-tests, pinned)"
if [ ! -d tests/conformance/node_modules/@durable-streams/server-conformance-tests ]; then
  npm ci --prefix tests/conformance --no-audit --no-fund
fi
# Every mode with the subscription APIs on (all 338 tests), and the default
# server once more with them off (332, the six subscription tests skipped).
node tests/conformance/run.mjs memory
for mode in memory file-fast file-durable acid; do
  node tests/conformance/run.mjs "$mode" --subscriptions
done
if [ "$postgres" = yes ]; then
  node tests/conformance/run.mjs postgres --subscriptions
  if command -v nginx >/dev/null; then
    node tests/conformance/run.mjs postgres --instances 2 --subscriptions
  elif [ -n "${CI:-}" ]; then
    echo "nginx is missing and CI is set" >&2
    exit 1
  else
    skipped+=("conformance through nginx with two PostgreSQL instances: install nginx (apt-get install nginx)")
  fi
fi

if [ ${#skipped[@]} -gt 0 ]; then
  printf '\nSkipped on this machine:\n'
  printf -- '- %s\n' "${skipped[@]}"
fi
