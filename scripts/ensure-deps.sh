#!/usr/bin/env bash
# Makes sure the system tools owsync's demo and tests use are installed:
#   postgres  PostgreSQL's server binaries (initdb, pg_ctl, postgres): owsync starts its
#             own throwaway servers from them and never touches a system cluster
#   sqldiff   Debian's sqlite3-tools (the restore test compares databases with it)
#   pgbouncer PgBouncer (the connection tests put it in front of PostgreSQL)
#   venv      Python's venv module (the API fuzz test installs schemathesis into one)
#   promtool  Prometheus' promtool, from Debian's prometheus package (tests/monitoring.rs
#             checks and unit-tests the alert rules with it)
# Installs the missing Debian/Ubuntu packages as root or through sudo, without letting
# the postgresql package create and start a system cluster.
# Usage: scripts/ensure-deps.sh postgres [sqldiff] [pgbouncer] [venv] [promtool]
set -euo pipefail

have_pg() {
  if [[ -n "${OWSYNC_PG_BIN:-}" && -x "$OWSYNC_PG_BIN/initdb" ]]; then return 0; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

packages=()
for want in "$@"; do
  case "$want" in
    postgres) have_pg || packages+=(postgresql) ;;
    sqldiff) command -v sqldiff >/dev/null 2>&1 || packages+=(sqlite3-tools) ;;
    pgbouncer) command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || packages+=(pgbouncer) ;;
    venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv) ;;
    promtool) command -v promtool >/dev/null 2>&1 || packages+=(prometheus) ;;
    *) echo "ensure-deps: unknown tool $want" >&2; exit 2 ;;
  esac
done
((${#packages[@]})) || exit 0

echo "installing ${packages[*]} (apt-get install -y ${packages[*]}) ..." >&2
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "error: need root or sudo to install ${packages[*]}; run: apt-get install -y ${packages[*]} (or set OWSYNC_PG_BIN to a directory with initdb and pg_ctl)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install ${packages[*]} yourself (for PostgreSQL, set OWSYNC_PG_BIN to the directory of initdb)" >&2
  exit 1
fi
# Do not let the postgresql package create and start a system cluster on port 5432.
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/owsync-no-main.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq "${packages[@]}" >/dev/null
for want in "$@"; do
  case "$want" in
    postgres) have_pg || { echo "error: postgresql installed but initdb still not found" >&2; exit 1; } ;;
    sqldiff) command -v sqldiff >/dev/null || { echo "error: sqlite3-tools installed but sqldiff not found" >&2; exit 1; } ;;
    pgbouncer) command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || { echo "error: pgbouncer not found after install" >&2; exit 1; } ;;
    promtool) command -v promtool >/dev/null || { echo "error: prometheus installed but promtool not found" >&2; exit 1; } ;;
  esac
done
echo "installed ${packages[*]}" >&2
