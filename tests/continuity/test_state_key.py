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


def test_provider_secrets_are_under_k_and_plaintext_is_refused(tmp_path: Path) -> None:
    """The credentials path's keys (the X25519 key credentials are sealed to, the MAC key)
    and stored credentials are secrets like the controller key: under K, bound to their
    slot. A host that swaps in a plaintext HPKE key of its own (it would then read every
    credential sealed to the controller afterwards) is refused."""
    data, _ = _first_start(tmp_path)
    ctl = build_controller(data)
    hpke = ctl.setup.hpke_key.private_bytes_raw()
    ctl.state.set_secret("credentials:azure", b'{"client_secret": "s3cret-value"}')
    ctl.close()
    db = sqlite3.connect(data / "state.sqlite")
    rows = dict(db.execute("SELECT k, v FROM meta WHERE k LIKE 'credentials%'").fetchall())
    assert set(rows) == {"credentials_hpke_key", "credentials_mac_key", "credentials:azure"}
    assert all(StateKey.is_encrypted(v) for v in rows.values())
    assert hpke not in rows["credentials_hpke_key"] and b"s3cret" not in rows["credentials:azure"]
    db.close()
    # (a failed start leaves its state file locked in this process: one data dir per attack)
    for n, (slot, value, refusal) in enumerate([
            ("credentials_mac_key", rows["credentials_hpke_key"], "does not open"),  # moved to another slot
            ("credentials_hpke_key", os.urandom(32), "not encrypted")]):  # the host's own, in the clear
        copy = tmp_path / f"attack{n}"
        copy.mkdir()
        (copy / "data").mkdir(mode=0o700)
        for f in data.iterdir():
            if f.is_file():
                (copy / "data" / f.name).write_bytes(f.read_bytes())
        if (data / "tee").exists():
            import shutil

            shutil.copytree(data / "tee", copy / "data" / "tee")
        db = sqlite3.connect(copy / "data" / "state.sqlite")
        db.execute("UPDATE meta SET v=? WHERE k=?", (value, slot))
        db.commit()
        db.close()
        with pytest.raises(StateKeyError, match=refusal):
            build_controller(copy / "data")


def test_provider_secrets_of_an_older_data_dir_are_moved_under_k(tmp_path: Path) -> None:
    data, _ = _first_start(tmp_path)
    db = sqlite3.connect(data / "state.sqlite")
    db.execute("DELETE FROM meta WHERE k IN ('credentials_hpke_key', 'state_key_upgraded_secret_metas')")
    plain = os.urandom(32)
    db.execute("INSERT INTO meta (k, v) VALUES ('credentials_hpke_key', ?)", (plain,))
    db.commit()
    db.close()
    ctl = build_controller(data)
    assert ctl.setup.hpke_key.private_bytes_raw() == plain
    ctl.close()
    db = sqlite3.connect(data / "state.sqlite")
    at_rest = db.execute("SELECT v FROM meta WHERE k='credentials_hpke_key'").fetchone()[0]
    db.close()
    assert StateKey.is_encrypted(at_rest) and plain not in at_rest


def test_the_etcd_store_key_is_kept_under_k(tmp_path: Path) -> None:
    """The key the replicated store's state records are encrypted under opens every CVM's
    SSH key in etcd: in the state file it is a secret like the others."""
    from duet.controller.replicated import state_key_of

    state = StateStore(tmp_path / "state.sqlite")
    state.cipher = StateKey.generate()
    key = state_key_of(state)
    at_rest = state.get_meta("store_state_key")
    assert at_rest is not None and StateKey.is_encrypted(at_rest) and key not in at_rest
    assert state_key_of(state) == key  # the same key next time
    state.set_meta("store_state_key", os.urandom(32))  # the host's own, in the clear: refused
    with pytest.raises(StateKeyError, match="not encrypted"):
        state_key_of(state)
    state.close()
