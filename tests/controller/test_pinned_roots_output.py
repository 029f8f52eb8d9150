"""What the controller says about evidence it checked under a root its provider settings
pin instead of the vendor's (`snp_arks`): never that it is AMD-rooted. The evidence entry
says SIMULATED (`binds.root`), the CVM's view says `simulated`; and a pin that carries
anything but one certificate (a private key pasted beside it) never reaches the public
controller log."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.controller.test_providers_by_intent import GCP, _leaves, _sign, _start
from tests.logbuilder import MEASUREMENT, host_key_for

from duet.attestation.binding import cvm_report_data
from duet.attestation.simulated.snp import SimulatedSnp
from duet.controller import errors
from duet.controller.evidence import NON_VENDOR_ROOT, EvidenceRefused, Fetched
from duet.controller.providers_config import default_builder
from duet.controller.service import Controller
from duet.controller.state import CvmRecord
from duet.cvm.errors import CvmError
from duet.ledger import entries, keys
from duet.tee.clock import TrustedClock

HOST_KEY = host_key_for(b"pinned-roots")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("dev-snp"))


def _attest(collector: Any, snp: SimulatedSnp) -> list[entries.Entry]:
    """`Collector.attest` for an `snp` CVM whose guest answers with a report `snp` signed."""
    appended: list[entries.Entry] = []

    async def fetch(port: Any, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        report = snp.report(cvm_report_data(nonce, HOST_KEY), measurement=MEASUREMENT)
        return Fetched(7, {"evidence": base64.b64encode(report).decode(),
                           "collateral": {"vcek": base64.b64encode(snp.vcek_der).decode(),
                                          "cert_chain": snp.cert_chain_pem.decode()}})

    def append(items: list[entries.Entry]) -> int:
        appended.extend(items)
        return len(appended)

    rec = SimpleNamespace(kind="snp", host_key=HOST_KEY, binding="none", host_data=None, instance_id=None)
    collector.fetch = fetch
    port = SimpleNamespace(rec=rec, clock=TrustedClock(), append=append)
    try:
        asyncio.run(collector.attest(port, intent_index=3, purpose="attest"))
    finally:
        del collector.fetch
    return appended


def test_evidence_under_a_pinned_root_is_logged_simulated(dev: SimulatedSnp) -> None:
    build = default_builder("https://pccs.example.org")
    _, pinned = build("gcp", {**GCP, "snp_arks": [dev.ark_pem.decode()]}, None)
    (evidence,) = [e for e in _attest(pinned, dev) if isinstance(e, entries.EvidenceEntry)]
    assert evidence.binds["root"] == NON_VENDOR_ROOT and NON_VENDOR_ROOT.startswith("SIMULATED")
    assert "not to the hardware vendor's" in NON_VENDOR_ROOT
    # Without the setting: AMD's roots only, refused and said so (nothing labelled).
    _, amd_only = build("gcp", dict(GCP), None)
    with pytest.raises(EvidenceRefused, match=r"not a trusted root|no trusted ARK"):
        _attest(amd_only, dev)


def test_amds_own_ark_pinned_is_not_labelled(dev: SimulatedSnp) -> None:
    """Pinning one of AMD's ARKs narrows trust to it: nothing non-vendor about that."""
    from duet.attestation.snp.certs import amd_roots

    milan = amd_roots()["Milan"][0].public_bytes(serialization.Encoding.PEM).decode()
    _, collector = default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [milan]}, None)
    assert not collector.non_vendor_roots  # type: ignore[attr-defined]
    _, dev_pinned = default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [
        milan, dev.ark_pem.decode()]}, None)
    assert dev_pinned.non_vendor_roots  # type: ignore[attr-defined]


def _view_simulated(ctl: Controller, provider: str) -> bool:
    """`/v1/cvms/{id}`'s `simulated` for an `snp` CVM of `provider`, as if the controller
    ran in a real enclave (its TEE alone then says nothing simulated)."""
    rec = CvmRecord(id="c0ffee00", name="c", provider=provider, tee="snp", created_at="-", evidence_kind="snp")
    tee, tree_head = ctl.tee, ctl.ledger.tree_head
    ctl.tee = SimpleNamespace(simulated=False)  # type: ignore[assignment]
    ctl.ledger.tree_head = lambda _log: SimpleNamespace(size=0, root_hash=b"")  # type: ignore[method-assign]
    try:
        return bool(ctl.view(rec)["simulated"])
    finally:
        ctl.tee, ctl.ledger.tree_head = tee, tree_head  # type: ignore[method-assign]


def test_the_cvm_view_says_simulated_under_pinned_roots(tmp_path: Path, dev: SimulatedSnp) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": GCP}})))
        assert not _view_simulated(ctl, "gcp")
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": {
            **GCP, "snp_arks": [dev.ark_pem.decode()]}}})))
        assert _view_simulated(ctl, "gcp")
    finally:
        ctl.close()


def test_a_pin_with_anything_beside_the_certificate_is_refused_and_not_logged(
        tmp_path: Path, dev: SimulatedSnp) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    ark = dev.ark_pem.decode()
    for bad in (ark + key, key + ark, ark + "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"):
        with pytest.raises(CvmError, match="a PEM certificate and nothing else") as info:
            default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [bad]}, None)
        assert "PRIVATE KEY" not in str(info.value) and "MII" not in str(info.value)
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        before = _leaves(ctl)
        with pytest.raises(errors.InvalidRequest, match="snp_arks"):
            asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": {
                **GCP, "snp_arks": [ark + key]}}})))
        assert _leaves(ctl) == before
        assert not any(b"PRIVATE KEY" in leaf for leaf in _leaves(ctl))
    finally:
        ctl.close()
