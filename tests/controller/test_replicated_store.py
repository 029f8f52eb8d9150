"""`duet controller serve --store etcd://`: the logs, nonces and encrypted state in a real
etcd, one fenced primary, and a store that is not believed (rollbacks and forks refused).

Every test here runs against a real etcd (tests/etcd_server.py, or DUET_TEST_ETCD)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from duet.client.http import ClientError
from duet.client.verify import verify
from duet.controller.etcd import EtcdClient, KeyValue
from duet.ledger import entries
from helpers import ControllerProc

TTL = 2


@pytest.fixture
def etcd(etcd_address: str) -> EtcdClient:
    host, port = etcd_address.rsplit(":", 1)
    client = EtcdClient(host, int(port))
    yield client  # type: ignore[misc]
    client.close()


def _start(factory, etcd_address: str, *extra: str) -> ControllerProc:  # type: ignore[no-untyped-def]
    c: ControllerProc = factory()
    return c.start("--store", f"etcd://{etcd_address}", "--lease-ttl", str(TTL), *extra)


def _cid(c: ControllerProc) -> str:
    with c.http() as http:
        return str(http.get_json("/v1/controller")["controller_id"])


def _log_prefix(cid: str, log_id: str) -> bytes:
    return f"duet/{cid}/log/".encode() + log_id.encode().hex().encode() + b"/"


def _etcd_leaves(etcd: EtcdClient, cid: str, log_id: str) -> list[dict[str, object]]:
    """The log as etcd holds it, decoded from its chunks (no help from the controller)."""
    out: list[dict[str, object]] = []
    for kv in etcd.get_prefix(_log_prefix(cid, log_id) + b"chunk/"):
        data, pos = kv.value, 0
        while pos < len(data):
            n = int.from_bytes(data[pos:pos + 4], "big")
            out.append(entries.decode(data[pos + 4:pos + 4 + n]))
            pos += 4 + n
    return out


def _snapshot(etcd: EtcdClient, cid: str) -> list[KeyValue]:
    return [kv for kv in etcd.get_prefix(f"duet/{cid}/".encode()) if not kv.key.endswith(b"/primary")]


def _restore(etcd: EtcdClient, cid: str, old: list[KeyValue]) -> None:
    """Roll etcd back underneath the controller: every key it wrote as it was earlier
    (the lease key stays: the host rolls back data, the primary still holds its lease)."""
    for prefix in (b"log/", b"nonce/", b"state/"):
        etcd.delete_prefix(f"duet/{cid}/".encode() + prefix)
    for kv in old:
        etcd.put(kv.key, kv.value)


def test_owner_flow_with_the_etcd_store(controller_factory, etcd_address: str, etcd: EtcdClient,  # type: ignore[no-untyped-def]
                                        tmp_path: Path) -> None:
    c = _start(controller_factory, etcd_address)
    owner = c.owner()
    cvm = owner.create("local", name="web")
    assert cvm["status"] == "ready"
    res = owner.run(cvm["id"], "echo replicated")
    assert base64.b64decode(res["stdout"]) == b"replicated\n"
    with c.http() as http:
        report, _ = verify(http, cvm["id"], trust_simulated=True, state_dir=tmp_path / "user")
    assert report.ok, [(ch.name, ch.detail) for ch in report.checks if not ch.ok]
    # The log is in etcd, entry for entry, and its head there is the controller's checkpoint.
    cid = _cid(c)
    stored = _etcd_leaves(etcd, cid, cvm["id"])
    assert len(stored) == res["tree_size"]
    assert stored[res["command_index"]]["command"] == "echo replicated"
    head = etcd.get(_log_prefix(cid, cvm["id"]) + b"head")
    assert head is not None and head.value.decode().startswith(f"duet/{cid}/{cvm['id']}\n{res['tree_size']}\n")
    # The state is there too, but only as ciphertext: no SSH client key in the clear.
    state = etcd.get_prefix(f"duet/{cid}/state/".encode())
    names = {kv.key.rsplit(b"/state/", 1)[1] for kv in state}
    assert {f"cvm/{cvm['id']}".encode(), b"meta/controller_key", b"owner_keys"} <= names
    assert not any(b"PRIVATE KEY" in kv.value or b"name" in kv.value for kv in state)


def test_write_ahead_command_entry_is_in_etcd_before_the_command_runs(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str) -> None:
    """The command itself reads etcd from inside the CVM: its own `command` entry is
    already there (durable on the replicated store) when it runs."""
    c = _start(controller_factory, etcd_address)
    owner = c.owner()
    cvm = owner.create("local")["id"]
    cid = _cid(c)
    prefix = base64.b64encode(_log_prefix(cid, cvm) + b"chunk/").decode()
    end = _log_prefix(cid, cvm) + b"chunk0"  # '0' sorts right after '/'
    probe = (
        "import base64,json,urllib.request as u;"
        f"b=json.dumps({{'key':'{prefix}','range_end':'{base64.b64encode(end).decode()}'}}).encode();"
        f"r=json.load(u.urlopen(u.Request('http://{etcd_address}/v3/kv/range',data=b)));"
        "print(r['kvs'][-1]['value'])"
    )
    res = owner.run(cvm, f"python3 -c \"{probe}\" # marker-7f3a")
    assert res["exit_status"] == 0, base64.b64decode(res["stderr"])
    chunk = base64.b64decode(base64.b64decode(res["stdout"]).strip())
    leaves, pos = [], 0
    while pos < len(chunk):
        n = int.from_bytes(chunk[pos:pos + 4], "big")
        leaves.append(entries.decode(chunk[pos + 4:pos + 4 + n]))
        pos += 4 + n
    # The newest chunk in etcd while the command ran: its intent and the command itself.
    assert [e["type"] for e in leaves] == ["intent", "command"]
    assert "marker-7f3a" in str(leaves[-1]["command"])


def test_a_second_instance_taking_the_lease_fences_the_first(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str, etcd: EtcdClient) -> None:
    a = _start(controller_factory, etcd_address)
    # B's sealed state is a copy of A's from before the CVM existed (K's handover is not
    # this test's business): the CVM's record and SSH key reach B through etcd.
    b: ControllerProc = controller_factory(owner=a.owner_key)
    shutil.copytree(a.data, b.data, ignore=shutil.ignore_patterns(".lock", "ledger-replica.sqlite*", "cvms"))
    owner = a.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo one")
    cid = _cid(a)
    # A freezes (a pause, a partition): its lease runs out and B takes over, rebuilding
    # its replica of the logs from etcd.
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        shutil.copytree(a.data / "cvms", b.data / "cvms")  # the local CVMs' simulated hosts
        b.start("--store", f"etcd://{etcd_address}", "--lease-ttl", str(TTL))
        assert "state records from the replicated store" in b.log()
        out = b.owner().run(cvm, "echo two")
        assert base64.b64decode(out["stdout"]) == b"two\n"
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    before = _etcd_leaves(etcd, cid, cvm)
    with pytest.raises(ClientError) as info:
        a.owner().run(cvm, "echo three-from-the-deposed")
    assert info.value.code == "not_primary" and info.value.status == 503
    assert "no longer primary" in info.value.message
    # Nothing of A's reached the store, and A serves nothing any more, saying why.
    assert _etcd_leaves(etcd, cid, cvm) == before
    with a.http() as http, pytest.raises(ClientError) as read:
        http.get_json(f"/v1/cvms/{cvm}")
    assert read.value.code == "not_primary"
    assert "no longer primary" in a.log()
    # B carries on.
    assert base64.b64decode(b.owner().run(cvm, "echo four")["stdout"]) == b"four\n"


def test_etcd_rolled_back_underneath_a_running_controller_is_refused(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str, etcd: EtcdClient) -> None:
    c = _start(controller_factory, etcd_address)
    owner = c.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo one")
    cid = _cid(c)
    old = _snapshot(etcd, cid)
    owner.run(cvm, "echo two")
    _restore(etcd, cid, old)
    rolled = _snapshot(etcd, cid)
    with pytest.raises(ClientError) as info:
        owner.run(cvm, "touch ran-on-a-rolled-back-store")
    assert info.value.code == "rollback_detected", info.value.message
    assert "older prefix" in info.value.message
    assert _snapshot(etcd, cid) == rolled  # nothing appended on top
    assert not list(c.data.glob("cvms/*/**/ran-on-a-rolled-back-store"))
    # And it stays refused: nothing is served from it either.
    with c.http() as http, pytest.raises(ClientError) as again:
        http.get_json(f"/v1/cvms/{cvm}")
    assert again.value.code == "rollback_detected"


def test_etcd_rolled_back_while_the_controller_was_down_is_refused_at_start(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str, etcd: EtcdClient) -> None:
    c = _start(controller_factory, etcd_address)
    owner = c.owner()
    cvm = owner.create("local")["id"]
    cid = _cid(c)
    old = _snapshot(etcd, cid)
    owner.run(cvm, "echo two")
    c.kill()
    _restore(etcd, cid, old)
    rolled = _snapshot(etcd, cid)
    with pytest.raises(RuntimeError, match="exited"):
        c.start("--store", f"etcd://{etcd_address}", "--lease-ttl", str(TTL))
    assert "older prefix" in c.log()
    assert _snapshot(etcd, cid) == rolled


def test_a_forked_log_in_etcd_is_refused_by_a_fresh_replica(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str, etcd: EtcdClient) -> None:
    """Another history under the signed head: a new instance (empty replica) rebuilds the
    log from etcd and finds that the leaves do not lead to the head the controller signed."""
    c = _start(controller_factory, etcd_address)
    owner = c.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo honest")
    cid = _cid(c)
    c.kill()
    chunks = etcd.get_prefix(_log_prefix(cid, cvm) + b"chunk/")
    last = chunks[-2]  # the intent+command chunk of `echo honest`
    etcd.put(last.key, last.value.replace(b"echo honest", b"echo forged"))
    for f in c.data.glob("ledger-replica.sqlite*"):
        f.unlink()
    with pytest.raises(RuntimeError, match="exited"):
        c.start("--store", f"etcd://{etcd_address}", "--lease-ttl", str(TTL))
    assert "do not lead to the head" in c.log()


def test_an_etcd_disk_snapshot_restored_underneath_is_refused(  # type: ignore[no-untyped-def]
        controller_factory, tmp_path: Path) -> None:
    """The host stops etcd, restores its data dir from an earlier copy (a snapshot of its
    disk, leases and revisions included) and starts it again under the running controller."""
    from etcd_server import EtcdServer

    server = EtcdServer(tmp_path / "etcd").start()
    etcd = EtcdClient("127.0.0.1", server.port)
    try:
        c: ControllerProc = controller_factory()
        # A long lease: etcd's restarts must not depose the primary; only the data goes back.
        c.start("--store", server.url, "--lease-ttl", "60")
        owner = c.owner()
        cvm = owner.create("local")["id"]
        owner.run(cvm, "echo one")
        cid = _cid(c)
        server.stop()
        shutil.copytree(tmp_path / "etcd" / "data", tmp_path / "snapshot")
        server.start()
        owner.run(cvm, "echo two")
        server.stop()
        shutil.rmtree(tmp_path / "etcd" / "data")
        shutil.copytree(tmp_path / "snapshot", tmp_path / "etcd" / "data")
        server.start()
        rolled = _snapshot(etcd, cid)
        with pytest.raises(ClientError) as info:
            owner.run(cvm, "touch ran-on-a-restored-etcd")
        assert info.value.code == "rollback_detected", info.value.message
        assert "older prefix" in info.value.message
        assert _snapshot(etcd, cid) == rolled
        assert not list(c.data.glob("cvms/*/**/ran-on-a-restored-etcd"))
    finally:
        etcd.close()
        server.stop()


def test_a_stopped_primary_gives_up_its_lease(controller_factory, etcd_address: str,  # type: ignore[no-untyped-def]
                                              etcd: EtcdClient) -> None:
    """A clean stop revokes the lease at once, so a successor need not wait out its TTL."""
    c: ControllerProc = controller_factory()
    c.start("--store", f"etcd://{etcd_address}", "--lease-ttl", "60")
    cid = _cid(c)
    assert etcd.get(f"duet/{cid}/primary".encode()) is not None
    c.kill(signal.SIGTERM)
    assert etcd.get(f"duet/{cid}/primary".encode()) is None


def test_witness_cosignatures_are_replicated_with_the_state(  # type: ignore[no-untyped-def]
        controller_factory, etcd_address: str, etcd: EtcdClient, tmp_path: Path) -> None:
    """The cosignatures the primary collects are public state: written through to etcd
    (encrypted like every state record), so the instance that serves next has them."""
    from duet.ledger.cosignature import verified_cosignatures
    from witness_proc import WitnessProc

    c = _start(controller_factory, etcd_address)
    w = WitnessProc.following(tmp_path / "w", c)
    try:
        c.owner().set_witnesses([(w.vkey, w.url)], 1)
        cid = _cid(c)
        key = f"duet/{cid}/state/meta/witness_cosignatures".encode()
        deadline = time.monotonic() + 60
        while etcd.get(key) is None:
            assert time.monotonic() < deadline, "the cosignatures never reached etcd"
            time.sleep(0.2)
        with c.http() as http:
            assert verified_cosignatures(http.get_text("/v1/controller/log/checkpoint"), [w.verifier])
        # Only as ciphertext, like every state record (a replica reading it verifies each
        # cosignature again before serving it).
        stored = etcd.get(key)
        assert stored is not None and w.vkey.encode() not in stored.value
    finally:
        w.kill()
        c.kill()
