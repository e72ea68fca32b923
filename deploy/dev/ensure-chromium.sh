#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright (Playwright's own browser
# download cannot run on machines without internet access).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "ensure-chromium: installing Debian's chromium"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
