#!/usr/bin/env bash
# `make test-slow` boots a Debian guest under qemu (TCG) from an image it builds with
# mmdebstrap: install what that needs, or say exactly what is missing and fail.
set -euo pipefail
missing=()
for t in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap mke2fs:e2fsprogs; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t##*:}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing ${missing[*]} (needed by make test-slow)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "duet: make test-slow needs ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and retry; building the guest image also needs root." >&2
exit 1
