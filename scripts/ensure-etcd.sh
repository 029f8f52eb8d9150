#!/usr/bin/env bash
# The replicated-store tests (`--store etcd://`) run against a real etcd: Debian's
# etcd-server (3.4). The tests start their own on 127.0.0.1 with a temporary data dir
# (tests/etcd_server.py), or use DUET_TEST_ETCD=HOST:PORT when it is set.
set -euo pipefail
if command -v etcd >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing etcd-server (needed by the replicated-store tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  exit 0
fi
echo "duet: etcd is missing. Install it (Debian/Ubuntu: sudo apt-get install etcd-server) and retry." >&2
exit 1
