"""The lean HTTP client (`duet cvm run`'s, client/lean_http.py) holds the same bounds
against a hostile controller end (or whatever answers on its port) as the full client:
an oversized body, an endless NDJSON stream, a line that never ends, JSON nested too
deep, a body that trickles past the deadline and an error answer that is not the
controller's JSON all end as typed errors, never a hang, a traceback or unbounded memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from duet.client.config import Limits
from duet.client.errors import ClientError, LimitExceeded
from duet.client.lean_http import NDJSON, LeanHttp

LIMIT = 4096


def _endless(w: Any) -> None:
    while True:
        w.write(b'{"stream":"stdout","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}\n' * 16)


def _no_newline(w: Any) -> None:
    while True:
        w.write(b"x" * 1024)


def _trickle(w: Any) -> None:
    while True:
        w.write(b" ")
        w.flush()
        time.sleep(0.05)


#: path -> (status, content type, writer of the body).
ROUTES: dict[str, tuple[int, str, Callable[[Any], None]]] = {
    "/big": (200, "application/json", lambda w: w.write(b'"' + b"x" * (LIMIT * 4) + b'"')),
    "/deep": (200, "application/json", lambda w: w.write(b"[" * 100 + b"]" * 100)),
    "/endless": (200, NDJSON, _endless),
    "/no-newline": (200, NDJSON, _no_newline),
    "/trickle": (200, "application/json", _trickle),
    "/not-json-error": (500, "text/html", lambda w: w.write(b"<html>oops</html>")),
    "/deep-line": (200, NDJSON, lambda w: w.write(b"[" * 100 + b"]" * 100 + b"\n")),
}


class _Hostile(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        status, ctype, write = ROUTES[self.path.split("?")[0]]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            write(self.wfile)
        except OSError:
            pass  # the client hung up: what a bound does

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def lean() -> Iterator[LeanHttp]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        limits = Limits(max_response_bytes=LIMIT, request_deadline=0.5, read_timeout=5.0, max_json_depth=8)
        yield LeanHttp(f"http://127.0.0.1:{server.server_address[1]}", limits=limits, timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()


def test_bodies_beyond_the_bounds_are_refused(lean: LeanHttp) -> None:
    with pytest.raises(LimitExceeded) as big:
        lean.get_json("/big")
    assert big.value.code == "limit_exceeded" and "more than 4096 bytes" in big.value.message
    with pytest.raises(LimitExceeded) as post:
        lean.post_json("/big", {})
    assert "more than 4096 bytes" in post.value.message
    with pytest.raises(LimitExceeded) as deep:
        lean.get_json("/deep")
    assert "nested deeper than 8" in deep.value.message
    with pytest.raises(LimitExceeded) as slow:
        lean.get_json("/trickle")
    assert "took longer than" in slow.value.message


def test_streams_beyond_the_bounds_are_refused(lean: LeanHttp) -> None:
    for path in ("/endless", "/no-newline"):
        got: list[Any] = []
        with pytest.raises(LimitExceeded) as exc:
            for line in lean.stream_lines("POST", path, {}):
                got.append(line)
        assert "more than 4096 bytes" in exc.value.message, path
        assert len(got) * 60 <= LIMIT
    with pytest.raises(LimitExceeded) as deep:
        list(lean.stream_lines("POST", "/deep-line", {}))
    assert "nested deeper than 8" in deep.value.message


def test_an_error_answer_that_is_not_the_controllers_is_a_typed_error(lean: LeanHttp) -> None:
    for call in (lambda: lean.get_json("/not-json-error"), lambda: lean.post_json("/not-json-error", {}),
                 lambda: list(lean.stream_lines("POST", "/not-json-error", {}))):
        with pytest.raises(ClientError) as exc:
            call()
        assert (exc.value.code, exc.value.status) == ("http_error", 500)
