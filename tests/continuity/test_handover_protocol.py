"""The predecessor's side of the handover, in process: what it refuses, and that it acts
no more once it handed over (controller/continuity.py)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from pathlib import Path

import pytest
from continuity_helpers import controller_log_types, join_request

from duet.controller import errors
from duet.controller.continuity import HandedOver, HandoverRefused
from duet.controller.serve import SimulatedPlatform, build_controller
from duet.controller.service import Controller
from duet.ledger import entries
from duet.tee.simulated import SimulatedTee

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def _predecessor(tmp_path: Path) -> Controller:
    os.chmod(tmp_path, 0o755)
    ctl = build_controller(tmp_path / "a", simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    ctl._append_controller([entries.BuildApprovedEntry(mrenclave=B)])
    return ctl


def test_refusals_hand_over_nothing(tmp_path: Path) -> None:
    ctl = _predecessor(tmp_path)
    b = SimulatedTee(tmp_path / "b-tee", mrenclave=bytes.fromhex(B))
    try:
        # A quote of an approved build that binds another key (a relayed quote): refused.
        body = join_request(b, ctl.handover.challenge()["challenge"], bound_key=secrets.token_bytes(32))
        with pytest.raises(HandoverRefused, match="bind"):
            asyncio.run(ctl.handover.handover(body))
        # The challenge is single use, and made-up challenges are unknown.
        with pytest.raises(errors.InvalidRequest, match="challenge"):
            asyncio.run(ctl.handover.handover(body))
        with pytest.raises(errors.InvalidRequest, match="challenge"):
            asyncio.run(ctl.handover.handover(join_request(b, secrets.token_hex(32))))
        # An unapproved build: refused and logged.
        c = SimulatedTee(tmp_path / "c-tee", mrenclave=bytes.fromhex(C))
        with pytest.raises(HandoverRefused, match="not approved"):
            asyncio.run(ctl.handover.handover(join_request(c, ctl.handover.challenge()["challenge"])))
        assert "handover" not in controller_log_types(ctl) and controller_log_types(ctl)[-1] == "handover_refused"
        assert ctl.deposed is None
        # The approved build: the handover entry first, then this instance acts no more.
        answer = asyncio.run(ctl.handover.handover(join_request(b, ctl.handover.challenge()["challenge"])))
        types = controller_log_types(ctl)
        assert types[-1] == "handover" and answer["handover_index"] == len(types) - 1
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
