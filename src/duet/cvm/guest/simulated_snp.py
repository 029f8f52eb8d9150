"""Guest-side helper of a SIMULATED SEV-SNP CVM: produce a report over the controller's
SSH session, as a real guest would through configfs-tsm.

The guest computes the report data itself, as SHA-512(nonce ‖ its own SSH host key
blob): a man in the middle who relays the controller's nonce to the genuine CVM gets a
report bound to the genuine host key, not to its own, so the controller sees the
mismatch. HOST_DATA and the measurement come from the launch file the simulated
hypervisor wrote at launch; the VCEK is the development one (SIMULATED).

Run as: python -m duet.cvm.guest.simulated_snp --bundle DIR --nonce HEX
Prints one JSON object: {"kind", "report" (base64), "host_key" (OpenSSH line)}.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path

from duet.attestation.simulated import simulated_snp_report_from_dir

LAUNCH_FILE = "launch.json"
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"


def host_key_blob(line: str) -> bytes:
    """The SSH wire-format public key (the base64 field of an OpenSSH key line)."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    return base64.b64decode(parts[1], validate=True)


def report_data_for(nonce: bytes, host_key_line: str) -> bytes:
    return hashlib.sha512(nonce + host_key_blob(host_key_line)).digest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="duet-guest-snp")
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--nonce", required=True)
    args = ap.parse_args(argv)
    try:
        nonce = bytes.fromhex(args.nonce)
        launch = json.loads((args.bundle / LAUNCH_FILE).read_text())
        host_key = (args.bundle / HOST_KEY_FILE).read_text().strip()
        report = simulated_snp_report_from_dir(
            args.bundle,
            report_data_for(nonce, host_key),
            measurement=bytes.fromhex(launch["measurement"]),
            host_data=bytes.fromhex(launch["host_data"]),
            policy=int(launch.get("policy", 0x30000)),
        )
    except (OSError, ValueError, KeyError) as exc:
        print(f"duet-guest-snp: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"kind": "simulated-snp", "report": base64.b64encode(report).decode(), "host_key": host_key}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
