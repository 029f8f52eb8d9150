"""`snp_arks`: SEV-SNP roots pinned in place of AMD's ARKs, by the owner for the
controller's own check of a provider's CVMs (a provider setting, refused under --tee
gramine: tests/controller/test_providers_by_intent.py), and by a user for `duet verify`
(`cvm.snp_arks` in the expectations). Evidence signed under a development root passes
only where that root is pinned, and its report says SIMULATED; pinned elsewhere, or not
at all, it is refused."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from duet.attestation import cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import UntrustedRoot
from duet.attestation.simulated.snp import SimulatedSnp
from duet.client.cvm_checks import pinned_snp_arks
from duet.client.errors import ClientError
from duet.client.expectations import load_expectations
from duet.controller.providers_config import default_builder
from duet.cvm.errors import CvmError
from duet.ledger import keys

GCP = {"project": "p", "zone": "europe-west4-a"}
NONCE = bytes(range(32))


def _host_key() -> str:
    public = keys.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _entry(snp: SimulatedSnp, host_key: str) -> dict[str, Any]:
    """A configfs-tsm SEV-SNP evidence entry (GCP's kind) signed by `snp`'s dev VCEK."""
    report = snp.report(cvm_report_data(NONCE, host_key), measurement=bytes(48))
    return {"kind": "snp", "nonce": NONCE.hex(), "evidence": base64.b64encode(report).decode(),
            "collateral": {"vcek": base64.b64encode(snp.vcek_der).decode(), "cert_chain": snp.cert_chain_pem.decode()}}


def _verify(entry: dict[str, Any], host_key: str, trust: cvm_kinds.Trust) -> Any:
    return cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC), trust=trust,
                                     binding="none").report


def test_the_controller_trusts_exactly_the_roots_the_setting_names(tmp_path: Path) -> None:
    dev, other = SimulatedSnp.load_or_create(tmp_path / "dev"), SimulatedSnp.load_or_create(tmp_path / "other")
    build = default_builder("https://pccs.example.org")
    host_key = _host_key()
    entry = _entry(dev, host_key)
    _, pinned = build("gcp", {**GCP, "snp_arks": [dev.ark_pem.decode()]}, None)
    report = _verify(entry, host_key, pinned.trust)  # type: ignore[attr-defined]
    assert report.simulated  # the controller's report of it says so
    _, elsewhere = build("gcp", {**GCP, "snp_arks": [other.ark_pem.decode()]}, None)
    with pytest.raises(UntrustedRoot):
        _verify(entry, host_key, elsewhere.trust)  # type: ignore[attr-defined]
    _, amd_only = build("gcp", dict(GCP), None)
    with pytest.raises(UntrustedRoot):
        _verify(entry, host_key, amd_only.trust)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("arks", "why"), [
    ("not a list", "non-empty list of PEM certificates"),
    ([], "non-empty list of PEM certificates"),
    (["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"], "snp_arks"),
    ("ask", "not self-signed"),
    ("two", "exactly one certificate"),
])
def test_a_pin_that_can_anchor_no_chain_is_refused_by_name(tmp_path: Path, arks: Any, why: str) -> None:
    dev = SimulatedSnp.load_or_create(tmp_path / "dev")
    if arks == "ask":
        arks = [dev.ask_pem.decode()]
    elif arks == "two":
        arks = [dev.cert_chain_pem.decode()]
    with pytest.raises(CvmError, match=why) as info:
        default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": arks}, None)
    assert str(info.value).startswith("provider gcp: ")


def test_the_user_pins_roots_in_the_expectations_as_text_or_files(tmp_path: Path) -> None:
    dev = SimulatedSnp.load_or_create(tmp_path / "dev")
    (tmp_path / "ark.pem").write_bytes(dev.ark_pem)
    for pin in ("ark.pem", dev.ark_pem.decode()):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"tee": "snp", "snp_arks": [pin]}}))
        arks = pinned_snp_arks(load_expectations(tmp_path / "expect.yaml"))
        assert arks is not None and len(arks) == 1
        host_key = _host_key()
        assert _verify(_entry(dev, host_key), host_key, cvm_kinds.Trust(snp_arks=arks)).simulated
    for bad, why in (([dev.ask_pem.decode()], "not self-signed"), (["missing.pem"], "cannot read"),
                     ([], "at least one")):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"snp_arks": bad}}))
        with pytest.raises(ClientError, match=why) as info:
            load_expectations(tmp_path / "expect.yaml")
        assert info.value.code == "invalid_expectations" and "snp_arks" in str(info.value)
    assert pinned_snp_arks(None) is None
