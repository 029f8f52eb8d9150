"""The Azure SNP evidence path against a twin of an Azure CVM's vTPM (tests/providers/vtpm_twin.py):
the controller's own collection command runs the real tpm2-tools against a real software
TPM holding an Azure-shaped AK and HCL report, its output is turned into the evidence
entry by the controller's remote collector, and the registry every verifier runs
(`cvm_kinds.verify_evidence`, kind `azure-snp`, binding `vm_id`) accepts it. The HCL's SNP
report is SIMULATED (dev VCEK under a dev ARK that the test trusts explicitly)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from vtpm_twin import AzureVtpmTwin, have_tools

from duet.attestation.cvm_kinds import CvmKind
from duet.attestation.errors import AttestationError
from duet.attestation.simulated.snp import SimulatedSnp
from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import CollectError, parse_output

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
