"""The predecessor's side of the handover, in process: what it refuses, and that it acts
no more once it handed over (controller/continuity.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from duet.controller import errors
from duet.controller.continuity import HandedOver, HandoverRefused, request_report_data
from duet.controller.serve import SimulatedPlatform, build_controller
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.ledger import entries
from duet.tee.simulated import SimulatedTee

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def _predecessor(tmp_path: Path) -> Controller:
    os.chmod(tmp_path, 0o755)
    ctl = build_controller(tmp_path / "a", simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    ctl._append_controller([entries.BuildApprovedEntry(mrenclave=B)])
    return ctl


def _request(tee: SimulatedTee, challenge: str, *, bound_key: bytes | None = None) -> dict[str, Any]:
    key = secrets.token_bytes(32)
    q = tee.quote(request_report_data(bound_key or key, bytes.fromhex(challenge)))
    return {"challenge": challenge, "nonce": secrets.token_hex(32), "public_key": base64.b64encode(key).decode(),
            "quote": base64.b64encode(q.quote).decode(), "collateral": q.collateral,
            "simulated_root_ca": base64.b64encode(q.simulated_root_ca or b"").decode()}


def _types(ctl: Controller) -> list[str]:
    size = ctl.ledger.tree_head(CONTROLLER_LOG).size
    return [entries.decode(x)["type"] for x in ctl.ledger.leaves(CONTROLLER_LOG, 0, size)]


def test_refusals_hand_over_nothing(tmp_path: Path) -> None:
    ctl = _predecessor(tmp_path)
    b = SimulatedTee(tmp_path / "b-tee", mrenclave=bytes.fromhex(B))
    try:
        # A quote of an approved build that binds another key (a relayed quote): refused.
        body = _request(b, ctl.handover.challenge()["challenge"], bound_key=secrets.token_bytes(32))
        with pytest.raises(HandoverRefused, match="bind"):
            asyncio.run(ctl.handover.handover(body))
        # The challenge is single use, and made-up challenges are unknown.
        with pytest.raises(errors.InvalidRequest, match="challenge"):
            asyncio.run(ctl.handover.handover(body))
        with pytest.raises(errors.InvalidRequest, match="challenge"):
            asyncio.run(ctl.handover.handover(_request(b, secrets.token_hex(32))))
        # An unapproved build: refused and logged.
        c = SimulatedTee(tmp_path / "c-tee", mrenclave=bytes.fromhex(C))
        with pytest.raises(HandoverRefused, match="not approved"):
            asyncio.run(ctl.handover.handover(_request(c, ctl.handover.challenge()["challenge"])))
        assert "handover" not in _types(ctl) and _types(ctl)[-1] == "handover_refused"
        assert ctl.deposed is None
        # The approved build: the handover entry first, then this instance acts no more.
        answer = asyncio.run(ctl.handover.handover(_request(b, ctl.handover.challenge()["challenge"])))
        assert _types(ctl)[-1] == "handover" and answer["handover_index"] == len(_types(ctl)) - 1
        assert b"PRIVATE KEY" not in base64.b64decode(answer["ciphertext"])
        with pytest.raises(HandedOver):
            ctl.authenticate("x.y.z")
    finally:
        ctl.close()
    # ... also after a restart.
    again = build_controller(tmp_path / "a", simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    try:
        assert again.deposed is not None
    finally:
        again.close()
