"""The primary's side of a standby joining, in process against a real etcd: what it
refuses, and that admitting a standby changes nothing else (controller/standby.py)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest
from continuity_helpers import controller_log_types, join_request

from duet.controller.continuity import REQUEST_DOMAIN, HandoverRefused
from duet.controller.serve import SimulatedPlatform, build_controller
from duet.controller.service import Controller
from duet.controller.standby import STANDBY_REQUEST_DOMAIN, admit
from duet.ledger import entries
from duet.tee.simulated import SimulatedTee

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def _primary(tmp_path: Path, etcd_address: str) -> Controller:
    os.chmod(tmp_path, 0o755)
    ctl = build_controller(tmp_path / "a", store=f"etcd://{etcd_address}", lease_ttl=2,
                           simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    ctl._append_controller([entries.BuildApprovedEntry(mrenclave=B)])
    return ctl


def test_a_standby_request_is_no_handover_and_admitting_one_deposes_nothing(
        tmp_path: Path, etcd_address: str) -> None:
    ctl = _primary(tmp_path, etcd_address)
    b = SimulatedTee(tmp_path / "b-tee", mrenclave=bytes.fromhex(B))
    try:
        before = controller_log_types(ctl)
        # A standby's request relayed to the handover endpoint (which would depose the
        # primary) does not verify there, and a handover request is no standby request.
        with pytest.raises(HandoverRefused, match="bind"):
            asyncio.run(ctl.handover.handover(join_request(b, ctl.handover.challenge()["challenge"],
                                                           STANDBY_REQUEST_DOMAIN)))
        with pytest.raises(HandoverRefused, match="bind"):
            asyncio.run(admit(ctl, join_request(b, ctl.handover.challenge()["challenge"], REQUEST_DOMAIN)))
        assert controller_log_types(ctl) == before and ctl.deposed is None
        # An unapproved build: refused, logged as such, nothing sent.
        c = SimulatedTee(tmp_path / "c-tee", mrenclave=bytes.fromhex(C))
        with pytest.raises(HandoverRefused, match="not approved"):
            asyncio.run(admit(ctl, join_request(c, ctl.handover.challenge()["challenge"], STANDBY_REQUEST_DOMAIN)))
        assert controller_log_types(ctl) == [*before, "handover_refused"]
        # The approved build: `standby_joined` is logged first; the primary goes on.
        answer = asyncio.run(admit(ctl, join_request(b, ctl.handover.challenge()["challenge"], STANDBY_REQUEST_DOMAIN)))
        types = controller_log_types(ctl)
        assert types[-1] == "standby_joined" and answer["standby_index"] == len(types) - 1
        assert b"PRIVATE KEY" not in base64.b64decode(answer["ciphertext"])
        assert ctl.deposed is None
        ctl._append_controller([entries.BuildApprovedEntry(mrenclave=C)])  # still the primary: it appends
    finally:
        ctl.close()


def test_an_embedded_store_has_no_standby(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ctl = build_controller(tmp_path / "a", simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    ctl._append_controller([entries.BuildApprovedEntry(mrenclave=B)])
    b = SimulatedTee(tmp_path / "b-tee", mrenclave=bytes.fromhex(B))
    try:
        before = controller_log_types(ctl)
        with pytest.raises(HandoverRefused, match="replicated store"):
            asyncio.run(admit(ctl, join_request(b, ctl.handover.challenge()["challenge"], STANDBY_REQUEST_DOMAIN)))
        assert controller_log_types(ctl) == before
    finally:
        ctl.close()


def test_standby_flags_that_cannot_work_are_refused_before_anything() -> None:
    from duet.controller.errors import ConfigError
    from duet.controller.standby import check_standby_flags

    for kw, what in (({"store": None}, "--store"), ({"join": "http://x"}, "--join"),
                     ({"tee": "gramine"}, "manifest"), ({"tls": True}, "--tls")):
        args: dict[str, Any] = {"tee": "simulated", "store": "etcd://127.0.0.1:2379", "join": None, "tls": False,
                                **kw}
        with pytest.raises(ConfigError, match=what):
            check_standby_flags(**args)
    check_standby_flags(tee="simulated", store="etcd://127.0.0.1:2379", join=None, tls=False)
