"""The controller's side of witnessing (controller/witnessing.py): `heads` entries commit
every CVM log to the controller log, witnesses configured by a signed `witnesses.set`
cosign it in the background, and a data dir older than what they cosigned does not start.
Each test attacks or stresses one of these properties."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from duet.client.errors import ClientError
from duet.client.owner import OwnerClient
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import Checkpoint, open_checkpoint
from duet.ledger.cosignature import verified_cosignatures
from duet.ledger.note import Verifier
from helpers import ControllerProc
from inproc import add_log
from witness_proc import WitnessProc


@pytest.fixture
def witness(controller: ControllerProc, tmp_path: Path) -> Iterator[WitnessProc]:
    w = WitnessProc.following(tmp_path / "w1", controller)
    yield w
    w.kill()


def _ctl_entries(c: ControllerProc) -> list[dict[str, Any]]:
    with c.http() as http:
        size = int(http.get_json("/v1/controller")["witnessing"]["controller_log_size"])
        body = http.get_json("/v1/controller/log/entries", start=0, end=size)
    return [entries.decode(base64.b64decode(x["leaf"])) for x in body["entries"]]


def _wait(pred: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_cvm_head_is_proven_by_a_cosigned_controller_log_checkpoint(
        controller: ControllerProc, witness: WitnessProc) -> None:
    owner = controller.owner()
    res = owner.set_witnesses([(witness.vkey, witness.url)], 1)
    assert res["quorum"] == 1
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo witnessed")
    with controller.http() as http:
        info = http.get_json("/v1/controller")
        ctl_key = Verifier(f"duet/{info['controller_id']}", keys.public_from_b64(info["public_key"]))
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        proof = http.get_json(f"/v1/cvms/{cvm}/witnessed", size=size)
        cvm_cp = open_checkpoint(http.get_text(f"/v1/cvms/{cvm}/checkpoint"), ctl_key,
                                 expected_origin=f"duet/{info['controller_id']}/{cvm}")
    # The controller-log checkpoint is the controller's, and the witness cosigned it.
    note = proof["controller_checkpoint"]
    ctl_cp: Checkpoint = open_checkpoint(note, ctl_key, expected_origin=witness.origin)
    assert set(verified_cosignatures(note, [witness.verifier])) == {witness.name}
    # The heads entry is in that checkpoint, and commits exactly the head the user sees.
    ctl = _ctl_entries(controller)
    leaf = entries.encode(ctl[proof["heads_index"]])
    hashes = [base64.b64decode(h) for h in proof["inclusion"]]
    merkle.verify_inclusion(merkle.leaf_hash(leaf), proof["heads_index"], ctl_cp.size, hashes, ctl_cp.root_hash)
    committed = {h["cvm"]: h for h in ctl[proof["heads_index"]]["heads"]}
    assert proof["head"]["size"] >= size
    assert committed[cvm]["size"] == proof["head"]["size"]
    served = open_checkpoint(proof["cvm_checkpoint"], ctl_key, expected_origin=cvm_cp.origin)
    assert (served.size, base64.b64encode(served.root_hash).decode()) == (proof["head"]["size"], committed[cvm]["root"])
    if proof["head"]["size"] == cvm_cp.size:
        assert base64.b64decode(committed[cvm]["root"]) == cvm_cp.root_hash
    # The served controller-log checkpoint carries the cosignature once it is collected,
    # and /v1/controller shows how far the witness is.
    with controller.http() as http:
        _wait(lambda: verified_cosignatures(http.get_text("/v1/controller/log/checkpoint"), [witness.verifier]),
              "a cosigned controller-log checkpoint")
        status = http.get_json("/v1/controller")["witnessing"]
    assert status["source"].startswith("controller log entry")
    (w,) = status["witnesses"]
    assert w["name"] == witness.name and w["cosigned_size"] is not None and w["last_error"] is None
    # The cosignature's timestamp raised the trusted clock's lower bound (tee/clock.py).
    with controller.http() as http:
        bound = http.get_json("/v1/controller")["time_lower_bound"]
    (ts,) = verified_cosignatures(note, [witness.verifier]).values()
    assert bound is not None and datetime.fromisoformat(bound) >= datetime.fromtimestamp(ts, UTC)


def test_witnesses_set_by_a_non_owner_is_refused(controller: ControllerProc) -> None:
    before = _ctl_entries(controller)
    stranger = OwnerClient(keys.Ed25519PrivateKey.generate(), controller.url, http=controller.http())
    with pytest.raises(ClientError) as info:
        stranger.set_witnesses([("w.example+01020304+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                 "http://127.0.0.1:9")], 1)
    assert info.value.code in ("unknown_key", "bad_signature", "malformed_intent")
    after = _ctl_entries(controller)
    assert [e["type"] for e in after if e["type"] != "heads"] == [e["type"] for e in before if e["type"] != "heads"]
    assert not any(e["type"] == "witnesses" for e in after)


def test_a_malformed_witness_key_is_refused_before_signing_reaches_the_log(controller: ControllerProc) -> None:
    with pytest.raises(ClientError) as info:
        controller.owner().set_witnesses([("not-a-vkey", "http://127.0.0.1:9")], 1)
    assert info.value.code == "malformed_intent" and "vkey" in info.value.message
    with pytest.raises(ClientError):
        controller.owner().set_witnesses([], 1)  # a quorum larger than the witnesses


class _Blackhole:
    """A 'witness' that accepts connections and never answers (down, but not refusing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


def test_a_witness_that_never_answers_blocks_no_command(controller: ControllerProc) -> None:
    from duet.ledger.cosignature import Cosigner

    hole = _Blackhole()
    try:
        vkey = Cosigner("witness.test/down", keys.Ed25519PrivateKey.generate()).vkey()
        owner = controller.owner()
        owner.set_witnesses([(vkey, hole.url)], 1)
        _wait(lambda: hole.held, "the controller to contact the witness")
        # The witness holds the controller's submission open; commands go on regardless.
        cvm = owner.create("local")["id"]
        for i in range(3):
            assert owner.run(cvm, f"echo {i}")["exit_status"] == 0
        with controller.http() as http:
            status = http.get_json("/v1/controller")["witnessing"]["witnesses"][0]
            assert status["cosigned_size"] is None
            # The delay is visible: the round trip times out and is reported.
            _wait(lambda: http.get_json("/v1/controller")["witnessing"]["witnesses"][0]["last_error"],
                  "the witness failure to be reported")
            # A user asking for a witnessed head is told why there is none (no 500).
            with pytest.raises(ClientError) as info:
                http.get_json(f"/v1/cvms/{cvm}/witnessed")
            assert info.value.code == "not_witnessed" and "witness.test/down" in info.value.message
    finally:
        hole.close()


def test_witness_flag_is_refused_under_gramine(tmp_path: Path) -> None:
    from helpers import free_port

    r = subprocess.run(
        [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(tmp_path / "d"), "--tee",
         "gramine", "--listen", f"127.0.0.1:{free_port()}", "--witness",
         "w.example+01020304+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "error [config_error]" in r.stderr and "refused under --tee gramine" in r.stderr
    assert "witnesses.set" in r.stderr


def test_a_data_dir_older_than_what_the_witness_cosigned_does_not_start(
        controller: ControllerProc, witness: WitnessProc, tmp_path: Path) -> None:
    owner = controller.owner()
    owner.set_witnesses([(witness.vkey, witness.url)], 1)

    def cosigned_size() -> int | None:
        with controller.http() as http:
            w = http.get_json("/v1/controller")["witnessing"]
        return w["witnesses"][0]["cosigned_size"] if w["witnesses"][0]["cosigned_size"] == \
            w["controller_log_size"] else None

    _wait(cosigned_size, "the witness to cosign the controller log")
    controller.kill(signal.SIGTERM)
    old = tmp_path / "old-data"
    shutil.copytree(controller.data, old, ignore=shutil.ignore_patterns("cvms", ".lock"))
    controller.start()
    cvm = controller.owner().create("local")["id"]  # the controller log grows (heads)
    with controller.http() as http:
        http.get_json(f"/v1/cvms/{cvm}/witnessed")  # cosigned beyond the saved copy
    controller.kill(signal.SIGTERM)
    for name in ("state.sqlite", "ledger.sqlite"):
        for suffix in ("", "-wal", "-shm"):
            (controller.data / (name + suffix)).unlink(missing_ok=True)
            if (old / (name + suffix)).exists():
                shutil.copy2(old / (name + suffix), controller.data / (name + suffix))
    cmd = [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(controller.data),
           "--listen", f"127.0.0.1:{controller.port}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    assert "error [witness_rollback]" in r.stderr and witness.name in r.stderr
    assert "rolled back" in r.stderr
    # The newest data dir still starts (the refusal is about the copy, not the witness).


def test_heads_are_batched_and_name_only_what_changed(tmp_path: Path) -> None:
    import asyncio

    from duet.controller.serve import build_controller
    from duet.controller.witnessing import WitnessConfig
    from duet.ledger.cosignature import Cosigner

    leaf = entries.encode({"v": 1, "type": "error", "time": entries.now_rfc3339(), "code": "x", "message": "y"})
    ctl = build_controller(tmp_path / "data")  # not started: no background round runs here
    try:
        w = ctl.witnessing
        a = add_log(ctl, [leaf], "a0a0a0a0a0a0a0a0")
        b = add_log(ctl, [leaf], "b0b0b0b0b0b0b0b0")
        ctl.append(ctl._records[a], [entries.ErrorEntry(code="x", message="before witnesses")])
        assert w.flush_heads() is None  # no witnesses: the controller log does not grow
        w.seed(WitnessConfig.parse([(Cosigner("witness.test/seed", keys.Ed25519PrivateKey.generate()).vkey(),
                                     "http://127.0.0.1:9")], 1, "test"))
        first = w.flush_heads()
        assert first is not None
        assert {h["cvm"] for h in entries.decode(ctl.ledger.leaves("controller", first, first + 1)[0])["heads"]} \
            == {a, b}
        start = ctl.ledger.tree_head("controller").size
        for _ in range(50):  # a burst of appends on one CVM
            ctl.append(ctl._records[a], [entries.ErrorEntry(code="x", message="burst")])
        assert ctl.ledger.tree_head("controller").size == start  # nothing written on the command path
        index = w.flush_heads()
        assert index == start and ctl.ledger.tree_head("controller").size == start + 1
        heads = entries.decode(ctl.ledger.leaves("controller", index, index + 1)[0])["heads"]
        head_a = ctl.ledger.tree_head(a)
        old = next(h["size"] for h in entries.decode(ctl.ledger.leaves("controller", first, first + 1)[0])["heads"]
                   if h["cvm"] == a)
        proof = [base64.b64encode(h).decode() for h in ctl.ledger.consistency_proof(a, old, head_a.size)]
        assert heads == [{"cvm": a, "size": head_a.size, "root": base64.b64encode(head_a.root_hash).decode(),
                          "consistency": proof}]
        assert len(proof) > 1  # the proof from a's first head, which users check
        assert w.flush_heads() is None  # nothing changed: no entry
        # The batch size forces a round before the interval is over.
        w._wake = asyncio.Event()
        for _ in range(w.batch - 1):
            w.note_append(b, 1)
        assert not w._wake.is_set()
        w.note_append(b, 1)
        assert w._wake.is_set()
    finally:
        ctl.close()


def test_development_witness_flag_seeds_witnessing_and_start_needs_a_quorum(
        controller: ControllerProc, tmp_path: Path) -> None:
    w = WitnessProc.following(tmp_path / "w", controller)
    try:
        controller.kill(signal.SIGTERM)
        controller.start("--witness", f"{w.vkey}={w.url}")
        cvm = controller.owner().create("local")["id"]
        with controller.http() as http:
            http.get_json(f"/v1/cvms/{cvm}/witnessed")
            status = http.get_json("/v1/controller")["witnessing"]
        assert status["source"] == "--witness (development)" and status["quorum"] == 1
        assert status["witnesses"][0]["cosigned_size"] is not None
        controller.kill(signal.SIGTERM)
    finally:
        w.kill()
    # The witness is down now: a rollback cannot be ruled out, so the controller does not start.
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data",
                        str(controller.data), "--listen", f"127.0.0.1:{controller.port}", "--witness",
                        f"{w.vkey}={w.url}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    assert "error [witnesses_unreachable]" in r.stderr and "0 of 1 witnesses answered" in r.stderr


def _duet(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_duet_verify_demands_the_witnesses_it_is_given(
        controller: ControllerProc, witness: WitnessProc, tmp_path: Path) -> None:
    import json

    from duet.ledger.cosignature import Cosigner

    owner = controller.owner()
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    r = _duet("controller", "witnesses", "set", "--witness", f"{witness.vkey}={witness.url}", "--quorum", "1",
              "--controller", controller.url, "--key", str(key), "--trust-simulated", "--state-dir",
              str(tmp_path / "owner-state"), home=tmp_path)
    assert r.returncode == 0 and f"witnesses: {witness.name}; quorum 1" in r.stdout, r.stderr
    r = _duet("controller", "witnesses", "set", "--witness", "nope", "--controller", controller.url, "--key",
              str(key), "--trust-simulated", home=tmp_path)
    assert r.returncode == 2 and "is not VKEY=URL" in r.stderr
    cvm = owner.create("local")["id"]
    common = ["verify", cvm, "--controller", controller.url, "--trust-simulated", "--json"]

    def run(*extra: str, state: str) -> tuple[int, dict[str, Any]]:
        r = _duet(*common, "--state-dir", str(tmp_path / state), *extra, home=tmp_path)
        return r.returncode, json.loads(r.stdout)

    def check(report: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in report["checks"] if c["name"] == "witness_cosigned")

    rc, report = run("--witness", witness.vkey, state="u1")
    assert rc == 0, [c for c in report["checks"] if not c["ok"]]
    assert check(report)["ok"] and witness.name in check(report)["detail"] and "ago" in check(report)["detail"]
    # The same through the expectations file.
    exp = tmp_path / "expect.yaml"
    exp.write_text(f"witnesses:\n  keys: ['{witness.vkey}']\n  quorum: 1\n  max_age: 10m\n")
    rc, report = run("--expect", str(exp), state="u2")
    assert rc == 0 and check(report)["ok"]
    # A witness that never cosigned this controller's log: the check fails and says so.
    other = Cosigner("witness.test/absent", keys.Ed25519PrivateKey.generate()).vkey()
    rc, report = run("--witness", witness.vkey, "--witness", other, state="u3")
    assert rc == 3 and not check(report)["ok"]
    assert "not signed by witness.test/absent" in check(report)["detail"]
    rc, report = run("--witness", witness.vkey, "--witness", other, "--witness-quorum", "1", state="u4")
    assert rc == 0 and check(report)["ok"]
    # Without witnesses demanded, there is no such check (nothing to compare with).
    rc, report = run(state="u5")
    assert rc == 0 and not any(c["name"] == "witness_cosigned" for c in report["checks"])
    # A bad key in the expectations is refused up front.
    exp.write_text("witnesses:\n  keys: ['nope']\n")
    r = _duet(*common, "--state-dir", str(tmp_path / "u6"), "--expect", str(exp), home=tmp_path)
    assert r.returncode == 1 and "error [invalid_expectations]" in r.stderr and "vkey" in r.stderr


def test_two_controllers_on_copies_of_one_data_dir_the_one_left_behind_stops(
        controller_factory: Any, tmp_path: Path) -> None:
    """The host starts two enclaves on copies of the sealed data dir (no file lock spans
    copies): both pass start-up, but once one copy's controller log is cosigned, the other's
    next submission meets a witness that holds a log it does not extend, and it stops
    accepting intents and serving its controller log."""
    a: ControllerProc = controller_factory().start()
    w = WitnessProc.following(tmp_path / "w", a)
    try:
        a.owner().set_witnesses([(w.vkey, w.url)], 1)

        def settled(c: ControllerProc) -> bool:
            with c.http() as http:
                st = http.get_json("/v1/controller")["witnessing"]
            return bool(st["witnesses"][0]["cosigned_size"] == st["controller_log_size"])

        _wait(lambda: settled(a), "the witness to cosign")
        a.kill(signal.SIGTERM)
        b: ControllerProc = controller_factory(a.owner_key)
        shutil.copytree(a.data, b.data, ignore=shutil.ignore_patterns("cvms", ".lock"))
        a.start()
        b.start()  # same size and root as the witness holds: both start
        cvm_a = a.owner().create("local")["id"]
        with a.http() as http:
            http.get_json(f"/v1/cvms/{cvm_a}/witnessed")  # A's history is cosigned first
        cvm_b = b.owner().create("local")["id"]  # B's controller log now differs from A's

        def b_refuses() -> str | None:
            with b.http() as http:
                try:
                    http.get_text("/v1/controller/log/checkpoint")
                except ClientError as exc:
                    return exc.code + ": " + exc.message
            return None

        refusal = _wait(b_refuses, "B to refuse its controller log")
        assert refusal.startswith("rollback_detected") and w.name in refusal
        with pytest.raises(ClientError) as info:
            b.owner().run(cvm_b, "true")
        assert info.value.code == "rollback_detected"
        with b.http() as http:
            assert http.get_json("/v1/controller")["witnessing"]["witnesses"][0]["conflict"]
        # A, whose history the witness cosigned, goes on.
        assert a.owner().run(cvm_a, "echo still here")["exit_status"] == 0
    finally:
        w.kill()


def test_duet_verify_controller_log_demands_a_cosigned_checkpoint(
        controller: ControllerProc, witness: WitnessProc, tmp_path: Path) -> None:
    """`duet verify --controller-log` with witnesses: the controller log verified must extend
    a checkpoint of it that a quorum of the user's witnesses cosigned. A witness key that
    never cosigned it (or a quorum it cannot reach) fails the check and says who is missing."""
    import json

    from duet.ledger.cosignature import Cosigner

    controller.owner().set_witnesses([(witness.vkey, witness.url)], 1)
    common = ["verify", "--controller-log", "--controller", controller.url, "--trust-simulated", "--json"]

    def run(*extra: str, state: str) -> tuple[int, dict[str, Any]]:
        r = _duet(*common, "--state-dir", str(tmp_path / state), *extra, home=tmp_path)
        return r.returncode, json.loads(r.stdout)

    def check(report: dict[str, Any]) -> dict[str, Any]:
        return next(c for c in report["checks"] if c["name"] == "witness_cosigned")

    rc, report = run("--witness", witness.vkey, state="u1")
    assert rc == 0, [c for c in report["checks"] if not c["ok"]]
    assert check(report)["ok"] and witness.name in check(report)["detail"]
    exp = tmp_path / "expect.yaml"
    exp.write_text(f"witnesses:\n  keys: ['{witness.vkey}']\n  quorum: 1\n  max_age: 10m\n")
    rc, report = run("--expect", str(exp), state="u2")
    assert rc == 0 and check(report)["ok"]
    other = Cosigner("witness.test/absent", keys.Ed25519PrivateKey.generate()).vkey()
    rc, report = run("--witness", other, state="u3")
    assert rc == 3 and not check(report)["ok"]
    assert "not signed by witness.test/absent" in check(report)["detail"]
    rc, report = run("--witness", witness.vkey, "--witness", other, state="u4")  # quorum: both
    assert rc == 3 and not check(report)["ok"]
    rc, report = run(state="u5")
    assert rc == 0 and not any(c["name"] == "witness_cosigned" for c in report["checks"])


def test_cosignatures_survive_a_restart_without_asking_the_witness_again(
        controller: ControllerProc, witness: WitnessProc, tmp_path: Path) -> None:
    """The cosignatures collected are persisted in the state store: the controller reopened
    on its data dir, with the witness gone (no resubmission possible), serves them with its
    controller-log checkpoint. A persisted line that no longer verifies is dropped."""
    from duet.controller.serve import build_controller
    from duet.controller.witnessing import COSIGNATURES_META

    controller.owner().set_witnesses([(witness.vkey, witness.url)], 1)

    def cosigned() -> str | None:
        with controller.http() as http:
            note = http.get_text("/v1/controller/log/checkpoint")
        return note if verified_cosignatures(note, [witness.verifier]) else None

    served = _wait(cosigned, "a cosigned controller-log checkpoint")
    controller.kill(signal.SIGTERM)
    witness.kill()
    ctl = build_controller(controller.data)  # not started: no start-up round with the (dead) witness
    try:
        note = ctl.controller_log_checkpoint()
        assert verified_cosignatures(note, [witness.verifier]) == verified_cosignatures(served, [witness.verifier])
        assert ctl.witnessing.cosigned() is not None
        status = ctl.witnessing.status()["witnesses"][0]
        assert status["cosigned_size"] == ctl.ledger.tree_head("controller").size
        # A tampered record (another signature in the line) is verified again and dropped.
        raw = ctl.state.get_meta(COSIGNATURES_META)
        assert raw is not None
        doc = json.loads(raw)
        for by_vkey in doc.values():
            for vkey, line in by_vkey.items():
                sig = base64.b64decode(line.split()[-1])
                by_vkey[vkey] = line.rsplit(" ", 1)[0] + " " + base64.b64encode(
                    sig[:-1] + bytes([sig[-1] ^ 1])).decode() + "\n"
        ctl.state.set_meta(COSIGNATURES_META, json.dumps(doc).encode())
    finally:
        ctl.close()
    ctl = build_controller(controller.data)
    try:
        assert verified_cosignatures(ctl.controller_log_checkpoint(), [witness.verifier]) == {}
        assert ctl.witnessing.cosigned() is None
    finally:
        ctl.close()
