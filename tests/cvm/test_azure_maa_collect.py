"""MAA evidence as the guest collects it and the controller checks it before logging.

The guest's request to MAA is built by the script it runs (here with stand-in tpm2 tools
and curl) from a real Azure HCL report (tests/attestation/vectors/azure): the runtime
claims MAA hashes are exactly the HCL report's variable data, and the hardware evidence
is the SNP report after the header (or the TD quote). MAA itself cannot run here; its
token comes from a test key (tests/attestation/maa_helpers.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import CollectError, collect_command, maa_url, parse_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attestation"))
from maa_helpers import ISSUER, VM_ID, FakeMaa

VEC = Path(__file__).resolve().parents[1] / "attestation" / "vectors" / "azure"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_the_guest_asks_maa_about_the_hcl_reports_own_claims(tmp_path: Path, tee: str) -> None:
    hcl = (VEC / f"az-{tee}-vtpm" / "hcl-report.bin").read_bytes()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # Stand-ins: the vTPM (user-data write, then the HCL report), Azure's IMDS, and MAA.
    (tmp_path / "hcl.bin").write_bytes(hcl)
    stubs = {
        "tpm2_nvreadpublic": "exit 0",
        "tpm2_nvwrite": f'cp "$4" {tmp_path}/written',
        "tpm2_nvread": f'cp {tmp_path}/hcl.bin "$5"',
        "curl": (f'case "$*" in *THIM*) echo \'{{"vcekCert":"V-","certificateChain":"C-"}}\';; '
                 f'*tdquote*) cat > {tmp_path}/tdreport; echo \'{{"quote":"UVVPVEU"}}\';; '
                 f'*attest/*) echo "$*" > {tmp_path}/url; for a in "$@"; do case "$a" in @*) cat "${{a#@}}" '
                 f'> {tmp_path}/sent;; esac; done; '
                 f'echo \'{{"token":"a.b.c"}}\';; esac'),
    }
    for name, body in stubs.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    pub = tmp_path / "host.pub"
    pub.write_text(HOST_KEY + " host\n")
    nonce = bytes(range(32))
    command = collect_command(f"azure-{tee}-maa", nonce, sudo=False, pub=str(pub), maa=ISSUER + "/")
    command = command.replace("PATH=/usr/sbin", f"PATH={bindir}:/usr/sbin")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = parse_output(out.stdout)
    rd = hashlib.sha512(nonce + base64.b64decode(HOST_KEY.split()[1])).digest()
    assert got.provider == "azure_maa" and got.report_data == rd and got.blobs["maa_response"] == b'{"token":"a.b.c"}\n'
    assert (tmp_path / "written").read_bytes() == rd  # the binding, into the vTPM's user-data index
    sent = json.loads((tmp_path / "sent").read_text())
    n = int.from_bytes(hcl[1232:1236], "little")
    assert sent["runtimeData"] == {"data": base64.urlsafe_b64encode(hcl[1236:1236 + n]).decode().rstrip("="),
                                   "dataType": "JSON"}
    url = (tmp_path / "url").read_text()
    if tee == "snp":
        assert f"{ISSUER}/attest/SevSnpVm?api-version=2022-08-01" in url
        report = json.loads(_unb64u(sent["report"]))
        assert _unb64u(report["SnpReport"]) == hcl[32:32 + 1184]
        assert _unb64u(report["VcekCertChain"]) == b"V-C-"
    else:
        assert f"{ISSUER}/attest/TdxVm?api-version=2023-04-01-preview" in url
        assert sent["quote"] == "UVVPVEU"
        assert _unb64u(json.loads((tmp_path / "tdreport").read_text())["report"]) == hcl[32:32 + 1024]


def test_the_maa_url_is_an_https_origin_only() -> None:
    assert maa_url("https://duet.weu.attest.azure.net/") == "https://duet.weu.attest.azure.net"
    for bad in ("http://duet.attest.azure.net", "https://x.net/path", "https://x.net'; rm -rf /", "https://X.net",
                "https://x.net?a=b"):
        with pytest.raises(ValueError):
            maa_url(bad)
    with pytest.raises(ValueError, match="maa_url"):
        collect_command("azure-snp-maa", bytes(32))


def _output(rd: bytes, reply: bytes) -> str:
    return (f"provider: azure_maa\nreport_data: {rd.hex()}\nmaa_response: {base64.b64encode(reply).decode()}\n"
            f"host_key: {HOST_KEY}\n")


def test_the_controller_checks_the_token_against_the_owners_maa_keys() -> None:
    maa = FakeMaa()
    nonce = bytes(range(32))
    rd = hashlib.sha512(nonce + base64.b64decode(HOST_KEY.split()[1])).digest()
    reply = json.dumps({"token": maa.token("azure-snp-maa", rd)}).encode()
    collector = RemoteEvidence(maa_url=ISSUER, maa_jwks=maa.jwks())
    entry = collector.verify_collected("azure-snp-maa", parse_output(_output(rd, reply)), nonce=nonce,
                                       host_key=HOST_KEY, binding="vm_id", instance_id=VM_ID)
    assert base64.b64decode(entry["evidence"]).decode() == json.loads(reply)["token"]
    assert entry["collateral"] == {"maa_url": ISSUER, "jwks": maa.jwks()}
    assert entry["claims"]["vm_id"] == VM_ID
    # Another MAA's token, a token over another challenge, no MAA settings, no token.
    other = json.dumps({"token": FakeMaa(kid=maa.kid).token("azure-snp-maa", rd)}).encode()
    with pytest.raises(Exception, match="signature"):
        collector.verify_collected("azure-snp-maa", parse_output(_output(rd, other)), nonce=nonce,
                                   host_key=HOST_KEY, binding="vm_id", instance_id=VM_ID)
    stale = json.dumps({"token": maa.token("azure-snp-maa", bytes(64))}).encode()
    with pytest.raises(Exception, match="binding"):
        collector.verify_collected("azure-snp-maa", parse_output(_output(rd, stale)), nonce=nonce,
                                   host_key=HOST_KEY, binding="vm_id", instance_id=VM_ID)
    with pytest.raises(CollectError, match="maa_url"):
        RemoteEvidence().verify_collected("azure-snp-maa", parse_output(_output(rd, reply)), nonce=nonce,
                                          host_key=HOST_KEY)
    with pytest.raises(CollectError, match="no token"):
        collector.verify_collected("azure-snp-maa", parse_output(_output(rd, b'{"error":"denied"}')),
                                   nonce=nonce, host_key=HOST_KEY)


async def test_the_controller_logs_maa_evidence_and_learns_the_time_maa_signed() -> None:
    """Collector.attest, the flow every provider shares, with the guest's output for an
    MAA kind: the entry carries the token and the JWKS it was checked with, and MAA's
    signed issue time becomes a floor of the controller's trusted clock (a host clock set
    back later cannot revive an expired token)."""
    from datetime import UTC, datetime
    from types import SimpleNamespace
    from typing import Any

    from duet.controller.evidence import EvidenceRefused, Fetched
    from duet.tee.clock import TrustedClock

    maa = FakeMaa()
    issued = int(datetime(2031, 1, 1, tzinfo=UTC).timestamp())

    class Port:
        def __init__(self) -> None:
            self.rec = SimpleNamespace(id="c1", provider="azure", kind="azure-snp-maa", host_key=HOST_KEY,
                                       binding="vm_id", host_data=None, instance_id=VM_ID)
            self.log: list[dict[str, Any]] = []
            self.clock = TrustedClock(host=lambda: datetime(2031, 1, 1, 0, 1, tzinfo=UTC))

        def append(self, items: Any) -> int:
            self.log.extend(item.to_dict() for item in items)
            return len(self.log) - len(items)

    class Guest(RemoteEvidence):
        signer = maa

        async def fetch(self, port: Any, kind: str, nonce: bytes, *, intent_index: Any) -> Fetched:
            rd = hashlib.sha512(nonce + base64.b64decode(HOST_KEY.split()[1])).digest()
            token = self.signer.token(kind, rd, now=issued + 5)
            got = parse_output(_output(rd, json.dumps({"token": token}).encode()))
            return Fetched(0, self.entry_fields(kind, got, nonce=nonce, host_key=HOST_KEY))

    port = Port()
    index = await Guest(maa_url=ISSUER, maa_jwks=maa.jwks()).attest(port, intent_index=0, purpose="attest")
    entry = port.log[index]
    assert entry["type"] == "evidence" and entry["kind"] == "azure-snp-maa" and entry["binds"]["vm_id"] == VM_ID
    assert entry["collateral"]["jwks"] == maa.jwks()
    assert port.clock.floor == datetime.fromtimestamp(issued, UTC)  # MAA's signed iat
    # A token under a key the owner did not configure is refused, and no evidence is logged.
    Guest.signer = FakeMaa(kid=maa.kid)
    port = Port()
    with pytest.raises(EvidenceRefused, match="signature"):
        await Guest(maa_url=ISSUER, maa_jwks=maa.jwks()).attest(port, intent_index=0, purpose="attest")
    assert not any(e["type"] == "evidence" for e in port.log)


def test_azure_offers_the_maa_kinds_on_the_same_hardware() -> None:
    from duet.attestation import cvm_kinds
    from duet.cvm.azure import AzureProvider

    p = AzureProvider(subscription_id="s", resource_group="rg", location="westeurope",
                      controller_cidr="203.0.113.7/32")
    for tee, kind, size in (("snp-maa", "azure-snp-maa", "Standard_DC2as_v5"),
                            ("tdx-maa", "azure-tdx-maa", "Standard_DC2es_v5")):
        assert cvm_kinds.resolve_offer("azure", p.tees, tee)[1].evidence_kind == kind
        spec = {"tee": tee, "host_data": "00" * 32}
        plan = json.dumps(p.plan("0123456789abcdef", authorized_key=HOST_KEY, spec=spec))
        assert size in plan
    # The direct path stays the default.
    assert cvm_kinds.resolve_offer("azure", p.tees, None)[1].evidence_kind == "azure-snp"
