#!/usr/bin/env bash
# Private PostgreSQL and Redis instances for vmseal's production-backend test pass and benchmarks:
# Debian's binaries, started without systemd, data under $VMSEAL_SERVICES_DIR, listening on loopback only.
# Not a production set-up (trust authentication, fsync off): see README "Deploying" for that.
#
#   scripts/services.sh start    start both (idempotent); prints the environment that selects them
#   scripts/services.sh env      print that environment
#   scripts/services.sh stop     stop both and remove their data
set -euo pipefail
DIR=${VMSEAL_SERVICES_DIR:-/var/tmp/vmseal-services}
PG_PORT=${VMSEAL_PG_PORT:-55432}
REDIS_PORT=${VMSEAL_REDIS_PORT:-56379}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

print_env() {
  echo "VMSEAL_DB_ENGINE=postgresql"
  echo "VMSEAL_DB_HOST=127.0.0.1"
  echo "VMSEAL_DB_PORT=$PG_PORT"
  echo "VMSEAL_DB_USER=vmseal"
  echo "VMSEAL_DB_NAME=vmseal"
  echo "VMSEAL_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

pg() { runuser -u postgres -- "$PGBIN/$1" "${@:2}"; }

start() {
  [ -n "$PGBIN" ] || { echo "services.sh: PostgreSQL is not installed" >&2; exit 1; }
  mkdir -p "$DIR/pg" "$DIR/sock" "$DIR/redis"
  chown postgres "$DIR/pg" "$DIR/sock"
  chmod 700 "$DIR/pg"
  if [ ! -f "$DIR/pg/PG_VERSION" ]; then
    pg initdb -D "$DIR/pg" -A trust -U postgres -E UTF8 >/dev/null
  fi
  if ! pg pg_ctl -D "$DIR/pg" status >/dev/null 2>&1; then
    pg pg_ctl -D "$DIR/pg" -l "$DIR/pg/server.log" -w -t 60 start \
      -o "-p $PG_PORT -k $DIR/sock -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" >/dev/null
  fi
  runuser -u postgres -- psql -h "$DIR/sock" -p "$PG_PORT" -U postgres -qtAc \
    "SELECT 1 FROM pg_roles WHERE rolname='vmseal'" | grep -q 1 \
    || runuser -u postgres -- psql -h "$DIR/sock" -p "$PG_PORT" -U postgres -qc "CREATE ROLE vmseal LOGIN CREATEDB"
  runuser -u postgres -- psql -h "$DIR/sock" -p "$PG_PORT" -U postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname='vmseal'" | grep -q 1 \
    || runuser -u postgres -- psql -h "$DIR/sock" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE vmseal OWNER vmseal"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --dir "$DIR/redis" \
      --pidfile "$DIR/redis/redis.pid" --logfile "$DIR/redis/redis.log" --save '' --appendonly no
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  redis-cli -p "$REDIS_PORT" ping >/dev/null
  print_env
}

stop() {
  if [ -n "$PGBIN" ] && [ -f "$DIR/pg/PG_VERSION" ]; then
    pg pg_ctl -D "$DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  env) print_env ;;
  stop) stop ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
