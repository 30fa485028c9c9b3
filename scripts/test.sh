#!/usr/bin/env bash
# The project's whole test run: formatting, lints, unit/integration/doc tests,
# and the Durable Streams conformance suite against examples/server.
# Needs only the Rust toolchain and Node.js (npm); installs the suite's pinned
# npm packages on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo check --lib (no optional features)"
cargo check --lib --no-default-features

step "cargo doc (warnings denied: broken links, missing docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "cargo test --all-features"
cargo test --all-features

step "conformance suite (npm @durable-streams/server-conformance-tests, pinned)"
if [ ! -d tests/conformance/node_modules/@durable-streams/server-conformance-tests ]; then
  npm ci --prefix tests/conformance --no-audit --no-fund
fi
for mode in memory file-fast file-durable acid; do
  node tests/conformance/run.mjs "$mode"
done
