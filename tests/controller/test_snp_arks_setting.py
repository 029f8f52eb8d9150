"""The provider setting `snp_arks` (controller/providers_config.snp_arks_setting): the
SEV-SNP roots a provider's evidence collector trusts instead of AMD's, set by intent,
logged, validated, and refused under --tee gramine."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.controller.test_providers_by_intent import AZURE, GCP, _leaves, _sign, _start
from tests.logbuilder import MEASUREMENT, host_key_for

from duet.attestation import cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import UntrustedRoot
from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.snp.certs import amd_roots, cert_der, load_cert
from duet.controller import errors
from duet.controller.evidence import NON_VENDOR_ROOT, EvidenceRefused, Fetched
from duet.controller.evidence_remote import RemoteEvidence
from duet.controller.providers_config import ProviderSetup, default_builder, load_providers_file
from duet.controller.service import Controller
from duet.controller.state import CvmRecord, StateStore
from duet.controller.statekey import StateKey
from duet.cvm.errors import CvmError
from duet.ledger import entries, keys
from duet.ledger.store import LedgerStore
from duet.tee.clock import TrustedClock
from duet.tee.simulated import SimulatedTee

HOST_KEY = host_key_for(b"snp-arks")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("dev-snp"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("other-snp"))


def _entry(snp: SimulatedSnp, nonce: bytes) -> dict[str, Any]:
    """An `snp` evidence entry as a GCP (configfs-tsm) guest's output becomes."""
    report = snp.report(cvm_report_data(nonce, HOST_KEY), measurement=MEASUREMENT)
    return {"kind": "snp", "nonce": nonce.hex(), "evidence": base64.b64encode(report).decode(),
            "collateral": {"vcek": base64.b64encode(snp.vcek_der).decode(), "cert_chain": snp.cert_chain_pem.decode()}}


def _check(collector: RemoteEvidence, snp: SimulatedSnp) -> cvm_kinds.Verified:
    """The controller's check of fresh evidence (`Collector.attest`), exactly."""
    return cvm_kinds.verify_evidence(_entry(snp, bytes(range(32))), host_key=HOST_KEY, now=datetime.now(UTC),
                                     trust=collector.trust, binding="none")


def _controller(tmp_path: Path, *, in_enclave: bool) -> tuple[Controller, keys.Ed25519PrivateKey]:
    owner = keys.Ed25519PrivateKey.generate()
    if not in_enclave:
        return _start(tmp_path, owner), owner
    state = StateStore(tmp_path / "state.sqlite")
    state.cipher = StateKey.generate()
    state.set_owner_keys({keys.key_id(owner.public_key()): keys.public_b64(owner.public_key())})
    ledger = LedgerStore(tmp_path / "ledger.sqlite")
    setup = ProviderSetup(state, in_enclave=True)
    providers, evidence = setup.load(ledger)
    return Controller(tmp_path, tee=SimulatedTee(tmp_path / "tee"), key=keys.Ed25519PrivateKey.generate(),
                      state=state, ledger=ledger, providers=providers, evidence=evidence, setup=setup), owner


def test_providers_set_with_snp_arks_makes_the_collector_trust_exactly_those_roots(
        tmp_path: Path, dev: SimulatedSnp, other: SimulatedSnp) -> None:
    ctl, owner = _controller(tmp_path, in_enclave=False)
    try:
        ark = dev.ark_pem.decode()
        ctl_settings = {"gcp": {**GCP, "snp_arks": [ark]}, "azure": {**AZURE, "snp_arks": [ark]}}
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": ctl_settings})))
        for name in ("gcp", "azure"):
            collector = ctl.evidence[name]
            assert isinstance(collector, RemoteEvidence)
            assert collector.trust.snp_arks == (dev.ark_pem,)
            verified = _check(collector, dev)
            assert verified.simulated, "a report under a non-AMD root must never read as AMD's"
            assert collector.non_vendor_roots
            with pytest.raises(UntrustedRoot):
                _check(collector, other)
        # The setting stands in the controller log (certificates only, public).
        logged = [entries.decode(leaf) for leaf in _leaves(ctl)]
        assert logged[-1]["type"] == "providers" and logged[-1]["providers"]["gcp"]["snp_arks"] == [ark]
        # The CVM view says SIMULATED for such a provider's CVMs, whatever the TEE.
        assert _view_simulated(ctl, "gcp")
        # Taken out again: AMD's roots only, the development ARK is untrusted.
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": GCP}})))
        assert ctl.evidence["gcp"].trust.snp_arks is None  # type: ignore[attr-defined]
        assert not ctl.evidence["gcp"].non_vendor_roots  # type: ignore[attr-defined]
        assert not _view_simulated(ctl, "gcp")
        with pytest.raises(UntrustedRoot):
            _check(ctl.evidence["gcp"], dev)  # type: ignore[arg-type]
    finally:
        ctl.close()


