"""Evidence from real CVMs: the guest-side collection command and the controller's checks
(SEV-SNP through configfs-tsm / the extended report's certificate table)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet.attestation import SimulatedSnp
from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import (
    _REPORT_DATA,
    CollectError,
    build_cert_table,
    collect_command,
    parse_cert_table,
    parse_output,
)
from duet.ledger import keys

MEASUREMENT = bytes(range(48))


def _host_key_line() -> str:
    pub = keys.Ed25519PrivateKey.generate().public_key()
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("snp"))


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _output(report: bytes, rd: bytes, host_key: str, table: bytes | None) -> str:
    lines = ["provider: sev_guest", f"report_data: {rd.hex()}", f"outblob: {base64.b64encode(report).decode()}"]
    if table is not None:
        lines.append(f"auxblob: {base64.b64encode(table).decode()}")
    lines.append(f"host_key: {host_key}")
    return "\n".join(lines) + "\n"


def test_guest_report_data_matches_the_controllers_expectation(tmp_path: Path) -> None:
    host_key = _host_key_line()
    pub = tmp_path / "key.pub"
    pub.write_text(host_key + " comment\n")
    nonce = bytes(range(32))
    out = subprocess.run(["sh", "-c", _REPORT_DATA.format(nonce=nonce.hex(), pub=pub)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha512(nonce + base64.b64decode(host_key.split()[1])).hexdigest()
    assert collect_command("snp", nonce).startswith("sudo -n env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C sh -c ")
    assert "python3 -c" not in collect_command("snp", nonce)  # only isolated Python (-I -S)
    with pytest.raises(ValueError):
        collect_command("sgx", nonce)


def test_cert_table_round_trip_and_truncation() -> None:
    certs = {"vcek": b"v" * 10, "ask": b"a" * 7, "ark": b"r" * 5}
    table = build_cert_table(certs)
    assert parse_cert_table(table) == certs
    with pytest.raises(CollectError):
        parse_cert_table(table[:30])


def _collected(snp: SimulatedSnp, nonce: bytes, host_key: str, *, host_data: bytes = bytes(32),
               report_rd: bytes | None = None, with_certs: bool = True):  # type: ignore[no-untyped-def]
    rd = hashlib.sha512(nonce + base64.b64decode(host_key.split()[1])).digest()
    report = snp.report(report_rd or rd, measurement=MEASUREMENT, host_data=host_data)
    table = build_cert_table({"vcek": snp.vcek_der, "ask": _der(snp.ask_pem), "ark": _der(snp.ark_pem)})
    return parse_output(_output(report, rd, host_key, table if with_certs else None))


def test_good_snp_evidence_is_accepted(snp: SimulatedSnp) -> None:
    collector = RemoteEvidence(trusted_arks=[snp.ark_pem])
    host_key, nonce = _host_key_line(), b"n" * 32
    host_data = bytes(range(32))
    entry = collector.verify_collected("snp", _collected(snp, nonce, host_key, host_data=host_data), nonce=nonce,
                                       host_key=host_key, binding="host_data", host_data=host_data.hex())
    assert entry["kind"] == "snp" and entry["claims"]["host_data"] == host_data.hex()
    assert base64.b64decode(entry["evidence"])[0x50:0x50 + 64] == hashlib.sha512(
        nonce + base64.b64decode(host_key.split()[1])).digest()


def test_evidence_of_another_host_key_is_refused(snp: SimulatedSnp) -> None:
    collector = RemoteEvidence(trusted_arks=[snp.ark_pem])
    genuine, impostor, nonce = _host_key_line(), _host_key_line(), b"n" * 32
    with pytest.raises(CollectError, match="host key"):
        collector.verify_collected("snp", _collected(snp, nonce, genuine), nonce=nonce, host_key=impostor)


def test_report_data_differing_from_what_the_guest_claims_is_refused(snp: SimulatedSnp) -> None:
    collector = RemoteEvidence(trusted_arks=[snp.ark_pem])
    host_key, nonce = _host_key_line(), b"n" * 32
    got = _collected(snp, nonce, host_key, report_rd=b"\x01" * 64)
    from duet.attestation.errors import BindingError

    with pytest.raises(BindingError, match="REPORT_DATA"):
        collector.verify_collected("snp", got, nonce=nonce, host_key=host_key)


def test_wrong_host_data_and_missing_vcek_and_untrusted_root(snp: SimulatedSnp) -> None:
    host_key, nonce = _host_key_line(), b"n" * 32
    trusting = RemoteEvidence(trusted_arks=[snp.ark_pem])
    from duet.attestation.errors import BindingError

    with pytest.raises(BindingError, match="host_data"):
        trusting.verify_collected("snp", _collected(snp, nonce, host_key), nonce=nonce, host_key=host_key,
                                  binding="host_data", host_data="11" * 32)
    with pytest.raises(CollectError, match="VCEK"):
        trusting.verify_collected("snp", _collected(snp, nonce, host_key, with_certs=False), nonce=nonce,
                                  host_key=host_key)
    from duet.attestation import AttestationError

    with pytest.raises(AttestationError):  # AMD's roots only: a development chain is refused
        RemoteEvidence().verify_collected("snp", _collected(snp, nonce, host_key), nonce=nonce,
                                          host_key=host_key)


def test_tdx_without_collateral_is_refused(snp: SimulatedSnp) -> None:
    host_key, nonce = _host_key_line(), b"n" * 32
    got = _collected(snp, nonce, host_key)
    with pytest.raises(CollectError, match="collateral"):
        RemoteEvidence().verify_collected("tdx", got, nonce=nonce, host_key=host_key)


@pytest.mark.parametrize("text", ["", "provider: x\n", "provider: x\nreport_data: zz\nhost_key: k\n",
                                  "provider: x\nreport_data: 00\nhost_key: k\n"])
def test_malformed_guest_output_is_refused(text: str) -> None:
    with pytest.raises(CollectError):
        parse_output(text)


AZ = Path(__file__).resolve().parents[1] / "attestation" / "vectors" / "azure" / "az-snp-vtpm"


def _azure_collected(rd: bytes, host_key: str):  # type: ignore[no-untyped-def]
    """What the guest script would print on the Azure CVM that produced the real vectors."""
    import json

    quote = json.loads((AZ / "tpm-quote-v1.json").read_text())
    pem = (AZ / "vcek.pem").read_text()
    first_end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
    thim = json.dumps({"vcekCert": pem[:first_end], "certificateChain": pem[first_end:]}).encode()
    blobs = {
        "hcl_report": (AZ / "hcl-report.bin").read_bytes(),
        "tpm_message": bytes.fromhex(quote["message"]),
        "tpm_signature": bytes.fromhex(quote["signature"]),
        "tpm_pcrs": b"".join(bytes.fromhex(p) for p in quote["pcrs"]),
        "vcek_json": thim,
    }
    lines = ["provider: azure_vtpm", f"report_data: {rd.hex()}"]
    lines += [f"{k}: {base64.b64encode(v).decode()}" for k, v in blobs.items()]
    lines.append(f"host_key: {host_key}")
    return parse_output("\n".join(lines) + "\n")


def test_azure_outputs_become_an_envelope_that_verifies() -> None:
    from datetime import UTC, datetime

    from duet.attestation import verify_azure_evidence
    from duet.cvm.guest.collect import azure_envelope

    if not AZ.is_dir():
        pytest.skip("Azure vectors not present")
    got = _azure_collected(bytes(64), _host_key_line())
    report = verify_azure_evidence(azure_envelope(got), now=datetime(2025, 6, 1, tzinfo=UTC), nonce=b"challenge")
    assert report.vm_id and report.vm_id.upper() == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"


def test_azure_quote_over_another_nonce_is_refused() -> None:
    from duet.attestation import AttestationError

    if not AZ.is_dir():
        pytest.skip("Azure vectors not present")
    host_key, nonce = _host_key_line(), b"n" * 32
    rd = hashlib.sha512(nonce + base64.b64decode(host_key.split()[1])).digest()
    with pytest.raises(AttestationError):  # the TPM quote's extraData is "challenge", not our binding
        RemoteEvidence().verify_collected("azure-snp", _azure_collected(rd, host_key), nonce=nonce,
                                          host_key=host_key)
    assert "tpm2_quote" in collect_command("azure-snp", nonce) and "0x01400001" in collect_command("azure-snp", nonce)
