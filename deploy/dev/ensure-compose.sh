#!/usr/bin/env bash
# The deployment tests validate deploy/compose.yaml offline with Debian's docker-compose
# (1.29; `docker-compose config -q`): this machine's Docker client has no compose plugin
# and no engine, so nothing is built or run.
set -euo pipefail
if command -v docker-compose >/dev/null 2>&1; then exit 0; fi
echo "ensure-compose: installing Debian's docker-compose"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker-compose >/dev/null
docker-compose version | sed -n 1p  # sed reads it all: head would end the pipe early (SIGPIPE, exit 141)
