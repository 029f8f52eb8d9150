#!/usr/bin/env bash
# The clock tests run the controller under Debian's faketime (libfaketime) to move its
# clock back as a hostile host would.
set -euo pipefail
if command -v faketime >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing faketime (needed by the clock tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends faketime >/dev/null
  exit 0
fi
echo "duet: faketime is missing. Install it (Debian/Ubuntu: sudo apt-get install faketime) and retry." >&2
exit 1
