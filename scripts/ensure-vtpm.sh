#!/usr/bin/env bash
# The cloud twins' system parts: the Azure vTPM twin (tests/providers/test_azure_vtpm_twin.py)
# drives a real software TPM (swtpm) with the real tpm2-tools, as an Azure CVM's collection
# does with its vTPM; the Google Cloud twin's configfs-tsm stand-in is a FUSE filesystem
# (libfuse3, loaded by the mfusepy bindings).
set -euo pipefail
have_fuse() { ldconfig -p 2>/dev/null | grep -q 'libfuse3\.so\.3'; }
if command -v swtpm >/dev/null && command -v tpm2_quote >/dev/null && have_fuse; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing swtpm, tpm2-tools and libfuse3 (needed by the cloud twin tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends swtpm swtpm-tools tpm2-tools libfuse3-3 fuse3 >/dev/null
  exit 0
fi
echo "duet: swtpm, tpm2-tools or libfuse3 is missing. Install them (Debian/Ubuntu: sudo apt-get install swtpm swtpm-tools tpm2-tools libfuse3-3 fuse3) and retry." >&2
exit 1
