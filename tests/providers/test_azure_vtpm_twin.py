"""The Azure SNP evidence path against a twin of an Azure CVM's vTPM (tests/providers/vtpm_twin.py):
the controller's own collection command runs the real tpm2-tools against a real software
TPM holding an Azure-shaped AK and HCL report, its output is turned into the evidence
entry by the controller's remote collector, and the registry every verifier runs
(`cvm_kinds.verify_evidence`, kind `azure-snp`, binding `vm_id`) accepts it. The HCL's SNP
report is SIMULATED (dev VCEK under a dev ARK that the test trusts explicitly)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from vtpm_twin import BOOT, CMDLINE, KERNEL_IMAGE, TD_MRTD, AzureVtpmTwin, SimulatedVtpmCa, have_tools, tdreport

from duet.attestation import cvm_kinds
from duet.attestation.azure.hcl import REPORT_TYPE_TDX, parse_hcl_report, parse_tdreport
from duet.attestation.cvm_kinds import CvmKind
from duet.attestation.dcap.abi import parse_tdx_quote
from duet.attestation.errors import AttestationError, ChainInvalid, MissingCertificate, ParseError
from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.attestation.tcg_eventlog import build_tcg2_log
from duet.attestation.validate import Expectations, validate
from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import Collected, CollectError, parse_output

REFUSED = (AttestationError, ValueError)
VM_ID = "6f1c1f5e-6b1a-4d1e-9d3c-0a6f1b2c3d4e"


@pytest.fixture
def host_key(tmp_path: Path) -> tuple[Path, str]:
    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path = tmp_path / "ssh_host_ed25519_key.pub"
    path.write_text(pub + " root@twin\n")
    return path, pub


def _twin(tmp_path: Path, **kw: object) -> tuple[AzureVtpmTwin, SimulatedSnp]:
    if not have_tools():
        pytest.fail("swtpm and tpm2-tools are needed (make setup installs them: scripts/ensure-vtpm.sh)")
    snp = SimulatedSnp.load_or_create(tmp_path / "snp")
    (tmp_path / "vtpm").mkdir()
    return AzureVtpmTwin(tmp_path / "vtpm", snp, VM_ID).start(**kw), snp  # type: ignore[arg-type]


def test_azure_snp_evidence_from_a_real_tpm_verifies(tmp_path: Path, host_key: tuple[Path, str]) -> None:
    twin, snp = _twin(tmp_path)
    try:
        nonce = secrets.token_bytes(32)
        out = twin.run(nonce, host_key[0])
        got = parse_output(out)
        assert got.provider == "azure_vtpm" and {"hcl_report", "tpm_message", "tpm_signature", "tpm_pcrs",
                                                 "vcek_json"} <= set(got.blobs)
        assert twin.imds_requests == [{"path": "/metadata/THIM/amd/certification", "metadata": "true"}]
        collector = RemoteEvidence(trusted_arks=[snp.ark_pem])
        entry = collector.verify_collected(CvmKind.AZURE_SNP, got, nonce=nonce, host_key=host_key[1],
                                           binding="vm_id", instance_id=VM_ID)
        assert entry["kind"] == "azure-snp" and entry["claims"] == {"vm_id": VM_ID}
        # Without the dev ARK the SIMULATED VCEK chain is not trusted.
        with pytest.raises(REFUSED, match="not a trusted root"):
            RemoteEvidence().verify_collected(CvmKind.AZURE_SNP, got, nonce=nonce, host_key=host_key[1],
                                              binding="vm_id", instance_id=VM_ID)
        # Another VM's id, another nonce, another host key: each refused.
        with pytest.raises(REFUSED, match=r"(?i)vm"):
            collector.verify_collected(CvmKind.AZURE_SNP, got, nonce=nonce, host_key=host_key[1],
                                       binding="vm_id", instance_id="another-vm")
        with pytest.raises(CollectError):
            collector.verify_collected(CvmKind.AZURE_SNP, got, nonce=secrets.token_bytes(32), host_key=host_key[1],
                                       binding="vm_id", instance_id=VM_ID)
        other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        with pytest.raises(CollectError):
            collector.verify_collected(CvmKind.AZURE_SNP, got, nonce=nonce, host_key=other,
                                       binding="vm_id", instance_id=VM_ID)
    finally:
        twin.stop()


def test_runtime_claims_naming_another_key_than_the_tpms_ak_are_refused(
        tmp_path: Path, host_key: tuple[Path, str]) -> None:
    """The HCL report is genuine (hardware-signed claims), but the key in its claims is not
    the one that signed the TPM quote: a quote from another TPM cannot borrow it."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    twin, snp = _twin(tmp_path, ak_in_claims=stranger)
    try:
        nonce = secrets.token_bytes(32)
        got = parse_output(twin.run(nonce, host_key[0]))
        with pytest.raises(REFUSED, match=r"(?i)signature|quote"):
            RemoteEvidence(trusted_arks=[snp.ark_pem]).verify_collected(
                CvmKind.AZURE_SNP, got, nonce=nonce, host_key=host_key[1], binding="vm_id", instance_id=VM_ID)
    finally:
        twin.stop()


