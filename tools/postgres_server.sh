#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1 for the tests of an `mlflow server` on PostgreSQL
# (tests/test_tracking_server.py, tests/test_slurm.py) and CI: Debian's postgresql package, its own
# database cluster in its own folder, no systemd.
#
#   tools/postgres_server.sh start     install what is missing, make the cluster, start the server
#   tools/postgres_server.sh restart [SECONDS]
#                                      stop it as a crash does (`pg_ctl -m immediate`), start it
#                                      again (after SECONDS, default 0): the tests' outage
#   tools/postgres_server.sh stop      stop the server this script started
#
# Run as root (the server runs as the `postgres` user). It listens on 127.0.0.1, port
# $SSL_REPRO_POSTGRES_PORT (5433), and has one role, ssl_repro, that may create databases: each
# test makes its own. The URL of that role is written to $STATE/url, where the tests read it.
# A test cluster: not for production (a known password, on loopback only).
set -euo pipefail

STATE=${SSL_REPRO_POSTGRES_DIR:-/var/tmp/ssl-repro-postgres}   # data, socket, log, url
PORT=${SSL_REPRO_POSTGRES_PORT:-5433}
ROLE=ssl_repro
say() { printf '[postgres_server] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }
as_postgres() { runuser -u postgres -- "$@"; }

install_packages() {
    [[ -n $(bindir) && -x $(bindir)/initdb ]] && return 0
    say "installing postgresql"
    # its postinst cannot start the service without systemd: harmless, this script starts its own
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null
}

make_cluster() {
    [[ -s $STATE/data/PG_VERSION ]] && return 0
    install -d -o postgres -g postgres -m 0700 "$STATE/data"
    as_postgres "$(bindir)/initdb" -D "$STATE/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$STATE/data/postgresql.conf" <<EOF
# tools/postgres_server.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$STATE/socket'
max_connections = 300
EOF
    say "made the cluster in $STATE/data"
}

pg() { as_postgres "$(bindir)/pg_ctl" -D "$STATE/data" -l "$STATE/log/postgres.log" "$@"; }

start() {
    install_packages
    install -d -m 0755 "$STATE"
    install -d -o postgres -g postgres -m 0755 "$STATE/socket" "$STATE/log"
    make_cluster
    pg status >/dev/null 2>&1 || pg -w -t 60 start >/dev/null \
        || die "the server did not start (see $STATE/log/postgres.log)"
    as_postgres "$(bindir)/psql" -h "$STATE/socket" -p "$PORT" -U postgres -q -v ON_ERROR_STOP=1 \
        -c "do \$\$ begin if not exists (select from pg_roles where rolname = '$ROLE') then
            create role $ROLE login createdb password '$ROLE'; end if; end \$\$;" >/dev/null
    echo "postgresql://$ROLE:$ROLE@127.0.0.1:$PORT/postgres" >"$STATE/url"
    chmod 0644 "$STATE/url"
    say "server up on 127.0.0.1:$PORT: $(cat "$STATE/url")"
}

restart() {
    pg status >/dev/null 2>&1 || die "no server of this script runs (start it first)"
    pg -m immediate stop >/dev/null
    sleep "${1:-0}"
    pg -w -t 60 start >/dev/null || die "the server did not start again (see $STATE/log/postgres.log)"
    say "server restarted"
}

stop() {
    if [[ -s $STATE/data/PG_VERSION ]] && pg status >/dev/null 2>&1; then pg -m fast stop >/dev/null; fi
    rm -f "$STATE/url"
    say "server stopped"
}

[[ $(id -u) -eq 0 ]] || die "run as root (the server runs as the postgres user)"
case ${1:-start} in
    start) start ;;
    restart) restart "${2:-0}" ;;
    stop) stop ;;
    *) die "usage: tools/postgres_server.sh start|restart|stop" ;;
esac
