#!/usr/bin/env bash
# Start PostgreSQL and Redis for the test suite when they are not already answering.
# On a Debian machine without them, install them first (needs root, as CI has).
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "ensure-services: installing PostgreSQL"
    apt_install postgresql
  fi
  version=$(ls /etc/postgresql | sort -n | tail -n 1)
  echo "ensure-services: starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 1; done
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || { echo "ensure-services: PostgreSQL did not start" >&2; exit 1; }
fi
# The suite connects as postgres over TCP; a fresh Debian cluster asks for a password there.
if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  echo "ensure-services: cannot connect as postgres to $PG_HOST:$PG_PORT without a password;" >&2
  echo "  set DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/factloop for the tests" >&2
  [ -n "${DATABASE_URL:-}" ] || exit 1
fi

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    echo "ensure-services: installing Redis"
    apt_install redis-server
  fi
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 20); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.5; done
  redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "ensure-services: Redis did not start" >&2; exit 1; }
fi
echo "ensure-services: PostgreSQL and Redis are up"
