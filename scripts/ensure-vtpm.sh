#!/usr/bin/env bash
# The Azure vTPM twin test (tests/providers/test_azure_vtpm_twin.py) drives a real software
# TPM (swtpm) with the real tpm2-tools, as an Azure CVM's collection does with its vTPM.
set -euo pipefail
if command -v swtpm >/dev/null && command -v tpm2_quote >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "duet: installing swtpm and tpm2-tools (needed by the Azure vTPM twin test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends swtpm swtpm-tools tpm2-tools >/dev/null
  exit 0
fi
echo "duet: swtpm or tpm2-tools is missing. Install them (Debian/Ubuntu: sudo apt-get install swtpm swtpm-tools tpm2-tools) and retry." >&2
exit 1
