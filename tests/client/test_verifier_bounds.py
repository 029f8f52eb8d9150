"""Resource attacks on the verifier by a malicious controller: each must end, soon, in
a typed error (never a hang, a traceback or unbounded memory). Time limits here are
generous ceilings against a hang, never measurements."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from evil_controller import EvilController, Recorded

from duet.client.config import Limits
from duet.client.errors import ClientError, LimitExceeded
from duet.client.expectations import load_expectations
from duet.client.http import Http
from duet.client.verify import Report, verify
from duet.ledger import entries

CEILING = float(os.environ.get("DUET_TEST_HANG_CEILING", "120"))  # seconds: far above a bounded run


def _bounded(fn: Callable[[], Any]) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) if it does not end."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # the test inspects it
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(CEILING)
    assert not t.is_alive(), f"still running after {CEILING} s: unbounded"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _verify(evil: EvilController, cvm: str, state: Path, limits: Limits | None = None, **kw: Any) -> Report:
    with evil.http(limits) as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=state, **kw)
    return report


def _endless_pages(request: httpx.Request) -> httpx.Response:
    start = int(request.url.params.get("start", 0))
    junk = base64.b64encode(b'{"type":"junk"}').decode()
    return httpx.Response(200, json={"tree_size": 2**62, "entries": [
        {"index": start + i, "leaf": junk} for i in range(1000)]})


def test_checkpoint_of_size_2_pow_62_with_endless_pages_is_refused(evil: EvilController, recorded: Recorded,
                                                                     tmp_path: Path) -> None:
    evil.claimed_size = 2**62
    evil.hooks["/entries"] = _endless_pages
    with pytest.raises(LimitExceeded) as info:
        _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
    assert info.value.what == "max_entries"
    assert evil.requests < 10  # refused before downloading anything


def test_endless_pages_stop_at_the_byte_and_time_budgets(evil: EvilController, recorded: Recorded,
                                                         tmp_path: Path) -> None:
    """Even a user who lifts the entry cap is protected by the run's other bounds."""
    evil.claimed_size = 2**62
    evil.hooks["/entries"] = _endless_pages
    limits = Limits(max_entries=2**63, max_total_bytes=8 << 20, budget=30.0)
    with pytest.raises(LimitExceeded) as info:
        _bounded(lambda: _verify(evil, recorded.cvm, tmp_path, limits))
    assert info.value.what in ("total_bytes", "budget", "pages")


def test_tiny_pages_are_bounded(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    """One entry per page (with padding) would turn a large log into a request per entry."""
    evil.claimed_size = 100_000

    def one_per_page(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("start", 0))
        return httpx.Response(200, json={"entries": [{"index": start, "leaf": "e30="}]})

    evil.hooks["/entries"] = one_per_page
    with pytest.raises(LimitExceeded) as info:
        _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
    assert info.value.what == "pages"
    assert evil.requests < 100_000 // Limits().min_entries_per_page + 20


def test_a_page_with_more_entries_than_asked_is_refused(evil: EvilController, recorded: Recorded,
                                                        tmp_path: Path) -> None:
    n = len(recorded.leaves)

    def too_many(request: httpx.Request) -> httpx.Response:
        leaf = base64.b64encode(recorded.leaves[0]).decode()
        return httpx.Response(200, json={"entries": [{"index": i, "leaf": leaf} for i in range(n + 5000)]})

    evil.hooks["/entries"] = too_many
    report = _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
    assert not report.ok
    assert "entries" in {c.name: c.detail for c in report.checks if not c.ok}.get("log_root", "")


class _Trickler:
    """A TCP server that answers every request one byte every `pause` seconds."""

    def __init__(self, payload: bytes, pause: float = 2.0) -> None:
        self.payload = payload
        self.pause = pause
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for b in self.payload:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([b]))
                    time.sleep(self.pause)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("payload", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",  # trickled headers
    None,  # trickled body
])
def test_a_body_trickled_one_byte_every_2_s_is_cut_off(payload: bytes | None, tmp_path: Path) -> None:
    body = b'{"controller_id": "' + b"a" * 200 + b'"}'
    if payload is None:
        # headers at once, then the body byte by byte
        server = _Trickler(b"", pause=0)
        server.payload = b""

        def trickle(conn: socket.socket) -> None:
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    for b in body:
                        if server.stop.is_set():
                            return
                        conn.sendall(bytes([b]))
                        time.sleep(2.0)
                except OSError:
                    return

        server._trickle = trickle  # type: ignore[method-assign]
    else:
        server = _Trickler(payload + body)
    try:
        limits = Limits(request_deadline=5.0, read_timeout=4.0)
        with Http(server.url, limits=limits) as http, pytest.raises(LimitExceeded) as info:
            _bounded(lambda: http.get_json("/v1/controller"))
        assert info.value.what == "timeout"
    finally:
        server.close()


def test_a_silent_controller_hits_the_read_timeout(tmp_path: Path) -> None:
    server = _Trickler(b"", pause=0)
    server._trickle = lambda conn: time.sleep(30)  # type: ignore[method-assign]
    try:
        with Http(server.url, limits=Limits(read_timeout=2.0)) as http, pytest.raises(LimitExceeded):
            _bounded(lambda: http.get_json("/v1/controller"))
    finally:
        server.close()


def _json(obj: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=obj)


def _raw(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, content=body)


