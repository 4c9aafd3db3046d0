#!/bin/sh
# The official postgres image's first-start contract: an empty PGDATA becomes a cluster whose superuser is
# POSTGRES_USER (password POSTGRES_PASSWORD) with the database POSTGRES_DB, initdb given POSTGRES_INITDB_ARGS
# (here by default: trust on the socket, scram-sha-256 over TCP; the args override them); then, on a server that
# listens on the socket only, the files of /docker-entrypoint-initdb.d in name order (*.sql through psql as
# POSTGRES_USER, *.sh run if executable, else sourced); then the command.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_INITDB_ARGS:=}"
INITDB_D=/docker-entrypoint-initdb.d
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required to create the cluster}"
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # shellcheck disable=SC2086  # the args are words, as the official image splits them
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 $POSTGRES_INITDB_ARGS >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    if [ -n "$(ls -A "$INITDB_D" 2>/dev/null)" ]; then
        # No TCP until the scripts are done: a health check over TCP (pg_isready -h 127.0.0.1) passes only after.
        pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
        for file in "$INITDB_D"/*; do
            case "$file" in
                *.sql)
                    echo "$0: running $file" >&2
                    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" \
                        --file="$file"
                    ;;
                *.sh)
                    echo "$0: running $file" >&2
                    # shellcheck disable=SC1090  # the image's user supplies them
                    if [ -x "$file" ]; then "$file"; else . "$file"; fi
                    ;;
                *) echo "$0: ignoring $file" >&2 ;;
            esac
        done
        pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    fi
    echo "$0: created the cluster in $PGDATA (database $POSTGRES_DB, superuser $POSTGRES_USER)" >&2
fi
exec "$@"
