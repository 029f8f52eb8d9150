"""The operation registry: one record per owner operation, read by intent parsing, the
controller's dispatch, the SDK and the audit. A test-only operation registered here flows
through all of them without touching any other file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from duet.controller.serve import build_controller
from duet.controller.service import Controller
from duet.ledger import keys, operations
from duet.ledger.intent import IntentError, parse_intent, sign_intent
from duet.ledger.operations import OPERATIONS, Op


def test_every_operation_has_a_record_and_a_handler() -> None:
    assert set(OPERATIONS) == {o.value for o in Op}
    for op in OPERATIONS.values():
        assert callable(getattr(Controller, op.handler)), op.op
        assert issubclass(op.args, BaseModel)
    assert {o.op for o in OPERATIONS.values() if not o.targets_cvm} == {
        "cvm.create", "owner.keys", "witnesses.set", "controller.approve", "providers.set", "credentials.set",
        "controller.recovery"}


@pytest.mark.parametrize("op,args", [
    ("cvm.run", {"command": "ls", "timeout_s": True}),
    ("cvm.run", {"command": "ls", "timeout_s": "5"}),
    ("cvm.run", {"command": "   "}),
    ("cvm.run", {"command": "ls", "shell": "bash"}),
    ("cvm.mode", {"mode": "deleted"}),
    ("cvm.create", {"provider": "local", "tee": 5}),
    ("owner.keys", {"keys": []}),
    ("policy.set", {"policy": "x" * (64 * 1024 + 1)}),
    ("witnesses.set", {"witnesses": [], "quorum": 1}),
    ("witnesses.set", {"witnesses": [{"vkey": "nope", "url": "http://w"}], "quorum": 1}),
    ("witnesses.set", {"witnesses": [{"vkey": "w+01020304+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                      "url": "ftp://w"}], "quorum": 1}),
])
def test_argument_models_are_strict(op: str, args: dict[str, Any]) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    cvm = None if op in ("cvm.create", "owner.keys", "witnesses.set") else "c1"
    with pytest.raises(IntentError, match=op):
        parse_intent(sign_intent(owner, op=op, aud="ab" * 32, cvm=cvm, args=args, iat=1))


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


def test_a_test_only_operation_flows_through_parsing_and_dispatch(tmp_path: Path, monkeypatch: Any) -> None:
    os.chmod(tmp_path, 0o755)
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    operations.register(operations.Operation("test.echo", False, EchoArgs, "echo", "echo (tests only)", wrap="echo"))
    calls: list[str] = []

    async def echo(self: Controller, intent: Any) -> dict[str, Any]:
        calls.append(intent.args["text"])
        return {"text": intent.args["text"]}

    monkeypatch.setattr(Controller, "echo", echo, raising=False)
    try:
        ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub")

        async def scenario() -> tuple[int, dict[str, Any]]:
            await ctl.startup()
            with pytest.raises(IntentError, match=r"args\.text"):
                ctl.authenticate(sign_intent(owner, op="test.echo", aud=ctl.controller_id, args={"text": 1},
                                             iat=int(time.time())))
            out = await ctl.submit(sign_intent(owner, op="test.echo", aud=ctl.controller_id,
                                               args={"text": "hi"}, iat=int(time.time())))
            await ctl.shutdown()
            return out

        try:
            status, body = asyncio.run(scenario())
        finally:
            ctl.close()
        assert (status, body, calls) == (200, {"echo": {"text": "hi"}}, ["hi"])
    finally:
        operations.unregister("test.echo")
    with pytest.raises(IntentError, match="unknown intent op"):
        parse_intent(sign_intent(owner, op="test.echo", aud="ab" * 32, args={"text": "x"}, iat=1))
