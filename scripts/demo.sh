#!/usr/bin/env bash
# The embedded default: a throwaway local PostgreSQL, a generated Open WebUI tenant, its
# ClientSync applied and a real owsyncd syncing it; then the API stays up on
# 127.0.0.1:9443 until Ctrl-C. Pass --exit-after-sync to stop after the first sync.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
scripts/ensure-deps.sh postgres
echo "building owsync (first build takes a few minutes) ..." >&2
cargo build --quiet --bins
exec target/debug/owsyncctl demo "$@"
