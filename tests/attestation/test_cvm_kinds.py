"""The registry of CVM evidence kinds: complete, shared by controller and user, and the
instance binding each provider declares is exactly what is checked."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from duet.attestation import SimulatedSnp, cvm_kinds
from duet.attestation.binding import cvm_report_data, mrconfigid_for
from duet.attestation.cvm_kinds import CvmKind, EvidenceFormat, InstanceBinding
from duet.attestation.detect import KINDS as DETECT_KINDS
from duet.attestation.errors import AttestationError, BindingError
from duet.client.expectations import CVM_TEES, UserExpectations
from duet.cvm.azure import AzureProvider
from duet.cvm.gcp import GcpProvider
from duet.cvm.local import LocalProvider
from duet.cvm.qemu import QemuProvider
from duet.tee.clock import TrustedClock
from logbuilder import LogBuilder, all_checks, host_key_for


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("snp"))


def test_every_kind_has_parse_verify_claims_and_bindings() -> None:
    for kind in CvmKind:
        if kind is CvmKind.NONE:
            assert kind not in cvm_kinds.REGISTRY  # nothing to verify: always refused
            continue
        spec = cvm_kinds.REGISTRY[kind]
        assert callable(spec.parse) and callable(spec.verify) and callable(spec.claims)
        assert spec.bindings and InstanceBinding.NONE in spec.bindings
        assert spec.format is cvm_kinds.FORMAT_OF[kind]
        assert spec.label
    assert set(cvm_kinds.FORMAT_OF) == set(CvmKind)
    # The other lists of kinds are derived from the enums, not spelled again.
    assert set(DETECT_KINDS) == {f.value for f in EvidenceFormat}
    assert set(CVM_TEES) == ({k.value for k in CvmKind} - {"none"}) | set(cvm_kinds.REPORTED_ONLY_KINDS)


def test_every_provider_declares_what_it_delivers() -> None:
    offers = {p.name: p.tees for p in (LocalProvider, QemuProvider, GcpProvider, AzureProvider)}
    for name, tees in offers.items():
        assert tees, name
        for offer in tees.values():
            assert offer.evidence_kind == CvmKind.NONE or offer.evidence_kind in cvm_kinds.REGISTRY
            if offer.evidence_kind != CvmKind.NONE:
                assert offer.binding in cvm_kinds.REGISTRY[offer.evidence_kind].bindings
    assert set(offers["local"]) == {"simulated-snp", "simulated-tdx"}  # simulated kinds only
    assert offers["qemu"]["snp"].binding is InstanceBinding.HOST_DATA
    assert offers["qemu"]["tdx"].binding is InstanceBinding.MRCONFIGID
    assert {o.binding for o in offers["gcp"].values()} == {InstanceBinding.NONE}
    assert {o.binding for o in offers["azure"].values()} == {InstanceBinding.VM_ID}
    assert offers["azure"]["snp"].evidence_kind == CvmKind.AZURE_SNP


def test_resolve_offer_refuses_what_the_provider_cannot_deliver() -> None:
    tee, offer = cvm_kinds.resolve_offer("local", LocalProvider.tees, None)
    assert (tee, offer.evidence_kind) == ("simulated-snp", CvmKind.SIMULATED_SNP)
    for asked in ("tdx", "snp", "none"):
        with pytest.raises(cvm_kinds.TeeNotOffered, match="offers simulated-snp"):
            cvm_kinds.resolve_offer("local", LocalProvider.tees, asked)


def _snp_entry(snp: SimulatedSnp, host_key: str, nonce: bytes, host_data: bytes, kind: str = "snp") -> dict[str, Any]:
    report = snp.report(cvm_report_data(nonce, host_key), measurement=bytes(48), host_data=host_data)
    return {"kind": kind, "nonce": nonce.hex(), "evidence": base64.b64encode(report).decode(),
            "collateral": {"vcek": base64.b64encode(snp.vcek_der).decode(),
                           "cert_chain": snp.cert_chain_pem.decode()}}


def _host_key() -> str:
    return host_key_for(b"duet-test")


@pytest.mark.parametrize("binding,report_hd,ok", [
    ("host_data", "5a" * 32, True),       # qemu SNP: HOST_DATA is the per-CVM value
    ("host_data", "00" * 32, False),
    ("none", "00" * 32, True),           # GCP SNP: nothing per-CVM is compared
])
def test_snp_instance_binding(snp: SimulatedSnp, binding: str, report_hd: str, ok: bool) -> None:
    from datetime import UTC, datetime

    host_key, nonce = _host_key(), b"\x07" * 32
    entry = _snp_entry(snp, host_key, nonce, bytes.fromhex(report_hd))
    run = lambda: cvm_kinds.verify_evidence(  # noqa: E731
        entry, host_key=host_key, now=datetime.now(UTC), trust=cvm_kinds.Trust(snp_arks=(snp.ark_pem,)),
        binding=binding, host_data="5a" * 32)
    if ok:
        assert run().kind == "snp"
    else:
        with pytest.raises(BindingError, match="host_data"):
            run()


def test_tdx_mrconfigid_and_azure_vm_id_bindings() -> None:
    """The claims the TDX and Azure kinds expose are compared with the per-CVM value."""
    tdx = cvm_kinds.REGISTRY["tdx"]
    good = SimpleNamespace(mrconfigid=mrconfigid_for("5a" * 32).hex(), mrtd="00")
    cvm_kinds._check_instance(tdx, good, InstanceBinding.MRCONFIGID, "5a" * 32, None)
    with pytest.raises(BindingError, match="mrconfigid"):
        cvm_kinds._check_instance(tdx, SimpleNamespace(mrconfigid="00" * 48, mrtd="00"),
                                  InstanceBinding.MRCONFIGID, "5a" * 32, None)
    with pytest.raises(BindingError, match="cannot carry"):
        cvm_kinds._check_instance(tdx, good, InstanceBinding.HOST_DATA, "5a" * 32, None)
    az = cvm_kinds.REGISTRY["azure-snp"]
    cvm_kinds._check_instance(az, SimpleNamespace(vm_id="ABC-1"), InstanceBinding.VM_ID, None, "abc-1")
    with pytest.raises(BindingError, match="vm_id"):
        cvm_kinds._check_instance(az, SimpleNamespace(vm_id="other"), InstanceBinding.VM_ID, None, "abc-1")


def test_gcp_snp_cvm_with_zero_host_data_verifies_only_when_accepted(snp: SimulatedSnp) -> None:
    """GCP sets no HOST_DATA: its reports carry zeros. The log declares binding `none`;
    the user must accept it explicitly, then the host-key binding alone verifies."""
    log = LogBuilder(snp, provider="gcp", tee="snp", evidence_kind="snp", binding="none")
    create = log.intent("cvm.create", {"provider": "gcp"})
    log.add("provisioned", instance_id="gcp-1", host="203.0.113.5", port=22, user="duet",
            host_key=log.host_key, host_key_sha256="00" * 32, launch={})
    log.evidence("provisioning", create, report_host_data="00" * 32)
    log.mode("in-update", "provisioning", 0)
    leaves = log.leaves()

    def checks(expect: dict[str, Any] | None) -> Mapping[str, Any]:
        e = UserExpectations.model_validate(expect) if expect is not None else None
        return all_checks(leaves, controller_id=log.controller_id, controller_key=log.controller_key, expect=e,
                          snp_arks=(snp.ark_pem,))

    accepted = checks({"cvm": {"instance_binding": "none", "tee": "snp"}})
    assert accepted["evidence"].ok, accepted["evidence"].detail
    assert accepted["cvm_tee"].ok
    refused = checks(None)
    assert not refused["evidence"].ok and "instance_binding: none" in refused["evidence"].detail
    # Today's rule (HOST_DATA compared with genesis) would fail this CVM: it is not applied.
    strict = checks({"cvm": {"instance_binding": "host_data"}})
    assert not strict["evidence"].ok and "declares no instance binding" in strict["evidence"].detail


def test_a_fake_kind_flows_through_the_controller_and_the_user(snp: SimulatedSnp) -> None:
    """One kind registered here is verified by the controller's collector flow and by
    the user's checks through the very same functions."""
    import asyncio

    from duet.controller.evidence import Collector, Fetched
    from duet.controller.state import CvmRecord

    calls: list[str] = []

    def parse(entry: Mapping[str, Any]) -> bytes:
        return base64.b64decode(str(entry["evidence"]))

    def verify(raw: bytes, expected: bytes, now: Any, trust: cvm_kinds.Trust) -> Any:
        calls.append("verify")
        if raw[:64] != expected:
            raise BindingError("fake report data is not the binding")
        return SimpleNamespace(host_data=raw[64:].hex(), simulated=True)

    spec = cvm_kinds.register(cvm_kinds.KindSpec(
        "fake-tee", "FAKE TEE", True, frozenset({InstanceBinding.HOST_DATA, InstanceBinding.NONE}), parse, verify,
        lambda r: {"host_data": r.host_data}))
    try:
        log = LogBuilder(snp, provider="fake", tee="fake-tee", evidence_kind="fake-tee", binding="host_data")
        rec = CvmRecord(id="c1", name="c1", provider="fake", tee="fake-tee", created_at="", host_key=log.host_key,
                        host_data=log.host_data, evidence_kind="fake-tee", instance_binding="host_data")
        appended: list[Any] = []

        class Port:
            def __init__(self) -> None:
                self.rec = rec

            async def execute(self, command: str, **kw: Any) -> Any:
                i = log.command(command, 1, action="attest", builtin=True)
                return SimpleNamespace(command_index=i, result_index=i + 1, result=None)

            def append(self, items: Any) -> int:
                for item in items:
                    d = item.to_dict()
                    appended.append(d)
                    log.entries.append(d)
                return len(log.entries) - len(items)

            def client_key_line(self) -> str:
                return ""

            clock = TrustedClock()

        class FakeCollector(Collector):
            trust = cvm_kinds.Trust(simulated=True)

            async def run_lockdown(self, port: Any, intent_index: Any) -> list[Any]:
                return []

            async def fetch(self, port: Any, kind: str, nonce: bytes, *, intent_index: Any) -> Fetched:
                outcome = await port.execute(f"fake-attest {nonce.hex()}", timeout=1.0, action="attest",
                                             intent_index=intent_index)
                raw = cvm_report_data(nonce, log.host_key) + bytes.fromhex(log.host_data)
                return Fetched(outcome.command_index, {"evidence": base64.b64encode(raw).decode()})

        create = log.intent("cvm.create", {"provider": "local"})
        log.add("provisioned", instance_id="c1", host="h", port=22, user="duet", host_key=log.host_key,
                host_key_sha256="00" * 32, launch={})
        asyncio.run(FakeCollector().attest(Port(), intent_index=create, purpose="provisioning"))
        assert appended and appended[-1]["kind"] == "fake-tee" and calls == ["verify"]
        log.mode("in-update", "provisioning", 0)
        checks = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                            expect=UserExpectations.model_validate({"cvm": {"tee": "snp"}}))
        assert calls == ["verify", "verify"]  # the user ran the same verifier
        assert checks["evidence"].ok, checks["evidence"].detail
        assert "FAKE TEE" in checks["evidence"].detail and checks["evidence"].simulated
        assert not checks["cvm_tee"].ok and "fake-tee" in checks["cvm_tee"].detail
    finally:
        cvm_kinds.unregister(spec.kind)
    # Unregistered, the same evidence is refused by name.
    with pytest.raises(AttestationError, match="not supported"):
        cvm_kinds.spec_of("fake-tee")


def test_kind_none_is_refused_and_says_why() -> None:
    with pytest.raises(cvm_kinds.NoEvidence, match="without a TEE"):
        cvm_kinds.verify_evidence({"kind": "none", "nonce": "00" * 32}, host_key="", now=None,  # type: ignore[arg-type]
                                  trust=cvm_kinds.Trust(), binding="none")


def test_simulated_kinds_need_trust(snp: SimulatedSnp) -> None:
    from datetime import UTC, datetime

    host_key, nonce = _host_key(), b"\x08" * 32
    entry = _snp_entry(snp, host_key, nonce, bytes(32), kind="simulated-snp")
    with pytest.raises(cvm_kinds.SimulatedRefused, match="SIMULATED"):
        cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC), trust=cvm_kinds.Trust(),
                                  binding="none")
    got = cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC),
                                    trust=cvm_kinds.Trust(simulated=True), binding="none")
    assert got.simulated and got.label == "SIMULATED SEV-SNP"
