"""Attacks on the log's guarantees: a crash mid-command, tampering and rollback of the
stored log behind the controller's back."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from duet.client.http import ClientError
from duet.client.verify import fetch_leaves, verify
from duet.ledger import entries
from duet.ledger.store import LedgerStore
from helpers import ControllerProc


def _decoded(c: ControllerProc, cvm: str) -> list[dict[str, object]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _verify(c: ControllerProc, cvm: str, state: Path):  # type: ignore[no-untyped-def]
    with c.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=state)
    return report


def _failed(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.detail for c in report.checks if not c.ok}


def test_crash_mid_command_is_closed_as_interrupted(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo before")
    state = tmp_path / "user"
    assert _verify(controller, cvm, state).ok

    def long_command() -> None:
        try:
            owner.run(cvm, "sleep 30")
        except ClientError:
            pass  # the controller dies under it

    t = threading.Thread(target=long_command, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while _decoded(controller, cvm)[-1]["type"] != "command":
        assert time.monotonic() < deadline, "the command entry never appeared"
        time.sleep(0.02)
    # The command entry is durable before the command is sent.
    assert _decoded(controller, cvm)[-1]["command"] == "sleep 30"
    controller.kill(signal.SIGKILL)
    t.join(timeout=10)

    controller.start()
    log = _decoded(controller, cvm)
    cmd_index = max(i for i, e in enumerate(log) if e["type"] == "command" and e["command"] == "sleep 30")
    assert log[cmd_index + 1]["type"] == "interrupted"
    assert log[cmd_index + 1]["command_index"] == cmd_index
    # The new checkpoint is consistent with the one verified before the crash.
    report = _verify(controller, cvm, state)
    assert report.ok, _failed(report)
    assert any(c.name == "consistency" and "extends" in c.detail for c in report.checks)
    # The sealed SSH key still opens the CVM.
    assert owner.run(cvm, "echo after")["exit_status"] == 0


def _rewrite_log(data: Path, cvm: str, mutate) -> None:  # type: ignore[no-untyped-def]
    """The strongest host-side edit: a self-consistent store whose tree matches the
    altered leaves (as if the attacker recomputed every hash)."""
    path = data / "ledger.sqlite"
    old = LedgerStore(path)
    logs = {lid: old.leaves(lid, 0, old.tree_head(lid).size) for lid in old.log_ids()}
    old.close()
    logs[cvm] = mutate(logs[cvm])
    for suffix in ("", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    new = LedgerStore(path)
    for lid, leaves in logs.items():
        new.create_log(lid)
        new.append(lid, leaves)
    new.close()


def test_edited_entry_fails_verification(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo the real output")
    state = tmp_path / "user"
    assert _verify(controller, cvm, state).ok
    controller.kill()

    def edit(leaves: list[bytes]) -> list[bytes]:
        out = []
        for leaf in leaves:
            e = entries.decode(leaf)
            if e["type"] == "result" and e["stdout"] == "the real output\n":
                e["stdout"] = "a forged output\n"
            out.append(entries.encode(e))
        assert out != leaves
        return out

    _rewrite_log(controller.data, cvm, edit)
    controller.start()
    failed = _failed(_verify(controller, cvm, state))
    assert "consistency" in failed, failed


def test_rollback_fails_verification(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    for i in range(3):
        owner.run(cvm, f"echo {i}")
    state = tmp_path / "user"
    assert _verify(controller, cvm, state).ok
    controller.kill()
    _rewrite_log(controller.data, cvm, lambda leaves: leaves[:-4])
    controller.start()
    failed = _failed(_verify(controller, cvm, state))
    assert "rolled back" in failed.get("consistency", ""), failed


def test_flipped_byte_in_store_is_refused(controller: ControllerProc, tmp_path: Path) -> None:
    """A raw edit (no hash recomputation) is caught by the store itself: the controller
    refuses to serve a log it cannot prove, and verification fails."""
    import sqlite3

    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo payload-to-flip")
    controller.kill()
    db = sqlite3.connect(controller.data / "ledger.sqlite")
    rows = db.execute("SELECT log, idx, leaf FROM leaves").fetchall()
    flipped = False
    for log_id, idx, leaf in rows:
        if b"payload-to-flip" in leaf and b'"result"' in leaf:
            db.execute("UPDATE leaves SET leaf=? WHERE log=? AND idx=?",
                       (leaf.replace(b"payload-to-flip", b"payload-to-flop"), log_id, idx))
            flipped = True
    db.commit()
    db.close()
    assert flipped, "found no stored leaf to edit"
    try:
        controller.start()
    except RuntimeError:
        return  # refusing to start on a corrupt log is also a refusal to serve it
    report = _verify(controller, cvm, tmp_path / "user")
    assert not report.ok
    assert "log_corrupt" in " ".join(_failed(report).values())


def test_restored_old_data_dir_is_refused_when_shown_a_newer_checkpoint(
    controller: ControllerProc, tmp_path: Path
) -> None:
    """The host restores an old copy of the (sealed) data dir. A user who saw a newer
    checkpoint shows it; the controller refuses to serve that log and says why."""
    import shutil

    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo one")
    controller.kill()
    snapshot = tmp_path / "old-data"
    shutil.copytree(controller.data, snapshot, ignore=shutil.ignore_patterns("cvms"))
    controller.start()
    owner.run(cvm, "echo two")
    state = tmp_path / "user"
    assert _verify(controller, cvm, state).ok  # remembers the newer checkpoint
    controller.kill()
    for name in ("ledger.sqlite", "state.sqlite"):
        for suffix in ("", "-wal", "-journal"):
            Path(str(controller.data / name) + suffix).unlink(missing_ok=True)
            src = Path(str(snapshot / name) + suffix)
            if src.exists():
                shutil.copy2(src, Path(str(controller.data / name) + suffix))
    controller.start()
    report = _verify(controller, cvm, state)
    failed = _failed(report)
    assert "rolled back" in failed["consistency"] and "refuses" in failed["consistency"]
    # From now on the controller refuses every request about that log, to anyone.
    with controller.http() as http, pytest.raises(ClientError) as info:
        http.get_json(f"/v1/cvms/{cvm}")
    assert info.value.code == "rollback_detected" and info.value.status == 409


def test_forked_log_is_refused_when_shown_a_checkpoint_it_signed(controller: ControllerProc) -> None:
    """Same size, other contents (the host rewrote the log and every hash): a checkpoint
    this controller signed for the real history exposes the fork."""
    import base64

    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo the real output")
    with controller.http() as http:
        note = http.get_text(f"/v1/cvms/{cvm}/checkpoint")
    controller.kill()

    def edit(leaves: list[bytes]) -> list[bytes]:
        out = []
        for leaf in leaves:
            e = entries.decode(leaf)
            if e["type"] == "result" and e["stdout"] == "the real output\n":
                e["stdout"] = "a forged output\n"
            out.append(entries.encode(e))
        return out

    _rewrite_log(controller.data, cvm, edit)
    controller.start()
    header = {"Duet-Checkpoint": base64.b64encode(note.encode()).decode()}
    with controller.http() as http, pytest.raises(ClientError) as info:
        http.get_text(f"/v1/cvms/{cvm}/checkpoint", headers=header)
    assert info.value.code == "rollback_detected" and "fork" in info.value.message
