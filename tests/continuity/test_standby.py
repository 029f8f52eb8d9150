"""Standby and failover on the etcd store (docs/continuity.md), with real controller
processes, a real etcd and local CVMs outside every data dir (`--cvm-root`).

Build A is the primary; the owner approves build B; B joins as a standby (`--standby-of`)
and receives K; an unapproved build gets nothing. When A dies (kill -9), B takes the lease,
logs `promote`, closes the command A left running, rotates every CVM key and serves. A,
restarted on its old data dir, appends nothing and reaches no CVM. etcd rolled back under
the standby is refused against what the witnesses cosigned.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from continuity_helpers import controller_in as _controller
from continuity_helpers import log_entries as _entries
from continuity_helpers import old_secrets
from continuity_helpers import try_login as _try_login

from duet.client.expectations import UserExpectations
from duet.client.http import ClientError
from duet.client.verify import verify
from duet.controller.etcd import EtcdClient, KeyValue
from duet.ledger import keys
from helpers import free_port

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
TTL = 2


@pytest.fixture
def etcd(etcd_address: str) -> Iterator[EtcdClient]:
    host, port = etcd_address.rsplit(":", 1)
    client = EtcdClient(host, int(port))
    yield client
    client.close()


def _args(etcd_address: str, cvm_root: Path, build: str, *extra: str) -> list[str]:
    return ["--store", f"etcd://{etcd_address}", "--lease-ttl", str(TTL), "--cvm-root", str(cvm_root),
            "--simulated-mrenclave", build, *extra]


def _snapshot(etcd: EtcdClient, cid: str) -> list[KeyValue]:
    return [kv for kv in etcd.get_prefix(f"duet/{cid}/".encode()) if not kv.key.endswith(b"/primary")]


def _until(fn: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = fn()
            if got:
                return got
        except ClientError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def test_standby_takes_over_and_the_old_primary_reaches_nothing(
        tmp_path: Path, cvm_root: Path, etcd_address: str, etcd: EtcdClient) -> None:
    owner_key = keys.Ed25519PrivateKey.generate()
    a = _controller(tmp_path, "a", owner_key)
    b = _controller(tmp_path, "b", owner_key)
    try:
        a.start(*_args(etcd_address, cvm_root, A))
        owner_a = a.owner()
        cvm = owner_a.create("local", name="web")["id"]
        assert owner_a.run(cvm, "echo under A > built-by", timeout_s=30)["exit_status"] == 0
        cid = owner_a.controller_id
        owner_a.approve_build(mrenclave=B)

        # An unapproved build asks to stand by: refused, logged, nothing handed over.
        rogue = tmp_path / "rogue" / "data"
        res = subprocess.run(
            [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(rogue),
             "--listen", f"127.0.0.1:{free_port()}", "--standby-of", a.url, *_args(etcd_address, cvm_root, C)],
            capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "error [join_failed]" in res.stderr and "standby refused" in res.stderr
        assert "Traceback" not in res.stderr
        assert not (rogue / "state.sqlite").exists()
        ctl_log = _entries(a, "/v1/controller/log/entries")
        assert ctl_log[-1]["type"] == "handover_refused" and ctl_log[-1]["mrenclave"] == C
        assert ctl_log[-1]["reason"].startswith("standby:")
        assert not any(e["type"] == "standby_joined" for e in ctl_log)

        # B joins as a standby: logged by A before K left, naming both builds.
        b.start(*_args(etcd_address, cvm_root, B, "--standby-of", a.url))
        ctl_log = _entries(a, "/v1/controller/log/entries")
        joined = ctl_log[-1]
        assert joined["type"] == "standby_joined" and (joined["from_mrenclave"], joined["to_mrenclave"]) == (A, B)
        # It holds K, not the lease: it accepts no intent and serves no log; A goes on.
        with b.http() as hb:
            info = hb.get_json("/v1/controller")
            assert info["role"] == "standby" and info["controller_id"] == cid
            with pytest.raises(ClientError) as read:
                hb.get_json(f"/v1/cvms/{cvm}/entries")
            assert (read.value.code, read.value.status) == ("standby", 503)
        with pytest.raises(ClientError) as refused:
            b.owner().run(cvm, "touch ran-on-the-standby", timeout_s=30)
        assert (refused.value.code, refused.value.status) == ("standby", 503)
        assert owner_a.run(cvm, "test ! -e ran-on-the-standby", timeout_s=30)["exit_status"] == 0
        old_key = old_secrets(a.data, A, [cvm], tmp_path / "copy")[1][cvm]
        view = owner_a.http.get_json(f"/v1/cvms/{cvm}")
        assert asyncio.run(_try_login(view, old_key)) == "in"

        # A dies. B takes the lease, logs `promote`, rotates the key, serves.
        a.kill()
        owner_b = b.owner()
        out = _until(lambda: owner_b.run(cvm, "cat built-by; echo under B", timeout_s=30), "the promotion")
        assert base64.b64decode(out["stdout"]) == b"under A\nunder B\n"
        ctl_log = _entries(b, "/v1/controller/log/entries")
        promote = next(i for i, e in enumerate(ctl_log) if e["type"] == "promote")
        assert ctl_log[promote]["mrenclave"] == B and ctl_log[promote]["key_sha256"] == joined["to_key_sha256"]
        rotated = [e for e in _entries(b, f"/v1/cvms/{cvm}/entries") if e["type"] == "key_rotated"]
        assert len(rotated) == 1 and rotated[0]["reason"] == "promotion"
        assert rotated[0]["controller_log_size"] > promote
        # The rotation is done: its mark is gone from etcd too (it would act again).
        assert etcd.get(f"duet/{cid}/state/meta/rotation_pending".encode()) is None
        # A's copy of the key opens nothing any more.
        outcome = asyncio.run(_try_login(view, old_key))
        assert outcome.startswith("refused"), outcome

        # A comes back on its old data dir: it cannot take the lease, appends nothing, and
        # says why in one line.
        before = _snapshot(etcd, cid)
        again = subprocess.run(
            [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(a.data),
             "--listen", f"127.0.0.1:{free_port()}", *_args(etcd_address, cvm_root, A)],
            capture_output=True, text=True, timeout=120)
        assert again.returncode == 1, again.stderr
        lines = [ln for ln in again.stderr.splitlines() if ln.startswith("error [")]
        assert len(lines) == 1 and lines[0].startswith("error [not_primary]") and "promoted-standby" in lines[0]
        assert "Traceback" not in again.stderr
        assert _snapshot(etcd, cid) == before
        # And the user's verify accepts the promotion only with B in the expected builds.
        with b.http() as hb:
            both = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}, {"mrenclave": B}]}})
            report, _ = verify(hb, cvm, trust_simulated=True, state_dir=tmp_path / "user", expect=both)
            assert report.ok, [c for c in report.checks if not c.ok]
            only_a = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}]}})
            report, _ = verify(hb, cvm, trust_simulated=True, state_dir=tmp_path / "user2", expect=only_a)
            failed = {c.name: c.detail for c in report.checks if not c.ok}
            assert set(failed) == {"controller_builds"} and B[:16] in failed["controller_builds"]
    finally:
        a.kill()
        b.kill()


@pytest.mark.slow
def test_host_loss_under_load(tmp_path: Path, cvm_root: Path, etcd_address: str) -> None:
    """Issue 17, test 3: the owner streams commands to several CVMs; the primary is killed
    (-9) and its data dir deleted; the standby takes over. Every command the owner saw
    acknowledged is in the log with its result, the command in flight ends `interrupted`,
    every CVM accepts new commands, and a user's remembered checkpoints stay consistent."""
    owner_key = keys.Ed25519PrivateKey.generate()
    a = _controller(tmp_path, "a", owner_key)
    b = _controller(tmp_path, "b", owner_key)
    try:
        a.start(*_args(etcd_address, cvm_root, A))
        owner_a = a.owner()
        cvms = [owner_a.create("local", name=f"web{i}")["id"] for i in range(3)]
        user_state = tmp_path / "user"
        with a.http() as ha:
            for cvm in cvms:
                report, _ = verify(ha, cvm, trust_simulated=True, state_dir=user_state)
                assert report.ok, [c for c in report.checks if not c.ok]
        owner_a.approve_build(mrenclave=B)
        b.start(*_args(etcd_address, cvm_root, B, "--standby-of", a.url))

        # Load: two CVMs get a stream of short commands; the third runs a long one.
        acked: dict[str, list[tuple[int, bytes]]] = {c: [] for c in cvms[:2]}
        stop = threading.Event()

        def stream(cvm: str) -> None:
            owner = a.owner()
            n = 0
            while not stop.is_set():
                try:
                    res = owner.run_streamed(cvm, f"echo load-{n}", timeout_s=30)
                except Exception:  # the primary is gone: nothing more is acknowledged
                    return
                acked[cvm].append((int(res["command_index"]), base64.b64decode(res["stdout"])))
                n += 1

        threads = [threading.Thread(target=stream, args=(c,), daemon=True) for c in cvms[:2]]
        for t in threads:
            t.start()
        long = owner_a.run_streamed(cvms[2], "echo started; sleep 60", timeout_s=120, wait=False)
        _until(lambda: all(len(v) >= 3 for v in acked.values())
               and any(e["type"] == "output" for e in _entries(a, f"/v1/cvms/{cvms[2]}/entries")),
               "load on every CVM")

        # The host of A is lost: its process and its data dir.
        a.kill()
        killed = time.monotonic()
        shutil.rmtree(a.data)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        owner_b = b.owner()
        _until(lambda: owner_b.run(cvms[0], "true", timeout_s=30), "the standby to take over")
        took = time.monotonic() - killed

        for cvm, done in acked.items():
            log = _entries(b, f"/v1/cvms/{cvm}/entries")
            for index, stdout in done:
                assert log[index]["type"] == "command" and log[index]["command"] == f"echo {stdout.decode().strip()}"
                results = [e for e in log if e["type"] == "result" and e["command_index"] == index]
                assert len(results) == 1 and results[0]["exit_status"] == 0
        # Every command has an end: its result, or `interrupted` (what A left running).
        for cvm in cvms:
            log = _entries(b, f"/v1/cvms/{cvm}/entries")
            ended = {int(e["command_index"]) for e in log if e["type"] in ("result", "interrupted")}
            assert {i for i, e in enumerate(log) if e["type"] == "command"} <= ended, cvm
        log = _entries(b, f"/v1/cvms/{cvms[2]}/entries")
        closed = [e for e in log if e["type"] == "interrupted" and e["command_index"] == long["command_index"]]
        assert len(closed) == 1 and "a standby took over" in closed[0]["reason"]
        assert not any(e["type"] == "result" and e["command_index"] == long["command_index"] for e in log)

        # Every CVM accepts new commands, under rotated keys.
        for cvm in cvms:
            assert base64.b64decode(owner_b.run(cvm, "echo after", timeout_s=30)["stdout"]) == b"after\n"
            assert [e["reason"] for e in _entries(b, f"/v1/cvms/{cvm}/entries")
                    if e["type"] == "key_rotated"] == ["promotion"]
        # The user who verified under A goes on with the same state dir: B's logs extend
        # the checkpoints it remembered.
        with b.http() as hb:
            for cvm in cvms:
                report, _ = verify(hb, cvm, trust_simulated=True, state_dir=user_state)
                assert report.ok, [c for c in report.checks if not c.ok]
        print(f"failover under load: {took:.2f} s from kill -9 to the first command accepted by the standby")
    finally:
        a.kill()
        b.kill()


