#!/usr/bin/env bash
# The explorer's browser test needs Debian's chromium; install it quietly once (no-op when it is there).
# Called by .ci/run only: setup.sh, which users run, never installs system packages.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq chromium >/dev/null \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
