"""The verdict trusts evidence, never labels: a TEE the provider cannot deliver is refused
at create; `simulated` and `cvm_tee` come from the evidence kind."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from duet.attestation import SimulatedSnp
from duet.client.expectations import UserExpectations
from duet.controller.errors import TeeNotOffered
from duet.controller.serve import build_controller
from duet.cvm.cleanup import delete_all_local
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from logbuilder import LogBuilder, all_checks


def _controller(tmp_path: Path) -> tuple[Any, keys.Ed25519PrivateKey]:
    os.chmod(tmp_path, 0o755)
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    return build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub"), owner


def test_local_create_with_tee_tdx_is_refused_and_logs_nothing(tmp_path: Path) -> None:
    ctl, owner = _controller(tmp_path)

    async def scenario() -> str:
        await ctl.startup()
        jws = sign_intent(owner, op="cvm.create", aud=ctl.controller_id,
                          args={"provider": "local", "tee": "tdx"}, iat=int(time.time()))
        with pytest.raises(TeeNotOffered) as info:
            await ctl.submit(jws)
        await ctl.shutdown()
        return str(info.value)

    try:
        message = asyncio.run(scenario())
    finally:
        ctl.close()
    assert "cannot deliver TEE 'tdx'" in message and "offers simulated-snp" in message
    assert ctl.list_views() == []


def test_local_cvm_view_is_simulated_from_its_evidence_kind(tmp_path: Path) -> None:
    ctl, owner = _controller(tmp_path)

    async def scenario() -> tuple[dict[str, Any], list[dict[str, object]]]:
        await ctl.startup()
        jws = sign_intent(owner, op="cvm.create", aud=ctl.controller_id, args={"provider": "local"},
                          iat=int(time.time()))
        _, body = await ctl.submit(jws)
        cvm = body["cvm"]
        size = ctl.ledger.tree_head(cvm["id"]).size
        log = [entries.decode(leaf) for leaf in ctl.ledger.leaves(cvm["id"], 0, size)]
        await ctl.shutdown()
        return cvm, log

    try:
        cvm, log = asyncio.run(scenario())
    finally:
        delete_all_local(tmp_path / "data" / "cvms")
        ctl.close()
    assert cvm["tee"] == "simulated-snp" and cvm["evidence_kind"] == "simulated-snp" and cvm["simulated"] is True
    genesis = log[0]
    assert genesis["evidence_kind"] == "simulated-snp" and genesis["instance_binding"] == "host_data"
    evidence = [e for e in log if e["type"] == "evidence"]
    assert evidence and evidence[0]["kind"] == "simulated-snp"
    assert evidence[0]["binds"]["instance_binding"] == "host_data"  # type: ignore[index]
    attest = log[int(evidence[0]["command_index"])]  # type: ignore[call-overload]
    assert attest["action"] == "attest" and attest["builtin"] is True


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("snp"))


def _checks(log: LogBuilder, tee: str) -> dict[str, Any]:
    expect = UserExpectations.model_validate({"cvm": {"tee": tee}})
    return all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                      expect=expect)


def test_honest_log_passes_cvm_tee_from_its_evidence(snp: SimulatedSnp) -> None:
    checks = _checks(LogBuilder(snp).honest_life(), "simulated-snp")
    assert all(c.ok for c in checks.values()), {n: c.detail for n, c in checks.items() if not c.ok}
    assert "SIMULATED SEV-SNP" in checks["evidence"].detail


@pytest.mark.parametrize("declared", [None, "simulated-snp"])
def test_a_label_edited_into_the_log_fails_cvm_tee(snp: SimulatedSnp, declared: str | None) -> None:
    """genesis says `tee: tdx` (as a local create used to accept); the only evidence is
    SIMULATED SEV-SNP. Expecting tdx fails: the check reads the evidence, not the label."""
    log = LogBuilder(snp, tee="tdx", evidence_kind=declared)
    log.kind = "simulated-snp"  # what the (simulated) hardware actually produced
    log.honest_life()
    checks = _checks(log, "tdx")
    assert not checks["cvm_tee"].ok
    assert "simulated-snp" in checks["cvm_tee"].detail or "did not verify" in checks["cvm_tee"].detail
    if declared is None:
        # A log of an early controller: `tee` was the evidence kind, so the evidence
        # contradicts its own log.
        assert not checks["evidence"].ok and "not the kind declared" in checks["evidence"].detail
    else:
        assert checks["evidence"].ok
        assert _checks(log, "simulated-snp")["cvm_tee"].ok


def test_plain_vm_evidence_fails_and_says_why(snp: SimulatedSnp) -> None:
    log = LogBuilder(snp, provider="qemu", tee="none", evidence_kind="none", binding="none")
    create = log.intent("cvm.create", {"provider": "qemu"})
    log.add("provisioned", instance_id="q", host="127.0.0.1", port=2222, user="duet", host_key=log.host_key,
            host_key_sha256="00" * 32, launch={"tee_effective": "none"})
    log.add("evidence", kind="none", purpose="provisioning", nonce="00" * 32, evidence="", binds={})
    log.mode("in-update", "provisioning", 0)
    expect = UserExpectations.model_validate({"cvm": {"instance_binding": "none"}})
    checks = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                        expect=expect)
    assert not checks["evidence"].ok and "without a TEE" in checks["evidence"].detail
    assert create == 1


def test_a_record_of_an_earlier_controller_is_judged_by_what_its_provider_delivers(tmp_path: Path) -> None:
    """A local CVM created with the label `tdx` before creates were checked: its view says
    SIMULATED, because local CVMs only ever produce SIMULATED SEV-SNP evidence."""
    from duet.controller.state import CvmRecord

    ctl, _ = _controller(tmp_path)
    try:
        rec = CvmRecord(id="0011223344556677", name="old", provider="local", tee="tdx", created_at="")
        ctl.ledger.create_log(rec.id)
        ctl._fill_offer(rec)
        view = ctl.view(rec)
    finally:
        ctl.close()
    assert view["tee"] == "tdx"  # the label is shown as what it is
    assert view["evidence_kind"] == "simulated-snp" and view["simulated"] is True
