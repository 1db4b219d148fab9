#!/usr/bin/env bash
# Start a throwaway local PostgreSQL server for the corrections-store tests.
#
#   eval "$(bash .ci/postgres.sh)"      # or:  source .ci/postgres.sh
#
# Installs PostgreSQL with apt-get when missing (needs root), runs a private cluster owned by the
# `postgres` OS user in $EMODEMO_PG_DIR (default /tmp/emodemo-pg), listening on 127.0.0.1 only
# (port $EMODEMO_PG_PORT, default 5432), creates role/database emodemo/emodemo_test and prints
#
#   export EMODEMO_TEST_PG_URL=postgresql+psycopg://emodemo:emodemo@127.0.0.1:5432/emodemo_test
#
# on stdout (appended to $GITHUB_ENV as well when that is set). Idempotent: a second run reuses
# the running server. It never fails the caller: when PostgreSQL cannot be set up it prints
#
#   export EMODEMO_TEST_PG_SKIP_REASON='...'
#
# instead, and the PostgreSQL tests skip with that reason. Progress goes to stderr.

_emodemo_pg_main() {
    local port="${EMODEMO_PG_PORT:-5432}"
    local dir="${EMODEMO_PG_DIR:-/tmp/emodemo-pg}"
    local user=emodemo pass=emodemo db=emodemo_test
    local url="postgresql+psycopg://${user}:${pass}@127.0.0.1:${port}/${db}"
    local data="$dir/data" sock="$dir/run" log="$dir/server.log"

    _say() { echo "postgres.sh: $*" >&2; }
    _skip() {
        _say "PostgreSQL unavailable: $1"
        printf "export EMODEMO_TEST_PG_SKIP_REASON=%q\n" "postgres.sh: $1"
        if [ -n "${GITHUB_ENV:-}" ]; then
            echo "EMODEMO_TEST_PG_SKIP_REASON=postgres.sh: $1" | tr -d '\r' | head -n 1 >> "$GITHUB_ENV"
        fi
        return 0
    }
    _as_pg() {  # run a command as the postgres OS user
        if [ "$(id -un)" = postgres ]; then "$@"
        elif command -v runuser >/dev/null 2>&1; then runuser -u postgres -- "$@"
        else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    }

    if [ -n "${EMODEMO_TEST_PG_URL:-}" ]; then  # the caller brought its own server
        _say "using the given EMODEMO_TEST_PG_URL"
        printf "export EMODEMO_TEST_PG_URL=%q\n" "$EMODEMO_TEST_PG_URL"
        return 0
    fi

    # 1. binaries (install when missing)
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            _skip "PostgreSQL is not installed and apt-get as root is not available"; return 0
        fi
        _say "installing postgresql with apt-get ..."
        export DEBIAN_FRONTEND=noninteractive
        if ! timeout 900 apt-get install -y -q --no-install-recommends postgresql >&2; then
            timeout 600 apt-get update -q >&2 || true
            timeout 900 apt-get install -y -q --no-install-recommends postgresql >&2 || {
                _skip "apt-get install postgresql failed"; return 0; }
        fi
        bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$bin" ] && [ -x "$bin/initdb" ] || { _skip "initdb not found after install"; return 0; }
    fi
    if ! id postgres >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            useradd --system --home-dir "$dir" --shell /bin/sh postgres >&2 || {
                _skip "cannot create the postgres OS user"; return 0; }
        else
            _skip "there is no postgres OS user to run the server"; return 0
        fi
    fi
    if [ "$(id -u)" != 0 ] && [ "$(id -un)" != postgres ]; then
        _skip "run as root (or as postgres) to start the server"; return 0
    fi

    # 2. cluster (create once) and server (start unless running)
    mkdir -p "$dir" "$sock" && chown postgres: "$dir" "$sock" && chmod 700 "$dir" || {
        _skip "cannot create $dir"; return 0; }
    if [ ! -s "$data/PG_VERSION" ]; then
        _say "initdb in $data"
        rm -rf "$data"
        _as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >&2 2>&1 \
          || _as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=peer \
                --auth-host=scram-sha-256 -E UTF8 --no-locale >&2 2>&1 \
          || { _skip "initdb failed"; return 0; }
    fi
    if ! _as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        _say "starting PostgreSQL on 127.0.0.1:$port"
        _as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2 \
          || { _skip "the server did not start (port $port busy?); see $log: $(tail -n 3 "$log" 2>/dev/null | tr '\n' ' ')"; return 0; }
    fi

    # 3. role and database (idempotent)
    local psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres)
    _as_pg "${psql[@]}" >&2 <<SQL || { _skip "cannot reach the server in $dir on port $port as postgres (another EMODEMO_PG_PORT earlier?)"; return 0; }
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${user}') THEN
    CREATE ROLE ${user} LOGIN PASSWORD '${pass}';
  ELSE
    ALTER ROLE ${user} LOGIN PASSWORD '${pass}';
  END IF;
END \$\$;
SQL
    if [ "$(_as_pg "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'")" != 1 ]; then
        _as_pg "${psql[@]}" -c "CREATE DATABASE ${db} OWNER ${user} ENCODING 'UTF8' TEMPLATE template0" >&2 \
            || { _skip "creating database ${db} failed"; return 0; }
    fi

    # 4. check the URL really works over TCP with the password
    if ! PGPASSWORD="$pass" "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U "$user" -d "$db" \
            -tAc "SELECT 1" >/dev/null 2>&1; then
        _skip "cannot log in as ${user} on 127.0.0.1:${port}"; return 0
    fi
    _say "ready: $url"
    echo "export EMODEMO_TEST_PG_URL=$url"
    if [ -n "${GITHUB_ENV:-}" ]; then echo "EMODEMO_TEST_PG_URL=$url" >> "$GITHUB_ENV"; fi
    return 0
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # sourced: set the variable in the caller's shell; never `exit` or leave `set -e` traps behind
    eval "$(_emodemo_pg_main)" || true
    unset -f _emodemo_pg_main _say _skip _as_pg 2>/dev/null
    return 0 2>/dev/null || true
else
    _emodemo_pg_main || true
    exit 0
fi
