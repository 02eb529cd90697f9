#!/bin/sh
# owsync container entrypoint.
#
#   (no arguments) or -flags...   run owsyncd (extra flags are passed on, e.g. --node-id X)
#   migrate                       owsyncctl migrate as admin, retried while the database
#                                 comes up (the compose file's one-shot `migrate` service)
#   owsyncctl ... | owsyncd ...   run that binary as is (e.g. `owsyncctl get clients`)
#
# Secrets come only from files (Docker secrets), by path: OWSYNC_DATABASE_URL_FILE,
# OWSYNC_API_TOKEN_FILE, OWSYNC_ADMIN_URL_FILE, OWSYNC_SYNC_PASSWORD_FILE. The binaries
# read those files themselves; this script checks the files exist and are readable,
# and never reads a secret, puts one into argv or the environment, or prints one.
set -eu

log() { echo "owsync-entrypoint: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Secret values in the environment show in `docker inspect` and /proc/*/environ.
for var in OWSYNC_DATABASE_URL DATABASE_URL OWSYNC_ADMIN_URL; do
  eval "value=\${$var:-}"
  if [ -n "$value" ]; then
    case "$var" in
      OWSYNC_ADMIN_URL) instead=OWSYNC_ADMIN_URL_FILE ;;
      *) instead=OWSYNC_DATABASE_URL_FILE ;;
    esac
    die "$var is set; pass the URL as a Docker secret file instead ($instead=/run/secrets/...)"
  fi
done
unset value

# need_file VAR DEFAULT: VAR (or DEFAULT) must name a readable file; exports VAR.
need_file() {
  eval "path=\${$1:-$2}"
  if [ ! -e "$path" ]; then
    die "$1: secret file $path does not exist (declare the secret in the compose file and create the file)"
  fi
  if [ ! -r "$path" ]; then
    die "$1: secret file $path is not readable by uid $(id -u); on the host: chown $(id -u) FILE && chmod 0400 FILE (Compose mounts file secrets with their host owner and mode)"
  fi
  eval "$1=\$path"
  export "${1?}"
}

# optional_file VAR DEFAULT: like need_file, but only when VAR is set or DEFAULT exists.
optional_file() {
  eval "set_value=\${$1:-}"
  if [ -n "$set_value" ] || [ -e "$2" ]; then
    need_file "$1" "$2"
  fi
}

migrate() {
  need_file OWSYNC_ADMIN_URL_FILE /run/secrets/owsync_admin_url
  optional_file OWSYNC_SYNC_PASSWORD_FILE /run/secrets/owsync_sync_password
  attempts="${OWSYNC_MIGRATE_ATTEMPTS:-30}"
  n=1
  # owsyncctl reads OWSYNC_ADMIN_URL_FILE and OWSYNC_SYNC_PASSWORD_FILE from the environment.
  until owsyncctl migrate; do
    if [ "$n" -ge "$attempts" ]; then
      die "migrate failed $n times; giving up"
    fi
    log "migrate failed (attempt $n of $attempts); the database may still be starting; retrying in 2s"
    n=$((n + 1))
    sleep 2
  done
}

case "${1:-}" in
  migrate)
    shift
    migrate
    ;;
  owsyncctl | owsyncd)
    optional_file OWSYNC_DATABASE_URL_FILE /run/secrets/owsync_database_url
    exec "$@"
    ;;
  "" | -*)
    need_file OWSYNC_DATABASE_URL_FILE /run/secrets/owsync_database_url
    optional_file OWSYNC_API_TOKEN_FILE /run/secrets/owsync_api_token
    if [ -z "${OWSYNC_API_TOKEN_FILE:-}" ]; then
      log "no API token secret: PUT /api/v1/state and POST /api/v1/sync/trigger stay disabled"
    fi
    # Optional migrate before starting (single-container setups); both replicas may do
    # it: migrations are idempotent and serialised by an advisory lock.
    if [ "${OWSYNC_MIGRATE_ON_START:-false}" = "true" ]; then
      migrate
    fi
    # owsyncd reads OWSYNC_CLUSTER, OWSYNC_LISTEN, OWSYNC_DATABASE_URL_FILE, ... itself,
    # and retries until the database is reachable.
    exec owsyncd "$@"
    ;;
  *)
    die "unknown command $1 (expected: migrate, owsyncctl ..., owsyncd ..., or owsyncd flags)"
    ;;
esac
