"""Guest side of a SIMULATED SEV-SNP CVM: ask the platform for a report.

Copied into the CVM's platform directory at launch and run over the controller's SSH
session, like a real guest's tooling that writes report data into configfs-tsm. Only
the standard library: a stock guest's python3 runs it.

The guest computes the report data itself, SHA-512(nonce ‖ its own SSH host key blob),
and hands it to the simulated PSP through a socket only the CVM's user can open. A man
in the middle who relays the nonce to the genuine guest gets a report bound to the
genuine host key, not to its own; and it cannot reach the PSP itself.

Usage: python3 report_client.py NONCE_HEX   -> one JSON line {"report", "host_key"}, plus
"ccel" (the TD's event log) on TDX
"""

import base64
import hashlib
import json
import os
import socket
import sys


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    nonce = bytes.fromhex(sys.argv[1])
    with open(os.path.join(here, "ssh_host_ed25519_key.pub")) as f:
        host_key = " ".join(f.read().split()[:2])
    report_data = hashlib.sha512(nonce + base64.b64decode(host_key.split()[1])).digest()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(os.path.join(here, "psp.sock"))
    s.sendall(json.dumps({"report_data": report_data.hex()}).encode() + b"\n")
    chunks = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    reply = json.loads(b"".join(chunks))
    if "error" in reply:
        print("psp: " + reply["error"], file=sys.stderr)
        return 1
    out = {"report": reply["report"], "host_key": host_key}
    if "ccel" in reply:  # a TD's event log (the firmware's CCEL table), beside the quote
        out["ccel"] = reply["ccel"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
