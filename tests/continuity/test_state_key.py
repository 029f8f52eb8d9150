"""The state key K (controller/statekey.py) and the simulated local seal (tee/seal.py).

A microcode update (another CPUSVN) or another build cannot open the local seal: the
controller refuses to start with one typed line, not a traceback, and not with a fresh
identity (which would orphan every CVM). A data dir written before K existed is upgraded in
place."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from duet.controller.serve import SimulatedPlatform, build_controller
from duet.controller.state import StateStore
from duet.controller.statekey import CONTROLLER_KEY_LABEL, StateKey, StateKeyError, client_key_label
from duet.cvm.ssh import export_private, generate_client_key
from duet.ledger import keys
from duet.tee.seal import SealUnreadable
from duet.tee.simulated import SimulatedTee
from helpers import free_port


def _serve(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Start `duet controller serve` expecting it to refuse (it would otherwise serve forever)."""
    cmd = [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(data),
           "--listen", f"127.0.0.1:{free_port()}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _first_start(tmp_path: Path) -> tuple[Path, str]:
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    ctl = build_controller(data)
    cid = ctl.controller_id
    ctl.close()
    return data, cid


def test_microcode_update_cannot_open_the_seal(tmp_path: Path) -> None:
    data, cid = _first_start(tmp_path)
    res = _serve(data, "--simulated-cpusvn", "2")
    assert res.returncode == 1
    assert "error [seal_unreadable]" in res.stderr
    assert "CPUSVN 1" in res.stderr and "CPUSVN 2" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    # Nothing was replaced: the same platform at its old CPUSVN still opens it, same identity.
    again = build_controller(data, simulated=SimulatedPlatform(cpusvn=1))
    assert again.controller_id == cid
    again.close()


def test_another_build_cannot_open_the_seal(tmp_path: Path) -> None:
    data, _ = _first_start(tmp_path)
    res = _serve(data, "--simulated-mrenclave", "ab" * 32)
    assert res.returncode == 1
    assert "error [seal_unreadable]" in res.stderr and "another build" in res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(SealUnreadable):
        build_controller(data, simulated=SimulatedPlatform(mrenclave=bytes.fromhex("ab" * 32)))


def test_bad_simulated_options_are_one_line(tmp_path: Path) -> None:
    res = _serve(tmp_path / "data", "--simulated-mrenclave", "xyz")
    assert res.returncode == 1 and "error [config_error]" in res.stderr and "Traceback" not in res.stderr


def test_seal_is_bound_to_the_platform(tmp_path: Path) -> None:
    """The same build on another (simulated) host cannot open it either."""
    a, b = SimulatedTee(tmp_path / "a"), SimulatedTee(tmp_path / "b")
    blob = a.seal(b"k" * 32)
    assert a.unseal(blob) == b"k" * 32
    with pytest.raises(SealUnreadable, match="another host"):
        b.unseal(blob)


def test_secrets_at_rest_are_under_k_and_plaintext_is_refused(tmp_path: Path) -> None:
    data, _ = _first_start(tmp_path)
    db = sqlite3.connect(data / "state.sqlite")
    at_rest = db.execute("SELECT v FROM meta WHERE k='controller_key'").fetchone()[0]
    assert StateKey.is_encrypted(at_rest) and b"PRIVATE KEY" not in at_rest
    # The host swaps in a plaintext key of its own choosing: refused, not used.
    db.execute("UPDATE meta SET v=? WHERE k='controller_key'", (keys.private_pem(keys.Ed25519PrivateKey.generate()),))
    db.commit()
    db.close()
    with pytest.raises(StateKeyError, match="not encrypted"):
        build_controller(data)


def test_data_dir_from_before_k_is_upgraded(tmp_path: Path) -> None:
    """A data dir of the previous version: no sealed K, plaintext controller key and client
    key. It opens with the same identity and its secrets are then encrypted under K."""
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    old_key = keys.Ed25519PrivateKey.generate()
    client = export_private(generate_client_key())
    st = StateStore(data / "state.sqlite")
    st.set_meta("controller_key", keys.private_pem(old_key))
    st._db.execute("INSERT INTO cvms (id, record, client_key) VALUES (?, ?, ?)",
                   ("00000000000000aa", '{"id": "00000000000000aa", "name": "old", "provider": "local", '
                    '"tee": "simulated-snp", "created_at": "2026-01-01T00:00:00.000000Z", "status": "deleted", '
                    '"mode": "deleted"}', client))
    st.close()
    ctl = build_controller(data)
    assert ctl.controller_id == keys.key_id(old_key.public_key())
    assert ctl.state.client_key("00000000000000aa") == client
    ctl.close()
    db = sqlite3.connect(data / "state.sqlite")
    ck = db.execute("SELECT client_key FROM cvms").fetchone()[0]
    pem = db.execute("SELECT v FROM meta WHERE k='controller_key'").fetchone()[0]
    sealed = db.execute("SELECT v FROM meta WHERE k='state_key_sealed'").fetchone()[0]
    db.close()
    assert StateKey.is_encrypted(ck) and StateKey.is_encrypted(pem)
    k = StateKey(SimulatedTee(data / "tee").unseal(sealed))
    assert k.decrypt(client_key_label("00000000000000aa"), ck) == client
    assert k.decrypt(CONTROLLER_KEY_LABEL, pem) == keys.private_pem(old_key)
    # A blob cannot be moved to another slot (the label is associated data).
    with pytest.raises(StateKeyError):
        k.decrypt(client_key_label("00000000000000bb"), ck)
