"""What restoring one part of the data dir alone does (the README's table): `tls/` and the
simulated `tee/` are harmless, because a fresh RA-TLS certificate over a fresh quote is
written at every start and the platform keys are written once and never change; a client
that verifies the controller sees the same identity and a fresh quote either way."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

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
