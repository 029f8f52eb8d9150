#!/usr/bin/env bash
# `make test-slow` boots a Debian guest under qemu (TCG) from an image it builds with
# mmdebstrap, and once more through a local libvirtd (the libvirt provider); libvirt-python
# is built from source against the system's libvirt (libvirt-dev, pkg-config, gcc,
# python3-dev). Install what that needs, or say exactly what is missing and fail.
set -euo pipefail
missing=()
for t in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap mke2fs:e2fsprogs \
         libvirtd:libvirt-daemon-system virtlogd:libvirt-daemon-system pkg-config:pkg-config gcc:gcc; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t##*:}")
done
# the QEMU driver of libvirtd, and the headers libvirt-python builds against
for p in libvirt-daemon-driver-qemu:/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so \
         libvirt-dev:/usr/include/libvirt/libvirt.h; do
  [ -e "${p#*:}" ] || missing+=("${p%%:*}")
done
py_inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
[ -n "$py_inc" ] && [ -e "$py_inc/Python.h" ] || missing+=(python3-dev)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing ${missing[*]} (needed by make test-slow)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "duet: make test-slow needs ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and retry; building the guest image also needs root." >&2
exit 1
