"""A TDX guest's CC event log on real CVMs: the configfs-tsm script sends the ACPI CCEL
table beside the quote, and the controller logs it with the quote for every verifier to
replay (tests/controller/test_tdx_local.py replays it)."""

from __future__ import annotations

import base64
import hashlib

from duet.attestation.simulated.tdx import simulated_boot_log
from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import CCEL_TABLE, collect_command, parse_output

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def test_the_guest_sends_the_ccel_and_the_controller_logs_it_beside_the_quote() -> None:
    assert f"[ -r {CCEL_TABLE} ]" in collect_command("tdx", bytes(32)).replace("'\"'\"'", "'")
    nonce = bytes(range(32))
    rd = hashlib.sha512(nonce + base64.b64decode(HOST_KEY.split()[1])).digest()
    ccel, _ = simulated_boot_log(bytes(48))
    out = (f"provider: tdx_guest\nreport_data: {rd.hex()}\noutblob: {base64.b64encode(b'quote').decode()}\n"
           f"ccel: {base64.b64encode(ccel).decode()}\nhost_key: {HOST_KEY}\n")
    collector = RemoteEvidence(tdx_collateral=lambda quote: {"tcb_info": "x"})
    fields = collector.entry_fields("tdx", parse_output(out), nonce=nonce, host_key=HOST_KEY)
    assert fields["collateral"] == {"tcb_info": "x", "ccel": base64.b64encode(ccel).decode()}
    without = out.replace(f"ccel: {base64.b64encode(ccel).decode()}\n", "")
    assert "ccel" not in collector.entry_fields("tdx", parse_output(without), nonce=nonce,
                                                host_key=HOST_KEY)["collateral"]