def _head_size(snapshot: list[KeyValue], cid: str, log_id: str) -> int:
    key = f"duet/{cid}/log/".encode() + log_id.encode().hex().encode() + b"/head"
    note = next(kv.value for kv in snapshot if kv.key == key)
    return int(note.decode().split("\n")[1])


@pytest.mark.slow
def test_etcd_rolled_back_under_the_standby_is_refused_against_the_witnesses(
        tmp_path: Path, cvm_root: Path, etcd_address: str, etcd: EtcdClient) -> None:
    """Issue 17, test 5: the host restores etcd to an older state while the primary is
    dead. The standby knows only what it verified before it was frozen, which the old
    state still extends; the witness cosigned more. The standby refuses to promote on it,
    says why, and nothing is written to etcd."""
    from witness_proc import WitnessProc

    owner_key = keys.Ed25519PrivateKey.generate()
    a = _controller(tmp_path, "a", owner_key)
    b = _controller(tmp_path, "b", owner_key)
    w: WitnessProc | None = None
    try:
        a.start(*_args(etcd_address, cvm_root, A))
        owner = a.owner()
        cvm = owner.create("local")["id"]
        w = WitnessProc.following(tmp_path / "w", a)
        owner.set_witnesses([(w.vkey, w.url)], 1)
        owner.approve_build(mrenclave=B)
        b.start(*_args(etcd_address, cvm_root, B, "--standby-of", a.url))
        # The standby is frozen (a pause, a partition): from here on it learns nothing.
        assert b.proc is not None
        os.killpg(b.proc.pid, signal.SIGSTOP)
        cid = owner.controller_id
        old = _snapshot(etcd, cid)
        old_size = _head_size(old, cid, "controller")
        for n in range(3):
            owner.run(cvm, f"echo {n}", timeout_s=30)

        def cosigned_beyond() -> bool:
            with a.http() as http:
                st = http.get_json("/v1/controller")["witnessing"]["witnesses"][0]
            return bool(st["cosigned_size"] and st["cosigned_size"] > old_size)

        _until(cosigned_beyond, "the witness to cosign beyond the old state")
        # The primary dies; the host puts etcd back to the older state.
        a.kill()
        for prefix in (b"log/", b"nonce/", b"state/"):
            etcd.delete_prefix(f"duet/{cid}/".encode() + prefix)
        for kv in old:
            etcd.put(kv.key, kv.value)
        rolled = _snapshot(etcd, cid)
        os.killpg(b.proc.pid, signal.SIGCONT)
        assert b.proc.wait(timeout=120) == 1
        log = b.log()
        lines = [ln for ln in log.splitlines() if ln.startswith("error [")]
        assert len(lines) == 1 and lines[0].startswith("error [rollback_detected]"), log[-3000:]
        assert "the size the witnesses cosigned" in lines[0] and "older prefix" in lines[0]
        assert "promoted to primary" not in log
        assert _snapshot(etcd, cid) == rolled
    finally:
        if b.proc is not None and b.proc.poll() is None:
            os.killpg(b.proc.pid, signal.SIGCONT)
        a.kill()
        b.kill()
        if w is not None:
            w.kill()
