"""What restoring one part of the data dir alone does (the README's table): `tls/` and the
simulated `tee/` are harmless, because a fresh RA-TLS certificate over a fresh quote is
written at every start and the platform keys are written once and never change; a client
that verifies the controller sees the same identity and a fresh quote either way."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from duet.client.http import Http
from duet.client.verify import verify
from helpers import ControllerProc


def _restore(c: ControllerProc, name: str, saved: Path) -> None:
    shutil.rmtree(c.data / name)
    shutil.copytree(saved, c.data / name)


def test_restoring_an_old_tls_dir_is_harmless(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory()
    c.tls = True
    c.start()
    cvm = c.owner().create("local")["id"]
    c.kill()
    saved = tmp_path / "tls-old"
    shutil.copytree(c.data / "tls", saved)
    c.start()
    c.kill()
    _restore(c, "tls", saved)
    c.start()
    # A fresh certificate replaced the restored one at start; clients attest it as before.
    assert (c.data / "tls" / "cert.pem").read_bytes() != (saved / "cert.pem").read_bytes()
    assert c.owner().run(cvm, "echo after tls rollback")["exit_status"] == 0
    with Http(c.url, trust_simulated=True, state_dir=tmp_path / "user") as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "user")
    assert report.ok, [(x.name, x.detail) for x in report.checks if not x.ok]


def test_restoring_an_old_simulated_tee_dir_is_harmless(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory().start()
    cvm = c.owner().create("local")["id"]
    c.owner().run(cvm, "echo before")
    c.kill(signal.SIGTERM)
    saved = tmp_path / "tee-old"
    shutil.copytree(c.data / "tee", saved)
    c.start()
    c.owner().mode(cvm, "in-service")  # fresh evidence with the same platform keys
    c.kill(signal.SIGTERM)
    _restore(c, "tee", saved)
    c.start()
    with c.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "user")
    assert report.ok, [(x.name, x.detail) for x in report.checks if not x.ok]
    assert c.owner().action(cvm, "health")["exit_status"] == 0


def test_restoring_an_old_local_cvm_state_json_is_harmless_or_detected(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`cvms/<id>/state.json` restored alone. Harmless when it names the same machine; when
    the port it names now belongs to another sshd (an impostor: any host with another host
    key), the pinned host key refuses it before anything is sent, and the CVM is
    quarantined, on the record."""
    import asyncio
    import json
    import socket

    from duet.client.errors import ClientError
    from duet.cvm.cleanup import delete_all_local
    from duet.cvm.local import LocalProvider
    from duet.cvm.ssh import generate_client_key, public_line
    from duet.ledger import entries

    c: ControllerProc = controller_factory().start()
    owner = c.owner()
    cvm = owner.create("local")["id"]
    state = c.data / "cvms" / cvm / "state.json"
    old = state.read_bytes()
    old_port = json.loads(old)["port"]

    # Harmless: the old copy restored while it still describes the machine.
    c.kill(signal.SIGTERM)
    state.write_bytes(old)
    c.start()
    assert owner.run(cvm, "echo same machine")["exit_status"] == 0

    # The CVM moves: its sshd is restarted while its old port is taken (logged `cvm_moved`).
    c.kill(signal.SIGTERM)
    local = LocalProvider(c.data / "cvms")
    asyncio.run(local._stop_sshd(cvm))
    with socket.socket() as taken:
        # The stopped sshd's socket may linger a moment (or its connections in TIME_WAIT).
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(200):
            try:
                taken.bind(("127.0.0.1", old_port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"port {old_port} stayed busy after its sshd was stopped")
        taken.listen()
        c.start()
    assert owner.run(cvm, "echo moved")["exit_status"] == 0
    assert json.loads(state.read_bytes())["port"] != old_port
    c.kill(signal.SIGTERM)

    # An impostor sshd (its own host key) now listens on the old port.
    impostor = LocalProvider(tmp_path / "direct")
    try:
        asyncio.run(impostor.create("impostor", authorized_key=public_line(generate_client_key()), spec={}))
        asyncio.run(impostor._stop_sshd("impostor"))
        ist = tmp_path / "direct" / "impostor" / "state.json"
        ist.write_text(json.dumps({**json.loads(ist.read_text()), "port": old_port}))
        assert asyncio.run(impostor.ensure_running("impostor")).port == old_port

        # The host restores the old state.json alone, pointing the controller at the impostor.
        state.write_bytes(old)
        c.start()
        marker = tmp_path / "direct" / "impostor" / "work" / "pwned"
        # The genuine CVM's sshd still runs (on its new port), so the provider reports the
        # restored, old port: the controller follows it (logged) and meets the impostor.
        with pytest.raises(ClientError) as info:
            owner.run(cvm, f"touch {marker}; echo ran")
        assert info.value.code in ("host_key_mismatch", "cvm_not_ready"), info.value
        assert not marker.exists()
        view = owner.api.cvm(cvm)
        assert view["status"] == "quarantined"
        with c.http() as http:
            from duet.client.verify import fetch_leaves

            log = [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, view["tree_size"])]
        assert any(e["type"] == "error" and e["code"] == "cvm_moved" and str(old_port) in e["message"] for e in log)
        assert any(e["type"] == "error" and e["code"] == "host_key_mismatch" for e in log)
        # Refused at the connection, before the command was logged or sent.
        assert not any(e["type"] == "command" and "pwned" in str(e["command"]) for e in log)
    finally:
        c.kill(signal.SIGTERM)
        delete_all_local(tmp_path / "direct")
