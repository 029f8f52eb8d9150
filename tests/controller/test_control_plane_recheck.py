"""The periodic control-plane re-check (controller/providers_config.py): a door opened in
the cloud API while a CVM is in service is logged by the next re-check, and `duet verify`
(the user's control_plane check) fails on it; so does a re-check that could not read the
model at all."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from test_control_plane_flow import Cloud, facts

from duet.client.cvm_checks import control_plane_checks
from duet.controller import providers_config
from duet.controller.serve import build_controller
from duet.controller.service import Controller
from duet.controller.state import CvmRecord
from duet.ledger import entries, keys

CVM = "0123456789abcdef"


def _controller(tmp_path: Path) -> Controller:
    os.chmod(tmp_path, 0o755)
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub")
    rec = CvmRecord(id=CVM, name="web", provider="azure", tee="snp", created_at=entries.now_rfc3339(),
                    status="ready", mode="in-service", host="192.0.2.1", port=22, user="duet")
    ctl.state.put_cvm(rec, b"")
    ctl._records[CVM] = rec
    ctl.ledger.create_log(CVM)
    ctl.append(rec, [entries.GenesisEntry(
        cvm_id=CVM, origin=ctl.origin(CVM), controller_id=ctl.controller_id,
        controller_key=keys.public_b64(ctl.public_key), owner_keys=(), policy="", policy_sha256="00" * 32,
        tee="snp", provider="azure", spec={})])
    return ctl


def _log(ctl: Controller) -> list[dict[str, Any]]:
    size = ctl.ledger.tree_head(CVM).size
    return [entries.decode(leaf) for leaf in ctl.ledger.leaves(CVM, 0, size)]


def test_recheck_logs_a_door_opened_behind_the_controllers_back(tmp_path: Path) -> None:
    ctl = _controller(tmp_path)
    model: dict[str, Any] = {"facts": facts(), "model_sha256": "ab" * 32}

    async def inspect(cvm_id: str) -> dict[str, Any]:
        assert cvm_id == CVM
        if isinstance(model.get("error"), Exception):
            raise model["error"]
        return model

    cloud = Cloud()
    cloud.inspector = inspect
    ctl.evidence["azure"] = cloud
    try:
        assert asyncio.run(ctl.setup.recheck_all()) == []
        log = _log(ctl)
        assert log[-1]["type"] == "control_plane" and log[-1]["purpose"] == "recheck" and log[-1]["ok"] is True
        assert control_plane_checks(log)[0].ok
        # Boot diagnostics turned on in the cloud, behind the controller's back.
        model.update(facts=facts(boot_diagnostics=True), model_sha256="cd" * 32)
        assert asyncio.run(ctl.setup.recheck_all()) == [CVM]
        log = _log(ctl)
        assert [e["type"] for e in log[-2:]] == ["control_plane", "error"] and log[-2]["ok"] is False
        verdict = control_plane_checks(log)[0]
        assert not verdict.ok and "boot_diagnostics_off" in verdict.detail
        # Back to closed, then the model cannot be read at all: unknown is not closed.
        model.update(facts=facts(), model_sha256="ab" * 32)
        asyncio.run(ctl.setup.recheck_all())
        assert control_plane_checks(_log(ctl))[0].ok
        model["error"] = TimeoutError("ARM did not answer")
        assert asyncio.run(ctl.setup.recheck_all()) == [CVM]
        verdict = control_plane_checks(_log(ctl))[0]
        assert not verdict.ok and "could not be read after the newest inspection" in verdict.detail
    finally:
        ctl.close()


def test_the_recheck_runs_on_its_interval(tmp_path: Path, monkeypatch: Any) -> None:
    ctl = _controller(tmp_path)
    seen: list[str] = []

    async def inspect(cvm_id: str) -> dict[str, Any]:
        seen.append(cvm_id)
        return {"facts": facts(), "model_sha256": "ab" * 32}

    cloud = Cloud()
    cloud.inspector = inspect
    ctl.evidence["azure"] = cloud
    monkeypatch.setattr(providers_config, "RECHECK_MIN_S", 0)
    ctl.setup.recheck_s = 0

    async def scenario() -> None:
        ctl.setup.start()
        for _ in range(200):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
        await ctl.setup.stop()

    try:
        asyncio.run(scenario())
        assert len(seen) >= 2
        assert sum(1 for e in _log(ctl) if e["type"] == "control_plane") >= 2
    finally:
        ctl.close()
