"""Azure CVM evidence: HCL report + vTPM quote, every trustee envelope version."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from attestation_helpers import at, vec
from cryptography.hazmat.primitives import serialization

from duet.attestation.azure.evidence import (
    azure_tdx_claims_unverified,
    check_azure_bindings,
    parse_azure_evidence,
    verify_azure_evidence,
)
from duet.attestation.azure.hcl import b64url_decode, parse_hcl_report
from duet.attestation.azure.tpm import parse_tpms_attest
from duet.attestation.errors import (
    BindingError,
    CollateralError,
    ParseError,
    SignatureInvalid,
    UnsupportedVersion,
)
from duet.attestation.snp.certs import load_pem_chain

NOW = at("2025-06-01T00:00:00")


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def snp_v1_from_parts() -> dict[str, object]:
    vcek = load_pem_chain(vec("azure/az-snp-vtpm/vcek.pem"), "VCEK")[0]
    return {
        "version": 1,
        "tpm_quote": json.loads(vec("azure/az-snp-vtpm/tpm-quote-v1.json")),
        "hcl_report": b64u(vec("azure/az-snp-vtpm/hcl-report.bin")),
        "vcek": b64u(vcek.public_bytes(serialization.Encoding.DER)),
    }


def test_hcl_report_snp() -> None:
    hcl = parse_hcl_report(vec("azure/az-snp-vtpm/hcl-report.bin"))
    assert hcl.kind == "snp" and hcl.vm_id == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    assert hcl.hardware_report[0x50:0x70] == hashlib.sha256(hcl.var_data).digest()
    assert hcl.claims["vm-configuration"]["secure-boot"] is True
    assert hcl.user_data == "00" * 64
    assert hcl.ak_pub().key_size == 2048


def test_snp_parts_verify() -> None:
    r = verify_azure_evidence(snp_v1_from_parts(), now=NOW, nonce=b"challenge")
    assert r.kind == "azure-snp" and not r.simulated
    hw = r.hardware
    assert hw.measurement.startswith("9ac48fca") and hw.measurement.endswith("6d17c315")
    assert hw.reported_tcb_raw == "0300000000000873" and hw.policy == 0x3001F
    assert r.tpm.pcrs[0] == "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be"
    assert r.tpm.nonce == b"challenge" and len(r.tpm.pcrs) == 24


def test_snp_evidence_v0() -> None:
    r = verify_azure_evidence(
        vec("azure/az-snp-vtpm/evidence-v0.json"), now=NOW, nonce=b"challenge"
    )
    assert r.envelope_version == 0 and r.hardware.version == 3
    assert r.hardware.reported_tcb_raw == "04000000000018db"
    assert r.tpm.pcrs[0].startswith("e15c4479")


@pytest.mark.parametrize(
    ("name", "version", "product"),
    [
        ("az-snp-vtpm_evidence-v1.json", 1, "Milan"),
        ("az-snp-vtpm_evidence-v2.json", 2, "Milan"),
        ("az-snp-vtpm_evidence-genoa.json", 0, "Genoa"),
    ],
)
def test_trustee_snp_envelopes(name: str, version: int, product: str) -> None:
    r = verify_azure_evidence(vec("trustee-extra/" + name), now=NOW)
    assert (r.envelope_version, r.hardware.product) == (version, product)


def test_v2_user_data_binding() -> None:
    ev = parse_azure_evidence(vec("trustee-extra/az-snp-vtpm_evidence-v2.json"))
    nonce = check_azure_bindings(ev).tpm.nonce
    r = verify_azure_evidence(ev, now=NOW, nonce=nonce, report_data=nonce)
    assert r.user_data is not None and r.user_data.startswith(nonce.hex())
    with pytest.raises(BindingError):
        verify_azure_evidence(ev, now=NOW, report_data=b"\x00" * 8 + b"other")


def test_tdx_evidence_v1_bindings() -> None:
    ev = parse_azure_evidence(vec("azure/az-tdx-vtpm/evidence-v1.json"))
    assert ev.hcl_report == vec("azure/az-tdx-vtpm/hcl-report.bin")
    assert ev.td_quote == vec("azure/az-tdx-vtpm/td-quote.bin")
    b = check_azure_bindings(ev, nonce=b"challenge")
    assert b.hcl.kind == "tdx" and b.tpm.pcrs[0].startswith("782b20b1")
    claims = azure_tdx_claims_unverified(ev)
    assert claims.mrtd.startswith("024a32b0") and claims.tee_tcb_svn.startswith("02010600")
    assert claims.tcb_status == "Unverified"
    with pytest.raises(CollateralError):  # no Intel collateral for FMSPC 00806F050000
        verify_azure_evidence(ev, now=NOW)


def test_tdx_evidence_v0() -> None:
    ev = parse_azure_evidence(vec("trustee-extra/az-tdx-vtpm_evidence-v0.json"))
    assert ev.envelope_version == 0
    assert check_azure_bindings(ev, nonce=b"challenge").hcl.kind == "tdx"


def test_tdx_tpm_quote_file() -> None:
    q = json.loads(vec("azure/az-tdx-vtpm/tpm-quote-v1.json"))
    ev = {
        "version": 1,
        "tpm_quote": q,
        "hcl_report": b64u(vec("azure/az-tdx-vtpm/hcl-report.bin")),
        "td_quote": b64u(vec("azure/az-tdx-vtpm/td-quote.bin")),
    }
    assert check_azure_bindings(parse_azure_evidence(ev)).tpm.nonce == b"challenge"


def test_tpms_attest_fields() -> None:
    q = json.loads(vec("azure/az-snp-vtpm/tpm-quote-v1.json"))
    att = parse_tpms_attest(bytes.fromhex(q["message"]))
    assert att.extra_data == b"challenge" and att.selection[0][1] == list(range(24))


# -- negatives ---------------------------------------------------------------------------


def test_wrong_nonce() -> None:
    with pytest.raises(BindingError, match="nonce"):
        verify_azure_evidence(snp_v1_from_parts(), now=NOW, nonce=b"other")


def test_tampered_runtime_claims() -> None:
    ev = snp_v1_from_parts()
    hcl = bytearray(vec("azure/az-snp-vtpm/hcl-report.bin"))
    i = hcl.index(b"vmUniqueId") + 14
    hcl[i] ^= 1
    ev["hcl_report"] = b64u(bytes(hcl))
    with pytest.raises(BindingError, match="REPORT_DATA"):
        verify_azure_evidence(ev, now=NOW)


def test_tampered_tpm_quote_signature() -> None:
    ev = snp_v1_from_parts()
    q = dict(ev["tpm_quote"])  # type: ignore[call-overload]
    sig = bytearray(bytes.fromhex(q["signature"]))
    sig[5] ^= 1
    q["signature"] = sig.hex()
    ev["tpm_quote"] = q
    with pytest.raises(SignatureInvalid):
        verify_azure_evidence(ev, now=NOW)


def test_tampered_pcr() -> None:
    ev = snp_v1_from_parts()
    q = dict(ev["tpm_quote"])  # type: ignore[call-overload]
    q["pcrs"] = ["00" * 32, *list(q["pcrs"][1:])]
    ev["tpm_quote"] = q
    with pytest.raises(BindingError, match="pcrDigest"):
        verify_azure_evidence(ev, now=NOW)


def test_unknown_envelope_version() -> None:
    ev = snp_v1_from_parts()
    ev["version"] = 9
    with pytest.raises(UnsupportedVersion):
        parse_azure_evidence(ev)


@pytest.mark.parametrize("data", [b"{}", b"[]", b"nope", b'{"version": 1, "tpm_quote": 3}'])
def test_malformed_envelopes(data: bytes) -> None:
    with pytest.raises(ParseError):
        verify_azure_evidence(data, now=NOW)


def test_truncated_hcl() -> None:
    with pytest.raises(ParseError):
        parse_hcl_report(vec("azure/az-snp-vtpm/hcl-report.bin")[:1300])


def test_b64url_is_strict() -> None:
    assert b64url_decode("-_8") == bytes.fromhex("fbff")
    with pytest.raises(ParseError):
        b64url_decode("ab$c")
