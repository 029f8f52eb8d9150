"""The controller log (origin duet/<controller-id>/controller): the one durable decision
point for the owner keys. Each test attacks a way the host or a racing client used to
turn the controller's own state against it (issue 13)."""

from __future__ import annotations

import base64
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet.client.http import ClientError
from duet.client.owner import OwnerClient
from duet.client.verify import fetch_leaves
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import open_checkpoint
from duet.ledger.note import Verifier
from helpers import ControllerProc


def _ctl_log(c: ControllerProc) -> tuple[Any, list[dict[str, Any]]]:
    """The controller log's checkpoint (verified with the controller key) and its entries
    (verified against the checkpoint's root)."""
    with c.http() as http:
        info = http.get_json("/v1/controller")
        cid = info["controller_id"]
        note = http.get_text("/v1/controller/log/checkpoint")
        cp = open_checkpoint(note, Verifier(f"duet/{cid}", keys.public_from_b64(info["public_key"])),
                             expected_origin=f"duet/{cid}/controller")
        body = http.get_json("/v1/controller/log/entries", start=0, end=cp.size)
    leaves = [base64.b64decode(x["leaf"]) for x in body["entries"]]
    assert len(leaves) == cp.size
    assert merkle.root([merkle.leaf_hash(leaf) for leaf in leaves]) == cp.root_hash
    return cp, [entries.decode(leaf) for leaf in leaves]


