"""`duet watch` fails loudly: when the CVM cannot be verified for longer than --grace
(controller unreachable, CVM unknown, a read timeout, a verification that cannot run), the
hook runs with the reason and watch exits 3."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from duet.cli.main import app
from duet.client.http import ClientError
from duet.client.watch import Watcher
from helpers import ControllerProc, free_port


def _watch(url: str, cvm: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    hook_out = tmp_path / "hook.txt"
    env = {**os.environ, "DUET_STATE_DIR": str(tmp_path / "user-state")}
    r = subprocess.run(
        [sys.executable, "-m", "duet.cli.main", "watch", cvm, "--controller", url, "--trust-simulated",
         "--interval", "0.2", "--grace", "1s", "--on-violation", f'printf %s "$DUET_VIOLATION" > {hook_out}',
         *extra],
        capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r, hook_out.read_text() if hook_out.exists() else ""


def test_unreachable_controller_is_a_violation_after_the_grace(tmp_path: Path) -> None:
    r, reason = _watch(f"http://127.0.0.1:{free_port()}", "0123456789abcdef", tmp_path)
    assert r.returncode == 3, r.stderr
    assert "controller_unreachable" in reason
    assert "VIOLATION" in r.stderr and "a violation in" in r.stderr  # it warned during the grace


def test_unknown_cvm_is_a_violation(controller: ControllerProc, tmp_path: Path) -> None:
    r, reason = _watch(controller.url, "0123456789abcdef", tmp_path)
    assert r.returncode == 3, r.stderr
    assert "unknown_cvm" in reason


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and reads requests, and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_read_timeout_is_a_violation(silent_server: str, tmp_path: Path) -> None:
    r, reason = _watch(silent_server, "0123456789abcdef", tmp_path, "--read-timeout", "0.3")
    assert r.returncode == 3, r.stderr
    assert "did not answer in time" in reason  # the read deadline (client/http.py) cut it off


def test_verification_that_cannot_run_is_a_violation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("the verifier hit something it cannot handle")

    monkeypatch.setattr("duet.client.verify.verify", broken)
    hook_out = tmp_path / "hook.txt"
    result = CliRunner().invoke(app, ["watch", "0123456789abcdef", "--interval", "0.05", "--grace", "0s",
                                      "--on-violation", f'printf %s "$DUET_VIOLATION" > {hook_out}'])
    assert result.exit_code == 3, result.output
    assert "could not run" in hook_out.read_text() and "RuntimeError" in hook_out.read_text()


def test_grace_absorbs_a_blip_and_then_counts() -> None:
    now = [0.0]
    outcomes: list[object] = [ClientError("controller_unreachable", "down"), SimpleNamespace(ok=True, checks=[]),
                              ClientError("unknown_cvm", "gone"), ClientError("unknown_cvm", "gone"),
                              ClientError("unknown_cvm", "gone")]

    def check() -> object:
        o = outcomes.pop(0)
        if isinstance(o, Exception):
            raise o
        return o

    w = Watcher(check, grace_s=60, clock=lambda: now[0])
    assert w.step().kind == "degraded"
    now[0] = 30
    assert w.step().kind == "ok"  # recovered: the clock restarts
    now[0] = 40
    assert w.step().kind == "degraded"
    now[0] = 99
    assert w.step().kind == "degraded"
    now[0] = 100
    step = w.step()
    assert step.kind == "violation" and "unknown_cvm" in step.reason


def test_a_failed_check_is_a_violation_at_once() -> None:
    bad = SimpleNamespace(ok=False, checks=[SimpleNamespace(name="consistency", ok=False, detail="fork")])
    step = Watcher(lambda: bad, grace_s=60).step()
    assert step.kind == "violation" and "consistency: fork" in step.reason