def _verify(entry: dict[str, object], host_key: str, snp: SimulatedSnp, roots: bytes | None = None) -> Any:
    trust = cvm_kinds.Trust(snp_arks=(snp.ark_pem,), azure_ak_roots=(roots,) if roots is not None else None)
    return cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC), trust=trust, binding="vm_id",
                                     instance_id=VM_ID).report


def _collect(twin: AzureVtpmTwin, snp: SimulatedSnp, host_key: tuple[Path, str],
             tamper: Callable[[Collected], None] | None = None) -> dict[str, Any]:
    nonce = secrets.token_bytes(32)
    got = parse_output(twin.run(nonce, host_key[0]))
    if tamper is not None:
        tamper(got)
    return RemoteEvidence(trusted_arks=[snp.ark_pem]).verify_collected(
        CvmKind.AZURE_SNP, got, nonce=nonce, host_key=host_key[1], binding="vm_id", instance_id=VM_ID)


def test_the_ak_certificate_chains_to_the_pinned_vtpm_root(tmp_path: Path, host_key: tuple[Path, str]) -> None:
    """The AK certificate the twin keeps in NV 0x01C101D0 (zero-padded DER) travels in the
    evidence; pinned roots judge it, and the report names its subject and issuer."""
    twin, snp = _twin(tmp_path)
    try:
        entry = _collect(twin, snp, host_key)
        report = _verify(entry, host_key[1], snp, twin.vtpm_ca.pins)
        ak = report.ak_certificate
        assert ak["status"] == "verified", ak
        assert ak["subject"] == f"CN={VM_ID}.TrustedVM.SIMULATED,O=SIMULATED (duet tests)"
        assert ak["issuer"] == "CN=SIMULATED Global Virtual TPM CA - 03,O=SIMULATED (duet tests)"
        assert ak["chain"].endswith("<- SIMULATED Azure Virtual TPM Root Certificate Authority")
        # Without pinned roots it is shown, not judged (the HCL report binds the AK anyway).
        unpinned = _verify(entry, host_key[1], snp).ak_certificate
        assert unpinned["status"] == "not checked (no roots pinned)" and unpinned["subject"] == ak["subject"]
        # The expectations say the same through the one schema (`cvm.azure_ak_roots`).
        exp = Expectations(azure_ak_roots=[twin.vtpm_ca.pins.decode()])
        assert validate(report, exp) == []
        assert [f.field for f in validate(_verify(entry, host_key[1], snp), exp)] == ["ak_certificate"]
        # Another root pinned (same names, other keys): refused, naming where it broke.
        other = SimulatedVtpmCa()
        with pytest.raises(ChainInvalid, match="does not chain to a pinned vTPM root"):
            _verify(entry, host_key[1], snp, other.pins)
        # The intermediate alone, without its root, is no pin.
        with pytest.raises(ParseError, match="no self-signed root"):
            _verify(entry, host_key[1], snp, twin.vtpm_ca.ca.public_bytes(serialization.Encoding.PEM))
    finally:
        twin.stop()


def test_an_ak_certificate_for_another_key_fails_when_roots_are_pinned(
        tmp_path: Path, host_key: tuple[Path, str]) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    twin, snp = _twin(tmp_path, ak_cert_for=stranger)
    try:
        entry = _collect(twin, snp, host_key)
        with pytest.raises(ChainInvalid, match="attestation key"):
            _verify(entry, host_key[1], snp, twin.vtpm_ca.pins)
        assert _verify(entry, host_key[1], snp).ak_certificate["status"] == "not checked (no roots pinned)"
    finally:
        twin.stop()


def test_a_missing_ak_certificate_fails_when_roots_are_pinned(tmp_path: Path, host_key: tuple[Path, str]) -> None:
    twin, snp = _twin(tmp_path, ak_cert=False)
    try:
        entry = _collect(twin, snp, host_key)
        with pytest.raises(MissingCertificate, match="0x01c101d0"):
            _verify(entry, host_key[1], snp, twin.vtpm_ca.pins)
        assert _verify(entry, host_key[1], snp).ak_certificate == {"status": "absent"}
    finally:
        twin.stop()


def _with_log(events: Any) -> Callable[[Collected], None]:
    def tamper(got: Collected) -> None:
        got.blobs["event_log"] = build_tcg2_log(events)
    return tamper


