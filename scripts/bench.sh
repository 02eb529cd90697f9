#!/usr/bin/env bash
# Runs the sync benchmark (benches/sync/main.rs and its modules) and updates BENCHMARKS.md.
#
#   scripts/bench.sh                    # 10k chats (100 users x 100 chats x 6 messages), ~10 min
#   scripts/bench.sh --chats 100000     # the 100k-chat size of issue 3
#   scripts/bench.sh --help             # every option of the bench
#
# Installs what the bench needs when it is missing (Debian/Ubuntu, as root or via sudo):
# PostgreSQL's server binaries (through scripts/ensure-deps.sh, which keeps apt from
# creating a system cluster), pgloader and GNU time. Builds with the release profile
# first (`cargo bench --no-run`), then runs `cargo bench --bench sync -- "$@"`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-deps.sh postgres

missing=()
command -v pgloader >/dev/null 2>&1 || missing+=(pgloader)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (apt-get install -y ${missing[*]}) ..." >&2
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo bench --bench sync --no-run
exec cargo bench --bench sync -- "$@"
