#!/usr/bin/env bash
# A PostgreSQL server for the shared services (MLflow backend store, Dagster run/event storage), from Debian's
# packages, bound to 127.0.0.1 only. Idempotent: every subcommand can run again.
#
#   scripts/postgres.sh install   apt-get install postgresql when its binaries are missing (needs root or sudo)
#   scripts/postgres.sh start     install, create the cluster once, start it, create role + databases; prints env
#   scripts/postgres.sh stop      stop the cluster (its data stays)
#   scripts/postgres.sh status    exit 0 and print env when running, 3 when not
#   scripts/postgres.sh env       the connection settings as `export` lines:  eval "$(scripts/postgres.sh env)"
#
# `start` and `env` write only `export ...` lines to stdout (progress goes to stderr), so
# `eval "$(scripts/postgres.sh start)"` sets MUFASA_PG_URL (libpq form, for psql/psycopg2),
# MLFLOW_BACKEND_STORE_URI (SQLAlchemy form: SQLAlchemy >= 2.1 reads a bare postgresql:// as psycopg 3, which is
# not installed, so the driver is named: postgresql+psycopg2://) and DAGSTER_PG_* (deploy/dagster-postgres.yaml).
# Settings (environment, with defaults): MUFASA_PG_PORT=5433 (not 5432: no clash with a system server),
# MUFASA_PG_DIR=${TMPDIR:-/tmp}/mufasa-postgres-<port> (data/, server.log, the unix socket),
# MUFASA_PG_USER=mufasa, MUFASA_PG_PASSWORD=mufasa (letters/digits: it goes into URLs as is),
# MUFASA_PG_DATABASES="mlflow dagster".
set -euo pipefail

PORT="${MUFASA_PG_PORT:-5433}"
BASE="${MUFASA_PG_DIR:-${TMPDIR:-/tmp}/mufasa-postgres-${PORT}}"
DATA="$BASE/data"
LOG="$BASE/server.log"
PG_USER="${MUFASA_PG_USER:-mufasa}"
PG_PASSWORD="${MUFASA_PG_PASSWORD:-mufasa}"
DATABASES="${MUFASA_PG_DATABASES:-mlflow dagster}"
HOST=127.0.0.1

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# The server's binaries (initdb, pg_ctl): Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH.
bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return 0; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
    return 1
}

# initdb and the server refuse to run as root: as root, run them as the `postgres` user the package creates.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

superuser_psql() {
    as_owner "$BIN/psql" -X -q -h "$BASE" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

cmd_install() {
    if bindir >/dev/null; then return 0; fi
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
            || die "PostgreSQL is not installed; as root run: apt-get install -y --no-install-recommends postgresql"
        sudo=(sudo -n)
    fi
    say "installing Debian's postgresql (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
    bindir >/dev/null || die "apt-get installed postgresql but no initdb was found under /usr/lib/postgresql"
}

running() { as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

cmd_env() {
    local url="postgresql://${PG_USER}:${PG_PASSWORD}@${HOST}:${PORT}"
    cat <<EOF
export MUFASA_PG_URL=${url}
export MLFLOW_BACKEND_STORE_URI=${url/postgresql:/postgresql+psycopg2:}/mlflow
export DAGSTER_PG_HOST=${HOST}
export DAGSTER_PG_PORT=${PORT}
export DAGSTER_PG_USERNAME=${PG_USER}
export DAGSTER_PG_PASSWORD=${PG_PASSWORD}
export DAGSTER_PG_DB=dagster
EOF
}

cmd_start() {
    cmd_install
    BIN="$(bindir)"
    if [[ "$(id -u)" == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user to run the server as (is Debian's postgresql installed?)"
        install -d -o postgres -g postgres -m 0755 "$BASE"
    else
        mkdir -p "$BASE"
    fi
    if [[ ! -s "$DATA/PG_VERSION" ]]; then
        say "creating the cluster in $DATA"
        # Superuser `postgres`: trusted on the unix socket in $BASE only; TCP (127.0.0.1) always needs a password.
        as_owner "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        as_owner tee -a "$DATA/postgresql.conf" >/dev/null <<EOF
# MUFASA (scripts/postgres.sh): loopback only, own port and socket folder
listen_addresses = '${HOST}'
port = ${PORT}
unix_socket_directories = '${BASE}'
EOF
    fi
    if running; then
        say "already running (port $PORT, data $DATA)"
    else
        say "starting on ${HOST}:${PORT} (log $LOG)"
        if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "the server did not start (is port $PORT taken? set MUFASA_PG_PORT)"
        fi
    fi
    # Role and databases, created or brought up to date (password) every time.
    superuser_psql -v u="$PG_USER" -v pw="$PG_PASSWORD" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u')
\gexec
ALTER ROLE :"u" WITH LOGIN CREATEDB PASSWORD :'pw';
SQL
    local db
    for db in $DATABASES; do
        superuser_psql -v u="$PG_USER" -v db="$db" >/dev/null <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'u')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL
    done
    say "ready: role $PG_USER, databases: $DATABASES"
    cmd_env
}

cmd_stop() {
    BIN="$(bindir)" || { say "PostgreSQL is not installed: nothing to stop"; return 0; }
    if [[ -s "$DATA/PG_VERSION" ]] && running; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        say "stopped (data kept in $DATA)"
    else
        say "not running"
    fi
}

cmd_status() {
    BIN="$(bindir)" || { say "PostgreSQL is not installed"; return 3; }
    if [[ -s "$DATA/PG_VERSION" ]] && running; then
        say "running on ${HOST}:${PORT} (data $DATA)"
        cmd_env
    else
        say "not running (data $DATA)"
        return 3
    fi
}

case "${1:-start}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) die "usage: $0 [install|start|stop|status|env]" ;;
esac