def test_the_event_log_replays_to_the_quoted_pcrs(tmp_path: Path, host_key: tuple[Path, str]) -> None:
    """The twin's SIMULATED boot log replays to the PCRs its vTPM quotes; the kernel and
    its command line become claims the expectations pin. A log that tells another story
    (an event changed, one left out) is refused; a command line whose text was changed
    but whose digest was kept replays, but is not believed."""
    twin, snp = _twin(tmp_path)
    try:
        entry = _collect(twin, snp, host_key)
        log = _verify(entry, host_key[1], snp).event_log
        assert log["events"] == len(BOOT) and log["pcrs"] == list(range(10))
        assert log["kernel"] == {"pcr": 4, "digest": hashlib.sha256(KERNEL_IMAGE).hexdigest()}
        assert log["cmdline"]["text"] == CMDLINE and log["cmdline"]["measured"] is True
        exp = Expectations(require_event_log=True, kernel_digest=hashlib.sha256(KERNEL_IMAGE).hexdigest(),
                           kernel_cmdline=CMDLINE)
        assert validate(_verify(entry, host_key[1], snp), exp) == []
        failures = validate(_verify(entry, host_key[1], snp), Expectations(kernel_cmdline=CMDLINE + " init=/bin/sh"))
        assert [f.field for f in failures] == ["event_log.cmdline"]

        changed = [(p, t, d.replace(b"ro console", b"rw console")) for p, t, d in BOOT]
        with pytest.raises(REFUSED, match="PCR 8"):
            _collect(twin, snp, host_key, _with_log(changed))
        other_kernel = [(p, t, b"SIMULATED evil kernel" if d == KERNEL_IMAGE else d) for p, t, d in BOOT]
        with pytest.raises(REFUSED, match="PCR 4"):
            _collect(twin, snp, host_key, _with_log(other_kernel))
        missing = [e for e in BOOT if e[2] != b"SIMULATED grubx64.efi"]
        with pytest.raises(REFUSED, match="PCR 4"):
            _collect(twin, snp, host_key, _with_log(missing))

        def text_only(got: Collected) -> None:
            raw = build_tcg2_log(BOOT)
            old = f"kernel_cmdline: {CMDLINE}".encode()
            got.blobs["event_log"] = raw.replace(old, old.replace(b"ro console", b"rw console"))
        forged = _collect(twin, snp, host_key, text_only)
        log = _verify(forged, host_key[1], snp).event_log
        assert log["cmdline"]["measured"] is False
        assert [f.field for f in validate(_verify(forged, host_key[1], snp), exp)] == ["event_log.cmdline"]
    finally:
        twin.stop()


def test_an_azure_tdx_vtpm_as_a_machine_gets_it(tmp_path: Path) -> None:
    """The TDX twin as tests/providers/azure_machine.py would use it: `provision()` (the
    swtpm state is then the machine's TPM) and `serve_imds()`: the HCL report is of the TDX
    type, its TDREPORT's REPORTDATA hashes the runtime claims carrying the AK, and IMDS's
    TD quote service quotes exactly that TDREPORT (a quote whose body repeats it), refusing
    any other report, and serves no SEV-SNP certificates."""
    if not have_tools():
        pytest.fail("swtpm and tpm2-tools are needed (make setup installs them: scripts/ensure-vtpm.sh)")
    tdx = SimulatedTdx.load_or_create(tmp_path / "tdx")
    with pytest.raises(ValueError, match="either SEV-SNP"):
        AzureVtpmTwin(tmp_path, None, VM_ID)
    (tmp_path / "vtpm").mkdir()
    twin = AzureVtpmTwin(tmp_path / "vtpm", None, VM_ID, tdx=tdx)
    twin.provision()
    assert twin.proc is None and (tmp_path / "vtpm" / "tpmstate").is_dir()
    twin.serve_imds()
    try:
        hcl = parse_hcl_report((tmp_path / "vtpm" / "hcl.bin").read_bytes())
        assert hcl.report_type == REPORT_TYPE_TDX and hcl.vm_id == VM_ID and hcl.hardware_report == twin.tdreport
        td = parse_tdreport(hcl.hardware_report)
        assert td.report_data == hashlib.sha256(hcl.var_data).digest() + bytes(32) and td.mr_td == TD_MRTD
        assert twin.imds is not None
        url = f"http://127.0.0.1:{twin.imds.server_address[1]}"

        def ask(report: bytes) -> httpx.Response:
            return httpx.post(f"{url}/acc/tdquote", json={
                "report": base64.urlsafe_b64encode(report).decode().rstrip("=")})

        reply = ask(hcl.hardware_report)
        assert reply.status_code == 200
        quote = json.loads(reply.content)["quote"]
        body = parse_tdx_quote(base64.urlsafe_b64decode(quote + "=" * (-len(quote) % 4))).body
        assert (body.report_data, body.mr_td, body.rtmrs) == (td.report_data, td.mr_td, td.rtmrs)  # type: ignore[union-attr]
        assert ask(tdreport(bytes(64))).status_code == 400  # a report this TD did not make
        assert httpx.get(f"{url}/metadata/THIM/amd/certification", headers={"Metadata": "true"}).status_code == 400
    finally:
        twin.stop()
