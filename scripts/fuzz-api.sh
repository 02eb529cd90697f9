#!/usr/bin/env bash
# Fuzzes owsyncd's HTTP API from its own OpenAPI document (GET /openapi.json) with
# schemathesis (PyPI), installed into a virtualenv under target/ (never system-wide).
#
#   scripts/fuzz-api.sh --install
#       install schemathesis into target/fuzz-venv if it is missing (idempotent) and
#       print the path of its `st` command; tests/api_fuzz.rs runs this when needed
#   scripts/fuzz-api.sh http://127.0.0.1:9443 [extra `st run` flags...]
#       fuzz a running owsyncd; the bearer token for the mutating endpoints comes from
#       the file in OWSYNC_API_TOKEN_FILE (passed to schemathesis through the
#       environment and a config file, never in argv). Fails on any 5xx answer.
#
# Needs python3 with the venv module (Debian: apt-get install -y python3-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5" # the CLI flags below are checked against this version
VENV="${OWSYNC_FUZZ_VENV:-target/fuzz-venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
ST="$VENV/bin/st"

install() {
  if [[ -x "$ST" ]] && "$ST" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    return 0
  fi
  command -v python3 >/dev/null || { echo "error: python3 not found (apt-get install -y python3 python3-venv)" >&2; exit 1; }
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV ..." >&2
  python3 -m venv "$VENV" || {
    echo "error: python3 -m venv failed; on Debian/Ubuntu: apt-get install -y python3-venv" >&2
    exit 1
  }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  "$ST" --version >&2
}

case "${1:-}" in
  --install)
    install
    echo "$ST"
    ;;
  http://* | https://*)
    base="${1%/}"
    shift
    install
    cfg="$(mktemp -d)"
    trap 'rm -rf "$cfg"' EXIT
    if [[ -n "${OWSYNC_API_TOKEN_FILE:-}" ]]; then
      OWSYNC_FUZZ_TOKEN="$(tr -d '\r\n' <"$OWSYNC_API_TOKEN_FILE")"
      export OWSYNC_FUZZ_TOKEN
      printf '[headers]\nAuthorization = "Bearer ${OWSYNC_FUZZ_TOKEN}"\n' >"$cfg/schemathesis.toml"
    else
      echo "note: OWSYNC_API_TOKEN_FILE is not set: mutating endpoints will answer 401/403" >&2
      : >"$cfg/schemathesis.toml"
    fi
    # schemathesis keeps its replay files in the working directory: keep them under target/.
    mkdir -p target/fuzz-work
    cd target/fuzz-work
    "$ST" --config-file "$cfg/schemathesis.toml" run "$base/openapi.json" \
      --checks not_a_server_error --max-examples "${OWSYNC_FUZZ_EXAMPLES:-100}" \
      --max-time "${OWSYNC_FUZZ_MAX_TIME:-60}" --request-timeout 10 --no-color "$@"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