def _view_simulated(ctl: Controller, provider: str) -> bool:
    """`/v1/cvms/{id}`'s `simulated` for an `snp` CVM of `provider`, as if the controller
    ran in a real enclave (its TEE alone says nothing simulated)."""
    rec = CvmRecord(id="c0ffee00", name="c", provider=provider, tee="snp", created_at="-", evidence_kind="snp")
    tee, tree_head = ctl.tee, ctl.ledger.tree_head
    ctl.tee = SimpleNamespace(simulated=False)  # type: ignore[assignment]
    ctl.ledger.tree_head = lambda _log: SimpleNamespace(size=0, root_hash=b"")  # type: ignore[method-assign]
    try:
        return bool(ctl.view(rec)["simulated"])
    finally:
        ctl.tee, ctl.ledger.tree_head = tee, tree_head  # type: ignore[method-assign]


def test_the_collector_labels_evidence_under_a_pinned_root_simulated(dev: SimulatedSnp) -> None:
    """Through `Collector.attest`: the evidence entry says the root is not the vendor's."""
    _, collector = default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [dev.ark_pem.decode()]},
                                                               None)
    assert isinstance(collector, RemoteEvidence)
    appended: list[entries.Entry] = []

    async def fetch(port: Any, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        fields = _entry(dev, nonce)
        return Fetched(7, {"evidence": fields["evidence"], "collateral": fields["collateral"]})

    def append(items: list[entries.Entry]) -> int:
        appended.extend(items)
        return len(appended)

    rec = SimpleNamespace(kind="snp", host_key=HOST_KEY, binding="none", host_data=None, instance_id=None)
    port = SimpleNamespace(rec=rec, clock=TrustedClock(), append=append)
    collector.fetch = fetch  # type: ignore[method-assign]
    asyncio.run(collector.attest(port, intent_index=3, purpose="attest"))  # type: ignore[arg-type]
    evidence = [e for e in appended if isinstance(e, entries.EvidenceEntry)]
    assert len(evidence) == 1 and evidence[0].binds["root"] == NON_VENDOR_ROOT and "SIMULATED" in NON_VENDOR_ROOT
    # The same collector without the setting refuses it (AMD's roots only).
    _, amd_only = default_builder("https://pccs.example.org")("gcp", dict(GCP), None)
    amd_only.fetch = fetch  # type: ignore[attr-defined]
    appended.clear()
    with pytest.raises(EvidenceRefused, match=r"not a trusted root|no trusted ARK"):
        asyncio.run(amd_only.attest(port, intent_index=3, purpose="attest"))  # type: ignore[attr-defined]
    assert [type(e).__name__ for e in appended] == ["ErrorEntry"]


def test_snp_arks_refused_under_gramine_and_nothing_logged(tmp_path: Path, dev: SimulatedSnp) -> None:
    ctl, owner = _controller(tmp_path, in_enclave=True)
    try:
        before = _leaves(ctl)
        for name, base in (("azure", AZURE), ("gcp", GCP)):
            with pytest.raises(errors.InvalidRequest) as info:
                asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {
                    name: {**base, "snp_arks": [dev.ark_pem.decode()]}}})))
            message = info.value.message
            assert f"provider {name}" in message and "snp_arks refused under --tee gramine" in message
            assert "AMD's SEV-SNP roots only" in message
        # Both reasons, when both kinds of setting are named.
        with pytest.raises(errors.InvalidRequest) as info:
            asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"azure": {
                **AZURE, "arm_endpoint": "https://arm.example.org", "snp_arks": [dev.ark_pem.decode()]}}})))
        assert "arm_endpoint refused" in info.value.message and "snp_arks refused" in info.value.message
        assert ctl.providers == {} and _leaves(ctl) == before
    finally:
        ctl.close()


