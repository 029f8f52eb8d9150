"""A user's audit of streamed output and signed stdin (`client/audit.py`): the `output`
pieces of a command are contiguous and add up to its result's streams, and the stdin a
command entry logs is exactly what the owner signed. Each attack breaks one of these."""

from __future__ import annotations

import hashlib
from typing import Any

from duet.client.audit import audit_log
from duet.ledger import entries
from logbuilder import CVM_ID, LogBuilder


def _log(pieces: list[tuple[str, int, bytes]], out: bytes = b"one\ntwo\n", *,
         signed_stdin: bytes | None = None, logged_stdin: bytes | None = None) -> LogBuilder:
    log = LogBuilder(None)  # type: ignore[arg-type]  # no evidence in these logs
    create = log.intent("cvm.create", {"provider": "local"})
    log.add("provisioned", instance_id=CVM_ID, host="127.0.0.1", port=2222, user="duet", host_key=log.host_key,
            host_key_sha256=entries.sha256_hex(log.host_key), launch={})
    del create
    log.mode("in-update", "provisioning", 0)
    args: dict[str, Any] = {"command": "cat"}
    if signed_stdin is not None:
        args["stdin_sha256"] = hashlib.sha256(signed_stdin).hexdigest()
    run = log.intent("cvm.run", args)
    cmd = entries.CommandEntry.with_stdin(logged_stdin or b"", command="cat", intent_index=run, timeout_s=60.0)
    ci = log.add("command", **{k: v for k, v in cmd.to_dict().items() if k not in ("v", "type", "time")})
    for stream, offset, data in pieces:
        piece = entries.OutputEntry.piece(ci, stream, offset, data)
        log.add("output", **{k: v for k, v in piece.to_dict().items() if k not in ("v", "type", "time")})
    log.result(ci, out)
    return log


def _commands(log: LogBuilder) -> Any:
    audit = audit_log(log.leaves(), controller_id=log.controller_id, controller_key_b64=log.controller_key,
                      cvm_id=CVM_ID)
    return {c.name: c for c in audit.checks}["commands_closed"]


def test_honest_streamed_output_and_stdin_pass() -> None:
    assert _commands(_log([("stdout", 0, b"one\n"), ("stdout", 4, b"two\n")])).ok
    assert _commands(_log([], signed_stdin=b"in\n", logged_stdin=b"in\n")).ok
    assert _commands(_log([])).ok  # a command that was not streamed


def test_streamed_output_the_result_does_not_hold_fails() -> None:
    """The owner was shown output the result entry does not contain."""
    check = _commands(_log([("stdout", 0, b"one\n"), ("stdout", 4, b"TWO\n")]))
    assert not check.ok and "streamed stdout differs" in check.detail


def test_gap_or_overlap_in_streamed_output_fails() -> None:
    check = _commands(_log([("stdout", 0, b"one\n"), ("stdout", 5, b"wo\n")]))
    assert not check.ok and "offset 5" in check.detail
    check = _commands(_log([("stdout", 0, b"one\n"), ("stdout", 0, b"one\n")], out=b"one\none\n"))
    assert not check.ok and "offset 0" in check.detail


def test_output_of_no_open_command_fails() -> None:
    log = _log([])
    piece = entries.OutputEntry.piece(1, "stdout", 0, b"x")
    log.add("output", **{k: v for k, v in piece.to_dict().items() if k not in ("v", "type", "time")})
    check = _commands(log)
    assert not check.ok and "not an open command" in check.detail


def test_stdin_other_than_signed_fails() -> None:
    check = _commands(_log([], signed_stdin=b"rm -rf /\n", logged_stdin=b"ls\n"))
    assert not check.ok and "differs from the one the owner signed" in check.detail


def test_unsigned_or_missing_stdin_fails() -> None:
    check = _commands(_log([], logged_stdin=b"ls\n"))
    assert not check.ok and "did not sign" in check.detail
    check = _commands(_log([], signed_stdin=b"ls\n"))
    assert not check.ok and "does not log" in check.detail
