"""SIGTERM stops an RA-TLS controller promptly even with an idle client connection open
(controller/shutdown.py): before, the TLS close waited up to 30 s for the client's
close_notify. A command running when the signal comes still finishes, is logged and
answered."""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import threading
import time
from typing import Any

from helpers import ControllerProc

#: uvicorn re-raises the signal it handled once its graceful shutdown is done.
STOPPED = (0, -signal.SIGTERM)


def _idle_tls_connection(port: int) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # this test attests nothing; it only holds a connection open
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: controller\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return s  # keep-alive: open, idle, never closed by us


def test_sigterm_with_an_idle_tls_connection_stops_within_10_s(controller_factory) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory()
    c.tls = True
    c.start()
    held = [_idle_tls_connection(c.port), _idle_tls_connection(c.port)]
    assert c.proc is not None
    c.proc.send_signal(signal.SIGTERM)
    try:
        assert c.proc.wait(timeout=10) in STOPPED
    finally:
        for s in held:
            s.close()


def test_a_running_command_is_answered_and_logged_before_the_stop(controller_factory) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory()
    c.tls = True
    c.start()
    owner = c.owner()
    cvm = owner.create("local")["id"]
    held = _idle_tls_connection(c.port)
    got: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        started.set()
        got["res"] = owner.run(cvm, "sleep 2; echo finished")

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    # Wait until the command is logged (so running), then stop the controller.
    with c.http() as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
            last = http.get_json(f"/v1/cvms/{cvm}/entries", start=size - 1, end=size)["entries"][0]
            if json.loads(base64.b64decode(last["leaf"]))["type"] == "command":
                break
            time.sleep(0.05)
    assert c.proc is not None
    c.proc.send_signal(signal.SIGTERM)
    t.join(timeout=60)
    assert c.proc.wait(timeout=10) in STOPPED
    held.close()
    assert got["res"]["exit_status"] == 0
    assert base64.b64decode(got["res"]["stdout"]) == b"finished\n"
    assert "Traceback" not in c.log()