def _self_signed_pkcs1() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Milan")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now.replace(year=now.year + 1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384(), rsa_padding=padding.PKCS1v15()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _bad_roots(dev: SimulatedSnp, other: SimulatedSnp) -> list[tuple[object, str]]:
    ask = dev.cert_chain_pem.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    ark = dev.ark_pem.decode()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    body = ark.splitlines()
    broken = "\n".join([body[0], body[1][:10] + "A" * (len(body[1]) - 10), *body[2:]])
    return [
        ("not a list", "snp_arks must be a non-empty list"),
        ([], "snp_arks must be a non-empty list"),
        ([42], "snp_arks must be a non-empty list"),
        (["hello"], "snp_arks[0]: not a PEM certificate"),
        ([base64.b64encode(cert_der(amd_roots()["Milan"][0])).decode()], "not a PEM certificate"),
        ([broken], "snp_arks[0]"),
        ([ark, ask], "snp_arks[1]: SEV-Milan is not self-signed"),
        ([dev.cert_chain_pem.decode()], "holds 2 PEM blocks"),
        ([ark + key], "not a PEM certificate"),
        ([ark + key + ark], "holds 3 PEM blocks"),
        ([_self_signed_pkcs1()], "PSS"),
        ([_tampered(dev.ark_pem)], "snp_arks[0]: signature by ARK-Milan is invalid"),
    ]


def _tampered(pem: bytes) -> str:
    """The ARK with one bit of its own signature flipped: it parses and names itself."""
    der = bytearray(cert_der(load_cert(pem, "ARK")))
    der[-5] ^= 1
    return x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def test_malformed_or_not_self_signed_roots_are_refused_and_change_nothing(
        tmp_path: Path, dev: SimulatedSnp, other: SimulatedSnp) -> None:
    build = default_builder("https://pccs.example.org")
    for bad, why in _bad_roots(dev, other):
        with pytest.raises(CvmError, match="provider gcp: ") as info:
            build("gcp", {**GCP, "snp_arks": bad}, None)
        assert why in str(info.value), (bad, str(info.value))
        assert "PRIVATE KEY" not in str(info.value)
    ctl, owner = _controller(tmp_path, in_enclave=False)
    try:
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": {
            **GCP, "snp_arks": [other.ark_pem.decode()]}}})))
        before = _leaves(ctl)
        for bad, why in _bad_roots(dev, other)[3:]:
            with pytest.raises(errors.InvalidRequest) as info:
                asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"gcp": {
                    **GCP, "snp_arks": bad}}})))
            said = info.value.message
            assert said.startswith("provider gcp: snp_arks") and said.count("provider gcp") == 1, said
            assert why in said and "PRIVATE KEY" not in said, said
        assert _leaves(ctl) == before
        assert ctl.evidence["gcp"].trust.snp_arks == (other.ark_pem,)  # type: ignore[attr-defined]
    finally:
        ctl.close()


def test_amds_own_ark_may_be_pinned(dev: SimulatedSnp) -> None:
    """Pinning one of AMD's ARKs narrows the trust to that product line; it is valid."""
    milan = amd_roots()["Milan"][0].public_bytes(serialization.Encoding.PEM).decode()
    _, collector = default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": [milan]}, None)
    assert collector.trust.snp_arks == (milan.encode(),)  # type: ignore[attr-defined]
    assert not collector.non_vendor_roots  # type: ignore[attr-defined]
    with pytest.raises(UntrustedRoot):
        _check(collector, dev)  # type: ignore[arg-type]


def test_a_providers_file_names_the_roots_as_pem_text(dev: SimulatedSnp) -> None:
    """As `duet controller providers set FILE` reads it (a YAML block scalar per root)."""
    indented = "".join(f"      {line}\n" for line in dev.ark_pem.decode().splitlines())
    text = "gcp:\n" + "".join(f"  {k}: '{v}'\n" for k, v in GCP.items()) + "  snp_arks:\n    - |\n" + indented
    settings = load_providers_file(text, "providers.yaml")
    _, collector = default_builder("https://pccs.example.org")("gcp", settings["gcp"], None)
    assert collector.trust.snp_arks == (dev.ark_pem,)  # type: ignore[attr-defined]
    _check(collector, dev)  # type: ignore[arg-type]
