"""`tdx_roots`: DCAP roots pinned in place of Intel's for TDX quotes, by the owner for the
controller's own check of a provider's CVMs (a provider setting, refused under --tee
gramine: tests/controller/test_providers_by_intent.py), and by a user for `duet verify`
(`cvm.tdx_roots` in the expectations), as `snp_arks` is for SEV-SNP
(tests/controller/test_snp_arks_setting.py). A quote under a development root passes
only where that root is pinned, and its report says SIMULATED; pinned elsewhere, or not at
all, it is refused. The Azure TDX kind (its TD quote) goes through the same pin:
tests/providers/test_azure_tdx_twin_flow.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet.attestation import cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import UntrustedRoot
from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.client.cvm_checks import pinned_tdx_roots, user_trust
from duet.client.errors import ClientError
from duet.client.expectations import load_expectations
from duet.controller.providers_config import default_builder
from duet.cvm.errors import CvmError
from duet.ledger import keys

GCP = {"project": "p", "zone": "europe-west4-a"}
NONCE = bytes(range(32))


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _host_key() -> str:
    public = keys.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _entry(tdx: SimulatedTdx, host_key: str) -> dict[str, Any]:
    """A configfs-tsm TDX evidence entry (GCP's kind): `tdx`'s quote with its collateral."""
    quote = tdx.quote(cvm_report_data(NONCE, host_key))
    return {"kind": "tdx", "nonce": NONCE.hex(), "evidence": base64.b64encode(quote).decode(),
            "collateral": tdx.collateral()}


def _verify(entry: dict[str, Any], host_key: str, trust: cvm_kinds.Trust) -> Any:
    return cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC), trust=trust,
                                     binding="none").report


def test_the_controller_trusts_exactly_the_roots_the_setting_names(tmp_path: Path) -> None:
    dev, other = SimulatedTdx.load_or_create(tmp_path / "dev"), SimulatedTdx.load_or_create(tmp_path / "other")
    build = default_builder("https://pccs.example.org")
    host_key = _host_key()
    entry = _entry(dev, host_key)
    _, pinned = build("gcp", {**GCP, "tdx_roots": [_pem(dev.root_ca_der)]}, None)
    assert pinned.trust.tdx_roots == (dev.root_ca_der,)  # type: ignore[attr-defined]
    report = _verify(entry, host_key, pinned.trust)  # type: ignore[attr-defined]
    assert report.simulated and report.to_dict()["simulated"]  # the controller's report of it says so
    _, elsewhere = build("gcp", {**GCP, "tdx_roots": [_pem(other.root_ca_der)]}, None)
    with pytest.raises(UntrustedRoot):
        _verify(entry, host_key, elsewhere.trust)  # type: ignore[attr-defined]
    _, intel_only = build("gcp", dict(GCP), None)
    assert intel_only.trust.tdx_roots is None  # type: ignore[attr-defined]
    with pytest.raises(UntrustedRoot):
        _verify(entry, host_key, intel_only.trust)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("roots", "why"), [
    ("not a list", "non-empty list of PEM certificates"),
    ([], "non-empty list of PEM certificates"),
    ([7], "non-empty list of PEM certificates"),
    (["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"], "tdx_roots"),
    ("intermediate", "not self-signed"),
    ("leaf", "not a CA certificate"),
    ("two", "exactly one certificate"),
])
def test_a_pin_that_can_anchor_no_chain_is_refused_by_name(tmp_path: Path, roots: Any, why: str) -> None:
    dev = SimulatedTdx.load_or_create(tmp_path / "dev")
    chain = x509.load_pem_x509_certificates(str(dev.collateral()["tcb_info_issuer_chain"]).encode())
    tcb_signing, root = chain[0], chain[-1]
    assert root.public_bytes(serialization.Encoding.DER) == dev.root_ca_der
    if roots == "intermediate":  # the PCK platform CA, a CA the root issued
        pck_ca = x509.load_pem_x509_certificates(str(dev.collateral()["pck_crl_issuer_chain"]).encode())[0]
        roots = [pck_ca.public_bytes(serialization.Encoding.PEM).decode()]
    elif roots == "leaf":
        roots = [tcb_signing.public_bytes(serialization.Encoding.PEM).decode()]
    elif roots == "two":
        roots = [str(dev.collateral()["tcb_info_issuer_chain"])]
    with pytest.raises(CvmError, match=why) as info:
        default_builder("https://pccs.example.org")("gcp", {**GCP, "tdx_roots": roots}, None)
    assert str(info.value).startswith("provider gcp: ")


def test_an_sev_snp_root_is_no_dcap_root(tmp_path: Path) -> None:
    """Each setting is checked with its vendor's scheme: AMD's ARK (RSA-PSS) as a
    `tdx_roots` pin is still a self-signed CA, and then anchors no DCAP chain; the
    reverse, a DCAP root (ECDSA) as `snp_arks`, fails AMD's signature check at once."""
    snp = SimulatedSnp.load_or_create(tmp_path / "snp")
    tdx = SimulatedTdx.load_or_create(tmp_path / "tdx")
    with pytest.raises(CvmError, match="not RSASSA-PSS"):
        default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [_pem(tdx.root_ca_der)]}, None)
    _, wrong = default_builder("https://pccs.example.org")("gcp", {**GCP, "tdx_roots": [snp.ark_pem.decode()]}, None)
    host_key = _host_key()
    with pytest.raises(UntrustedRoot):
        _verify(_entry(tdx, host_key), host_key, wrong.trust)  # type: ignore[attr-defined]


def test_the_user_pins_roots_in_the_expectations_as_text_or_files(tmp_path: Path) -> None:
    dev, other = SimulatedTdx.load_or_create(tmp_path / "dev"), SimulatedTdx.load_or_create(tmp_path / "other")
    (tmp_path / "root.der").write_bytes(dev.root_ca_der)  # DER, as SimulatedTdx writes it
    (tmp_path / "root.pem").write_text(_pem(dev.root_ca_der))
    host_key = _host_key()
    for pin in ("root.der", "root.pem", _pem(dev.root_ca_der)):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"tee": "tdx", "tdx_roots": [pin]}}))
        expect = load_expectations(tmp_path / "expect.yaml")
        assert pinned_tdx_roots(expect) == (dev.root_ca_der,)
        trust = user_trust(expect, simulated=False)
        assert trust.tdx_roots == (dev.root_ca_der,) and trust.snp_arks is None
        assert _verify(_entry(dev, host_key), host_key, trust).simulated
    # What the caller passes wins over the expectations (library callers, tests).
    assert user_trust(expect, simulated=False, tdx_roots=(other.root_ca_der,)).tdx_roots == (other.root_ca_der,)
    with pytest.raises(UntrustedRoot):
        _verify(_entry(dev, host_key), host_key, user_trust(None, simulated=False))
    for bad, why in (([_pem(other.root_ca_der) + _pem(dev.root_ca_der)], "exactly one certificate"),
                     (["missing.der"], "cannot read"), ([], "at least one DCAP root")):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"tdx_roots": bad}}))
        with pytest.raises(ClientError, match=why) as info:
            load_expectations(tmp_path / "expect.yaml")
        assert info.value.code == "invalid_expectations" and "tdx_roots" in str(info.value)
    assert pinned_tdx_roots(None) is None
