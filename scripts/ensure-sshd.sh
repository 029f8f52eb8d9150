#!/usr/bin/env bash
# Local CVMs are real OpenSSH servers: make sure sshd and ssh-keygen are installed.
set -euo pipefail
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing openssh-server (needed for local CVMs)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
  exit 0
fi
echo "duet: OpenSSH server is missing. Install it (Debian/Ubuntu: sudo apt-get install openssh-server) and retry." >&2
exit 1
