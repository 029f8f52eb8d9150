#!/usr/bin/env bash
# The HTML report's browser test (make test-slow) renders it in Debian's headless Chromium.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing chromium (for the HTML report's browser test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  exit 0
fi
echo "duet: chromium is missing. Install it (Debian: sudo apt-get install chromium) and retry." >&2
exit 1
