#!/bin/sh
# owsyncd container entrypoint: secrets come from files (Docker secrets), never argv.
set -eu
: "${OWSYNC_DATABASE_URL_FILE:=/run/secrets/owsync_database_url}"
export OWSYNC_DATABASE_URL_FILE
if [ ! -r "$OWSYNC_DATABASE_URL_FILE" ]; then
  echo "owsync: secret $OWSYNC_DATABASE_URL_FILE is missing or unreadable" >&2
  exit 1
fi
# Optional: migrate first with an admin URL secret (one replica is enough).
if [ -n "${OWSYNC_ADMIN_URL_FILE:-}" ] && [ -r "$OWSYNC_ADMIN_URL_FILE" ]; then
  owsyncctl migrate --admin-url-file "$OWSYNC_ADMIN_URL_FILE" ${OWSYNC_SYNC_PASSWORD_FILE:+--sync-password-file "$OWSYNC_SYNC_PASSWORD_FILE"}
fi
exec owsyncd --listen "${OWSYNC_LISTEN:-0.0.0.0:${OWSYNC_PORT:-9443}}" "$@"
