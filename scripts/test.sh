#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests against throwaway PostgreSQL
# servers that the tests start and stop themselves (one per test binary).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
scripts/ensure-deps.sh postgres sqldiff pgbouncer venv pg17 promtool
start=$(date +%s)
cargo build --quiet --all-targets
cargo test --all-targets "$@"
echo "test suite finished in $(( $(date +%s) - start ))s" >&2