MALFORMED: list[tuple[str, Callable[[httpx.Request], httpx.Response]]] = [
    ("/v1/controller", _raw(b"not json")),
    ("/v1/controller", _json([])),
    ("/v1/controller", _json({"controller_id": 5, "public_key": 7})),
    ("/v1/controller", _raw(b"[" * 200_000 + b"]" * 200_000)),
    ("/v1/controller", _raw(b'{"a":' * 100 + b"1" + b"}" * 100)),
    ("/v1/controller", _raw(b"\xff\xfe garbage", 500)),
    ("/quote", _json({"quote": 5, "collateral": "x", "simulated": "yes"})),
    ("/quote", _json({"quote": "!!", "collateral": {}, "simulated": True, "simulated_root_ca": "@"})),
    ("/quote", _json(None)),
    ("/checkpoint", _raw(b"\x00\x01 not a note")),
    ("/checkpoint", _raw("é".encode("latin-1"))),
    ("/entries", _json({"entries": "x"})),
    ("/entries", _json({"entries": [{"index": "0", "leaf": 5}]})),
    ("/entries", _json({"entries": [{"index": 0, "leaf": "not base64!"}]})),
    ("/entries", _json({"entries": [None]})),
    ("/entries", _json({})),
    ("/entries", _raw(b'{"entries": [' + b"[" * 100_000)),
]


@pytest.mark.parametrize(("route", "answer"), MALFORMED, ids=[f"{r}-{i}" for i, (r, _) in enumerate(MALFORMED)])
def test_malformed_bodies_are_typed_failures(evil: EvilController, recorded: Recorded, tmp_path: Path,
                                             route: str, answer: Callable[[httpx.Request], httpx.Response]) -> None:
    evil.hooks[route] = answer
    try:
        report = _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
    except ClientError as exc:
        assert exc.code and exc.message
        return
    assert not report.ok


def test_a_malformed_consistency_proof_is_a_typed_failure(evil: EvilController, recorded: Recorded,
                                                          tmp_path: Path) -> None:
    evil.logs[recorded.cvm] = recorded.leaves[: recorded.marks["honest"]]
    assert _verify(evil, recorded.cvm, tmp_path).ok
    evil.logs[recorded.cvm] = list(recorded.leaves)
    for bad in ({"hashes": "x"}, {"hashes": ["AAAA"] * 10_000}, {"hashes": [5]}, []):
        evil.hooks["/consistency"] = _json(bad)
        report = _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
        assert "consistency" in {c.name for c in report.checks if not c.ok}


def _with_policy_and_command(evil: EvilController, rec: Recorded, policy: str, command: str) -> None:
    """The malicious controller logs a genesis with `policy` and an owner-signed run of
    `command` (signed with the real owner key: the owner asked for it)."""
    log = rec.decoded(rec.marks["first_result"])
    log[0]["policy"] = policy
    import hashlib

    if "policy_sha256" in log[0]:
        log[0]["policy_sha256"] = hashlib.sha256(policy.encode()).hexdigest()
    cmd_template = next(e for e in log if e["type"] == "command" and not e.get("builtin"))
    intent = evil.sign_intent("cvm.run", {"command": command}, cvm=rec.cvm)
    command_entry = {**cmd_template, "command": command, "intent_index": len(log)}
    evil.logs[rec.cvm] = [entries.encode(e) for e in [*log, intent, command_entry]]


def test_catastrophic_regex_in_the_logged_policy_is_linear(evil: EvilController, recorded: Recorded,
                                                           tmp_path: Path) -> None:
    policy = yaml.safe_dump({"version": 1, "commands": {"in-update": ["(a+)+b"]}})
    _with_policy_and_command(evil, recorded, policy, "a" * 40 + "!")
    report = _bounded(lambda: _verify(evil, recorded.cvm, tmp_path))
    assert not report.ok  # the command does not match the policy: it ran although forbidden
    assert "mode_discipline" in {c.name for c in report.checks if not c.ok}


def test_catastrophic_regex_in_the_expectations_is_linear(evil: EvilController, recorded: Recorded,
                                                          tmp_path: Path) -> None:
    policy = yaml.safe_dump({"version": 1, "commands": {"in-update": [".*"]}})
    _with_policy_and_command(evil, recorded, policy, "a" * 40 + "!")
    path = tmp_path / "expect.yaml"
    path.write_text(yaml.safe_dump({"history": {"allowed_commands": ["^(a+)+b$", "^echo .*$"]}}))
    report = _bounded(lambda: _verify(evil, recorded.cvm, tmp_path, expect=load_expectations(path)))
    assert "history" in {c.name for c in report.checks if not c.ok}


def test_a_regex_re2_cannot_run_is_refused_not_backtracked(tmp_path: Path) -> None:
    from duet.ledger.errors import LedgerError
    from duet.ledger.policy import parse_policy

    with pytest.raises(LedgerError):
        parse_policy(yaml.safe_dump({"commands": {"in-update": [r"(a)\1"]}}))
    path = tmp_path / "expect.yaml"
    path.write_text(yaml.safe_dump({"history": {"allowed_commands": ["(?=a)a"]}}))
    with pytest.raises(ClientError) as info:
        load_expectations(path)
    assert info.value.code == "invalid_expectations"


@pytest.mark.parametrize("body", [b"[" * 100_000, b"\xff\xfe", b'{"controller_id": [1, 2]}', b"null"])
def test_cli_verify_against_a_garbage_controller_is_one_typed_line(body: bytes, tmp_path: Path) -> None:
    import subprocess
    import sys

    server = _Trickler(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, pause=0)
    try:
        res = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", "abc", "--controller", server.url,
                              "--trust-simulated", "--state-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=CEILING)
    finally:
        server.close()
    assert res.returncode in (1, 3), res
    assert "Traceback" not in res.stderr
    if res.returncode == 1:
        assert res.stderr.strip().splitlines()[-1].startswith("error ["), res.stderr