def _cvm_log(c: ControllerProc, cvm: str) -> list[dict[str, Any]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _pub(k: keys.Ed25519PrivateKey) -> str:
    return keys.public_b64(k.public_key())


def _keys_at(ctl: list[dict[str, Any]], size: int) -> list[str]:
    """The owner keys in force in the controller log's prefix of `size` entries."""
    in_force: list[str] = []
    for e in ctl[:size]:
        if e["type"] == "owner_keys":
            in_force = sorted(e["keys"])
    return in_force


def test_controller_log_records_key_changes_and_intents_point_into_it(controller: ControllerProc) -> None:
    owner = controller.owner()
    cp0, ctl0 = _ctl_log(controller)
    # First start with --owner-key: the log's first key set (no intent authorised it).
    assert [e["type"] for e in ctl0] == ["owner_keys"] and ctl0[0]["keys"] == [_pub(controller.owner_key)]
    cvm = owner.create("local")["id"]
    new = keys.Ed25519PrivateKey.generate()
    owner.set_owner_keys([_pub(controller.owner_key), _pub(new)])
    cp1, ctl = _ctl_log(controller)
    assert [e["type"] for e in ctl] == ["owner_keys", "intent", "owner_keys"]
    assert ctl[1]["op"] == "owner.keys" and ctl[1]["kid"] == keys.key_id(controller.owner_key.public_key())
    assert ctl[2]["keys"] == sorted([_pub(controller.owner_key), _pub(new)])
    # The controller log grows append-only: a consistency proof from the old checkpoint.
    with controller.http() as http:
        proof = http.get_json("/v1/controller/log/proofs/consistency", old=cp0.size, new=cp1.size)
        incl = http.get_json("/v1/controller/log/proofs/inclusion", index=1, tree_size=cp1.size)
        with pytest.raises(ClientError) as info:
            http.get_json("/v1/controller/log/proofs/consistency", old=2, new=99)
        assert info.value.code == "out_of_range"
    merkle.verify_consistency(cp0.size, cp1.size, [base64.b64decode(h) for h in proof["hashes"]],
                              cp0.root_hash, cp1.root_hash)
    merkle.verify_inclusion(merkle.leaf_hash(entries.encode(ctl[1])), 1, cp1.size,
                            [base64.b64decode(h) for h in incl["hashes"]], cp1.root_hash)
    assert controller.owner().run(cvm, "true", timeout_s=30)["exit_status"] == 0
    log = _cvm_log(controller, cvm)
    # Genesis records the controller log's head when the CVM was created ...
    g = log[0]
    assert g["controller_log_size"] == 1
    assert base64.b64decode(g["controller_log_root"]) == merkle.root([merkle.leaf_hash(entries.encode(ctl[0]))])
    # ... and every intent the controller-log size in force, whose keys include its signer.
    intents = [e for e in log if e["type"] == "intent"]
    assert intents and all(isinstance(e.get("controller_log_size"), int) for e in intents)
    last = intents[-1]
    assert last["op"] == "cvm.run" and last["controller_log_size"] == cp1.size
    assert any(keys.key_id(keys.public_from_b64(k)) == last["kid"] for k in _keys_at(ctl, cp1.size))


def test_rotation_does_not_wait_for_a_long_command_and_revokes_at_once(controller: ControllerProc) -> None:
    """A command running for a long time on one CVM does not delay a rotation; once the
    rotation returns, the revoked key runs nothing (on another CVM, nor an intent that
    was already waiting for the busy CVM's lock); the running command finishes under the
    key that authorised it."""
    owner = controller.owner()
    busy = owner.create("local")["id"]
    other = owner.create("local")["id"]
    old_key = controller.owner_key
    results: dict[str, Any] = {}

    def long_command() -> None:
        results["long"] = OwnerClient(old_key, controller.url, http=controller.http()).run(
            busy, "sleep 12; echo done", timeout_s=60)

    def queued_command() -> None:
        try:
            results["queued"] = OwnerClient(old_key, controller.url, http=controller.http()).run(
                busy, "echo queued", timeout_s=60)
        except ClientError as exc:
            results["queued"] = exc

    t_long = threading.Thread(target=long_command)
    t_long.start()
    deadline = time.monotonic() + 30
    while not any(e["type"] == "command" and "sleep 12" in e["command"] for e in _cvm_log(controller, busy)):
        assert time.monotonic() < deadline, "the long command never started"
        time.sleep(0.1)
    t_queued = threading.Thread(target=queued_command)
    t_queued.start()
    time.sleep(0.5)  # let the queued intent be authenticated and wait for the lock

    new = keys.Ed25519PrivateKey.generate()
    started = time.perf_counter()
    owner.set_owner_keys([_pub(new)])
    elapsed = time.perf_counter() - started
    # Ordering, not timing: the rotation returned while the long command still ran.
    assert t_long.is_alive(), "the rotation waited for the running command"
    print(f"rotation latency while a 12 s command runs: {elapsed * 1000:.1f} ms")

    with pytest.raises(ClientError) as info:
        owner.run(other, "echo revoked", timeout_s=30)
    assert info.value.code == "unknown_key"
    t_long.join(timeout=60)
    t_queued.join(timeout=60)
    assert results["long"]["exit_status"] == 0 and base64.b64decode(results["long"]["stdout"]) == b"done\n"
    queued = results["queued"]
    assert isinstance(queued, ClientError) and queued.code == "unknown_key", queued
    for cvm in (busy, other):
        assert not any((e["type"] == "command" and "echo queued" in e["command"]) or
                       (e["type"] == "command" and "echo revoked" in e["command"]) for e in _cvm_log(controller, cvm))
    # The new key works on both at once, and each CVM log gets the change (with its
    # intent) before its first intent under the new key.
    controller.owner_key = new
    for cvm in (busy, other):
        assert controller.owner().run(cvm, "true", timeout_s=30)["exit_status"] == 0
        log = _cvm_log(controller, cvm)
        change = max(i for i, e in enumerate(log) if e["type"] == "owner_keys")
        assert log[change - 1]["type"] == "intent" and log[change - 1]["op"] == "owner.keys"
        assert log[change]["keys"] == [_pub(new)]
        assert log[-3]["type"] == "intent" and log[-3]["kid"] == keys.key_id(new.public_key())


def test_restoring_an_old_state_file_does_not_resurrect_a_revoked_key(controller: ControllerProc) -> None:
    """The host keeps a copy of state.sqlite from before a rotation and restores it alone
    (the ledger untouched): the keys in force come from the controller log."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    controller.with_owner_key = False  # as in an enclave: no --owner-key on the command line
    controller.kill(signal.SIGTERM)
    saved = controller.data.parent / "state-before-rotation"
    saved.mkdir()
    for f in controller.data.glob("state.sqlite*"):
        shutil.copy2(f, saved / f.name)
    controller.start()
    new = keys.Ed25519PrivateKey.generate()
    controller.owner().set_owner_keys([_pub(new)])
    controller.kill(signal.SIGTERM)
    for f in controller.data.glob("state.sqlite*"):
        f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, controller.data / f.name)
    controller.start()
    with pytest.raises(ClientError) as info:
        controller.owner().run(cvm, "echo resurrected", timeout_s=30)
    assert info.value.code == "unknown_key"
    assert not any(e["type"] == "command" and "resurrected" in e["command"] for e in _cvm_log(controller, cvm))
    with controller.http() as http:
        assert http.get_json("/v1/controller")["owner_keys"] == [_pub(new)]
    controller.owner_key = new
    assert controller.owner().run(cvm, "true", timeout_s=30)["exit_status"] == 0


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1])
def test_kill_9_during_rotation_leaves_one_consistent_key_set(controller: ControllerProc, delay: float) -> None:
    """Whenever the controller dies during a rotation, after restart the keys it accepts
    are exactly the controller log's newest set, and that set's key runs commands."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    controller.with_owner_key = False
    old_key = controller.owner_key
    new = keys.Ed25519PrivateKey.generate()
    jws = owner.sign("owner.keys", {"keys": [_pub(new)]})

    def rotate() -> None:
        try:
            with controller.http() as http:
                http.post_json("/v1/intents", {"jws": jws})
        except ClientError:
            pass

    t = threading.Thread(target=rotate)
    t.start()
    time.sleep(delay)
    controller.kill()
    t.join(timeout=30)
    controller.start()
    _, ctl = _ctl_log(controller)
    in_force = _keys_at(ctl, len(ctl))
    with controller.http() as http:
        assert http.get_json("/v1/controller")["owner_keys"] == in_force
    live, dead = (new, old_key) if in_force == [_pub(new)] else (old_key, new)
    assert in_force == [_pub(live)]
    controller.owner_key = live
    assert controller.owner().run(cvm, "true", timeout_s=30)["exit_status"] == 0
    controller.owner_key = dead
    with pytest.raises(ClientError) as info:
        controller.owner().run(cvm, "true", timeout_s=30)
    assert info.value.code == "unknown_key"


def test_creates_and_rotations_do_not_interleave(controller: ControllerProc) -> None:
    """Concurrent creates and rotations: no 500, and each genesis names exactly the keys
    of the controller log at the size it records."""
    owner = controller.owner()
    extra = [keys.Ed25519PrivateKey.generate() for _ in range(3)]
    errors: list[BaseException] = []
    created: list[str] = []

    def create() -> None:
        try:
            client = OwnerClient(controller.owner_key, controller.url, http=controller.http())
            created.append(client.create("local")["id"])
        except BaseException as exc:
            errors.append(exc)

    def rotate(k: keys.Ed25519PrivateKey) -> None:
        try:
            OwnerClient(controller.owner_key, controller.url, http=controller.http()).set_owner_keys(
                [_pub(controller.owner_key), _pub(k)])
        except BaseException as exc:
            errors.append(exc)

    owner.controller_id
    threads = [threading.Thread(target=create) for _ in range(3)] + [threading.Thread(target=rotate, args=(k,))
                                                                     for k in extra]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    _, ctl = _ctl_log(controller)
    assert sum(e["type"] == "owner_keys" for e in ctl) == 1 + len(extra)
    for cvm in created:
        g = _cvm_log(controller, cvm)[0]
        size = g["controller_log_size"]
        assert sorted(g["owner_keys"]) == _keys_at(ctl, size)
        assert base64.b64decode(g["controller_log_root"]) == merkle.root(
            [merkle.leaf_hash(entries.encode(e)) for e in ctl[:size]])


def test_restoring_an_old_state_file_does_not_bring_back_an_old_policy(controller: ControllerProc) -> None:
    """The host restores a state.sqlite from before a policy change that is no longer the
    log's last entry: the record is replayed from the log, so the policy in force is the
    logged one and a command it forbids does not run."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    controller.kill(signal.SIGTERM)
    saved = controller.data.parent / "state-before-policy"
    saved.mkdir()
    for f in controller.data.glob("state.sqlite*"):
        shutil.copy2(f, saved / f.name)
    controller.start()
    owner = controller.owner()
    owner.set_policy(cvm, "commands:\n  in-update: ['echo [a-z]+']\nactions: {}\n")
    assert owner.run(cvm, "echo fine", timeout_s=30)["exit_status"] == 0  # the policy is no longer last
    controller.kill(signal.SIGTERM)
    for f in controller.data.glob("state.sqlite*"):
        f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, controller.data / f.name)
    controller.start()
    with pytest.raises(ClientError) as info:
        controller.owner().run(cvm, "touch forbidden", timeout_s=30)
    assert info.value.code == "forbidden_by_policy"
    assert not any(e["type"] == "command" and "forbidden" in e["command"] for e in _cvm_log(controller, cvm))
    with controller.http() as http:
        assert http.get_json(f"/v1/cvms/{cvm}")["mode"] == "in-update"


def test_no_intent_runs_twice_with_the_clock_moved_across_restarts(  # type: ignore[no-untyped-def]
    controller_factory, tmp_path: Path,
) -> None:
    """The host moves the controller's clock forward (the in-memory guard forgets, and
    a restart seeds it only from recent-looking entries), restarts it, then moves the
    clock back so the captured intent's iat is fresh again: the durable nonce table,
    which expires by ledger growth and not by the clock alone, still refuses it."""
    from test_clock import _preload, _stop

    c: ControllerProc = controller_factory()
    stamp = tmp_path / "faketime"
    stamp.write_text("+0s\n")
    c.env = {"LD_PRELOAD": _preload(c.data.parent), "FAKETIME_TIMESTAMP_FILE": str(stamp),
             "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}
    c.start()
    owner = c.owner()
    cvm = owner.create("local")["id"]
    captured = owner.sign("cvm.run", {"command": "echo captured"}, cvm)

    def post(jws: str) -> Any:
        try:
            with c.http() as http:
                return http.post_json("/v1/intents", {"jws": jws})
        except ClientError as exc:
            return exc

    def runs() -> int:
        return sum(e["type"] == "command" and e["command"] == "echo captured" for e in _cvm_log(c, cvm))

    assert post(captured)["exit_status"] == 0
    forward = 3 * 86400
    stamp.write_text(f"+{forward}s\n")
    # An intent dated by the moved clock: the in-memory guard prunes by that time.
    fresh = sign_intent_at(owner, cvm, "true", time.time() + forward)
    assert post(fresh)["exit_status"] == 0
    _stop(c)
    c.start()  # still three days ahead: start-up seeding skips the "old" intent
    assert isinstance(post(captured), ClientError)  # its iat is stale by this clock
    stamp.write_text("+0s\n")  # and back, without a restart
    got = post(captured)
    assert isinstance(got, ClientError) and got.code == "replayed_intent", got
    _stop(c)
    c.start()  # and after one more restart at the true time
    got = post(captured)
    assert isinstance(got, ClientError) and got.code == "replayed_intent", got
    assert runs() == 1


def sign_intent_at(owner: OwnerClient, cvm: str, command: str, iat: float) -> str:
    from duet.ledger.intent import sign_intent

    return sign_intent(owner.key, op="cvm.run", aud=owner.controller_id, args={"command": command}, cvm=cvm,
                       iat=int(iat))


def test_a_rolled_back_controller_log_shown_a_newer_checkpoint_accepts_no_intent(controller: ControllerProc) -> None:
    """The host restores the whole data dir from before a rotation (the ledger too: the
    revoked key is back in the controller log, its nonces forgotten). Anyone who saw the
    newer controller-log checkpoint shows it; from then on the controller refuses every
    intent and its controller log, instead of letting the revoked key act."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    controller.with_owner_key = False
    controller.kill(signal.SIGTERM)
    saved = controller.data.parent / "data-before-rotation"
    shutil.copytree(controller.data, saved)
    controller.start()
    new = keys.Ed25519PrivateKey.generate()
    controller.owner().set_owner_keys([_pub(new)])
    with controller.http() as http:
        newer = http.get_text("/v1/controller/log/checkpoint")
    controller.kill(signal.SIGTERM)
    shutil.rmtree(controller.data)
    shutil.copytree(saved, controller.data)
    controller.start()
    shown = {"Duet-Checkpoint": base64.b64encode(newer.encode()).decode()}
    r = httpx.get(controller.url + "/v1/controller", headers=shown, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "rollback_detected"
    with pytest.raises(ClientError) as info:
        controller.owner().run(cvm, "echo revoked-key-back", timeout_s=30)  # the old, revoked key
    assert info.value.code == "rollback_detected"
    assert httpx.get(controller.url + "/v1/controller/log/checkpoint", timeout=10).status_code == 409
    assert not any(e["type"] == "command" and "revoked-key-back" in e["command"] for e in _cvm_log(controller, cvm))
