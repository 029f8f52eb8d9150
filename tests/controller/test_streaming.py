"""Streamed `cvm run` (docs/wire-formats.md, "Streamed runs"): output reaches the owner as
the command writes it, and only once the log holds it; signed stdin; `--no-wait` and
`duet cvm wait`; a crash in the middle of a streamed command."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet.client.errors import ClientError
from duet.client.streamed import consume
from duet.client.verify import fetch_leaves
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from helpers import ControllerProc


def _log(c: ControllerProc, cvm: str) -> list[dict[str, Any]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _cli(c: ControllerProc, key: Path) -> dict[str, str]:
    return {**os.environ, "DUET_CONTROLLER": c.url, "DUET_OWNER_KEY": str(key)}


@pytest.fixture
def setup(controller: ControllerProc, tmp_path: Path) -> tuple[ControllerProc, Path, str]:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    key.chmod(0o600)
    cvm = controller.owner().create("local")["id"]
    return controller, key, cvm


def test_output_is_shown_while_the_command_runs_and_only_once_logged(setup) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm = setup
    seen: list[tuple[str, bytes, list[dict[str, Any]]]] = []

    def on_output(stream: str, data: bytes) -> None:
        seen.append((stream, data, _log(c, cvm)))  # the log as it is when the piece is shown

    res = c.owner().run_streamed(cvm, "echo first; sleep 2; echo second >&2; echo third", on_output=on_output)
    assert res["exit_status"] == 0
    stream, data, log_then = seen[0]
    assert (stream, data) == ("stdout", b"first\n")
    ci = res["command_index"]
    # Shown while the command ran (no result yet), and already in a logged output entry.
    assert not any(e["type"] == "result" and e.get("command_index") == ci for e in log_then)
    assert any(e["type"] == "output" and e["command_index"] == ci and e["data"] == "first\n" for e in log_then)
    assert b"".join(d for s, d, _ in seen if s == "stdout") == b"first\nthird\n"
    assert b"".join(d for s, d, _ in seen if s == "stderr") == b"second\n"
    # The result entry is the one a non-streamed run writes: whole streams, digests.
    log = _log(c, cvm)
    result = log[res["result_index"]]
    assert result["type"] == "result" and result["stdout"] == "first\nthird\n" and result["stderr"] == "second\n"
    assert result["stdout_sha256"] == hashlib.sha256(b"first\nthird\n").hexdigest()
    assert base64.b64decode(res["stdout"]) == b"first\nthird\n"
    pieces = [e for e in log if e["type"] == "output" and e["command_index"] == ci]
    assert "".join(e["data"] for e in pieces if e["stream"] == "stdout") == "first\nthird\n"


def test_the_cli_prints_the_first_line_before_the_command_ends(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    proc = subprocess.Popen([sys.executable, "-m", "duet.cli.main", "cvm", "run", cvm, "--", "sh", "-c",
                             "for i in 1 2 3; do echo $i; sleep 1; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_cli(c, key))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"1\n"
        running = proc.poll() is None
        rest, errs = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert running, "the first line came only when the command had ended"
    assert rest == b"2\n3\n" and proc.returncode == 0, errs


def test_stdin_is_signed_logged_and_read(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "run", "-i", cvm, "--", "cat"],
                       input=b"hi\n", capture_output=True, env=_cli(c, key), timeout=120)
    assert r.returncode == 0 and r.stdout == b"hi\n", r.stderr
    log = _log(c, cvm)
    command = next(e for e in reversed(log) if e["type"] == "command")
    assert command["stdin"] == "hi\n" and command["stdin_bytes"] == 3
    intent = log[command["intent_index"]]
    from duet.ledger.intent import parse_intent

    assert parse_intent(intent["jws"]).args["stdin_sha256"] == hashlib.sha256(b"hi\n").hexdigest()
    shown = subprocess.run([sys.executable, "-m", "duet.cli.main", "log", cvm], capture_output=True, text=True,
                           env=_cli(c, key), timeout=120)
    assert "< stdin (3 B, logged)" in shown.stdout, shown.stdout + shown.stderr
    # Without -i, stdin is not read (EOF at once), whatever is piped in.
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "run", cvm, "--", "cat"],
                       input=b"ignored\n", capture_output=True, env=_cli(c, key), timeout=120)
    assert r.returncode == 0 and r.stdout == b""


def test_too_much_stdin_is_refused_before_signing(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    before = len(_log(c, cvm))
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "run", "-i", cvm, "--", "cat"],
                       input=b"x" * (512 * 1024 + 1), capture_output=True, env=_cli(c, key), timeout=120)
    assert r.returncode == 1 and b"stdin_too_large" in r.stderr
    assert len(_log(c, cvm)) == before


@pytest.mark.parametrize("case", ["unsigned", "different", "missing", "oversize"])
def test_stdin_other_than_signed_is_refused_and_nothing_logged(setup, case: str) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm = setup
    owner = c.owner()
    before = len(_log(c, cvm))
    signed = b"x" * (512 * 1024 + 1) if case == "oversize" else b"ls\n"
    args: dict[str, Any] = {"command": "cat"}
    if case != "unsigned":
        args["stdin_sha256"] = hashlib.sha256(signed).hexdigest()
    jws = sign_intent(c.owner_key, op="cvm.run", aud=owner.controller_id, args=args, cvm=cvm, iat=int(time.time()))
    body: dict[str, Any] = {"jws": jws}
    sent = {"unsigned": b"ls\n", "different": b"rm -rf /\n", "missing": None, "oversize": signed}[case]
    if sent is not None:
        body["stdin"] = base64.b64encode(sent).decode()
    for path in ("/v1/intents", "/v1/intents/stream"):
        r = httpx.post(c.url + path, json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "stdin_mismatch", r.text
        jws = sign_intent(c.owner_key, op="cvm.run", aud=owner.controller_id, args=args, cvm=cvm,
                          iat=int(time.time()))
        body["jws"] = jws
    assert len(_log(c, cvm)) == before


def test_no_wait_returns_the_index_and_wait_follows_it(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "run", "--no-wait", cvm, "--", "sh", "-c",
                        "echo started; sleep 3; echo done; exit 3"],
                       capture_output=True, text=True, env=_cli(c, key), timeout=120)
    assert r.returncode == 0, r.stderr
    index = int(r.stdout.strip())
    log = _log(c, cvm)
    assert log[index]["type"] == "command"
    assert not any(e["type"] == "result" and e.get("command_index") == index for e in log)  # still running
    w = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "wait", cvm, str(index)],
                       capture_output=True, text=True, env=_cli(c, key), timeout=120)
    assert w.returncode == 3, w.stderr
    assert w.stdout == "started\ndone\n"
    # Waiting again on a finished command gives the same answer, from the log.
    w = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "wait", cvm, str(index)],
                       capture_output=True, text=True, env=_cli(c, key), timeout=120)
    assert w.returncode == 3 and w.stdout == "started\ndone\n"


def test_wait_on_a_non_command_entry_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm = setup
    r = httpx.get(f"{c.url}/v1/cvms/{cvm}/commands/0/follow", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "out_of_range"
    r = httpx.get(f"{c.url}/v1/cvms/{cvm}/commands/100000/follow", timeout=30)
    assert r.status_code == 400


def test_an_operation_without_a_command_answers_as_usual(setup) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm = setup
    owner = c.owner()
    jws = owner.sign("cvm.mode", {"mode": "in-update"}, cvm)  # already in-update: refused and logged
    r = httpx.post(c.url + "/v1/intents/stream", json={"jws": jws}, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_transition"
    assert isinstance(r.json()["error"]["index"], int)


def test_a_crash_mid_stream_leaves_the_shown_output_logged(setup) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm = setup
    owner = c.owner()
    shown: list[bytes] = []

    def crash(stream: str, data: bytes) -> None:
        shown.append(data)
        c.kill(signal.SIGKILL)

    with pytest.raises(ClientError):
        owner.run_streamed(cvm, "echo before-crash; sleep 30", on_output=crash)
    assert shown == [b"before-crash\n"]
    c.start()
    log = _log(c, cvm)
    command = max(i for i, e in enumerate(log) if e["type"] == "command")
    assert [e["data"] for e in log if e["type"] == "output" and e["command_index"] == command] == ["before-crash\n"]
    assert log[-1]["type"] == "interrupted" and log[-1]["command_index"] == command
    from duet.client.audit import audit_log

    info = owner.api.controller()
    audit = audit_log([entries.encode(e) for e in log], controller_id=info["controller_id"],
                      controller_key_b64=info["public_key"], cvm_id=cvm)
    assert all(ch.ok for ch in audit.checks), audit.checks


def test_the_client_refuses_a_stream_the_result_contradicts() -> None:
    """A controller that shows output its logged result does not hold is caught."""
    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    events = [{"event": "accepted", "cvm": "c", "command_index": 5},
              {"event": "output", "index": 6, "stream": "stdout", "offset": 0, "data": b64(b"fake\n")},
              {"event": "end", "status": 200, "body": {"stdout": b64(b"real\n"), "stderr": ""}}]
    with pytest.raises(ClientError) as info:
        consume(events)
    assert info.value.code == "bad_response"
    gap = [events[0], {**events[1], "offset": 3}]
    with pytest.raises(ClientError):
        consume(gap)
    with pytest.raises(ClientError) as info:
        consume(events[:2])  # the stream ended before the result
    assert info.value.code == "stream_broken" and "duet cvm wait c 5" in info.value.message
    assert json.dumps(consume([events[0], events[2]])["stdout"]) == json.dumps(b64(b"real\n"))


def test_a_trickling_command_cannot_flood_its_log() -> None:
    """Pieces are coalesced ever more slowly, and capped per command."""
    import asyncio

    from duet.controller import streaming

    logged: list[Any] = []

    def append(items: list[Any]) -> int:
        logged.extend(items)
        return 0

    async def trickle() -> None:
        out = streaming.OutputLog(append, 7)
        for _ in range(streaming.MAX_PIECES + 100):
            out.feed("stdout", b"x")
            out.flush()
        assert len(logged) == streaming.MAX_PIECES
        assert out.interval == streaming.MAX_FLUSH_S
        assert [e.offset for e in logged[:3]] == [0, 1, 2]

    asyncio.run(trickle())
