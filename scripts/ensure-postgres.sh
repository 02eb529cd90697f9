#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are installed; owsync
# starts its own throwaway servers from them (demo and tests) and never touches a
# system cluster. Installs Debian/Ubuntu's `postgresql` package when they are missing,
# as root or through sudo, without creating or starting the distribution's own cluster.
set -euo pipefail

have_pg() {
  if [[ -n "${OWSYNC_PG_BIN:-}" && -x "$OWSYNC_PG_BIN/initdb" ]]; then return 0; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

if have_pg; then exit 0; fi

echo "PostgreSQL server binaries not found; installing them (apt-get install -y postgresql) ..." >&2
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "error: need root or sudo to install PostgreSQL; run: apt-get install -y postgresql (or set OWSYNC_PG_BIN to a directory with initdb and pg_ctl)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no apt-get here; install PostgreSQL's server binaries yourself and set OWSYNC_PG_BIN to their directory" >&2
  exit 1
fi
# Do not let the package create and start a system cluster on port 5432.
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/owsync-no-main.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq postgresql >/dev/null
have_pg || { echo "error: postgresql installed but initdb still not found" >&2; exit 1; }
echo "PostgreSQL installed: $(ls -d /usr/lib/postgresql/*/bin | tail -1)" >&2
