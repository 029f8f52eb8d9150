"""The fencing token in-process, against a real etcd: a deposed primary's append fails in
etcd's transaction itself, before it has noticed anything (its keep-alive has not run)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from duet.controller.etcd import EtcdClient
from duet.controller.replicated import HeadNotary, NotPrimary, Primary, ReplicatedLedger, StoreRolledBack
from duet.ledger import keys
from duet.ledger.note import Signer, Verifier
from duet.ledger.store import TreeHead


def _open(etcd: EtcdClient, key: keys.Ed25519PrivateKey, prefix: bytes, path: Path,
          ttl: int = 60, wait: float = 0) -> tuple[Primary, ReplicatedLedger]:
    cid = keys.key_id(key.public_key())
    primary = Primary(etcd, prefix, ttl=ttl)
    primary.acquire(wait=wait)
    notary = HeadNotary(Signer(f"duet/{cid}", key), Verifier(f"duet/{cid}", key.public_key()), cid)
    return primary, ReplicatedLedger(path, etcd=etcd, prefix=prefix, primary=primary, notary=notary)


@pytest.fixture
def etcd(etcd_address: str) -> EtcdClient:
    host, port = etcd_address.rsplit(":", 1)
    client = EtcdClient(host, int(port))
    yield client  # type: ignore[misc]
    client.close()


def test_the_deposed_primarys_append_fails_in_the_transaction(etcd: EtcdClient, tmp_path: Path) -> None:
    key = keys.Ed25519PrivateKey.generate()
    prefix = f"duet/test-{secrets.token_hex(6)}/".encode()
    a_primary, a = _open(etcd, key, prefix, tmp_path / "a.sqlite")
    a.create_log("log")
    a.append("log", [b"one"])
    # A second instance cannot become primary while A's lease lives.
    with pytest.raises(NotPrimary, match="holds the primary lease"):
        _open(etcd, key, prefix, tmp_path / "b.sqlite")
    # A's lease ends (it froze past its TTL); B takes over. A's keep-alive (every 20 s)
    # has not run: only the transaction's comparison stands between A and the log.
    etcd.lease_revoke(a_primary.lease)
    _, b = _open(etcd, key, prefix, tmp_path / "b.sqlite")
    assert b.leaves("log", 0, 1) == [b"one"]  # rebuilt from etcd, verified
    with pytest.raises(NotPrimary, match="took the primary lease"):
        a.append("log", [b"from the deposed primary"])
    with pytest.raises(NotPrimary):
        a.tree_head("log")  # and it serves nothing any more
    b.append("log", [b"two"])
    assert b.tree_head("log").size == 2
    b.close()
    a.close()


def test_a_head_rewritten_under_the_primary_stops_its_appends(etcd: EtcdClient, tmp_path: Path) -> None:
    key = keys.Ed25519PrivateKey.generate()
    prefix = f"duet/test-{secrets.token_hex(6)}/".encode()
    _, store = _open(etcd, key, prefix, tmp_path / "a.sqlite")
    store.create_log("log")
    store.append("log", [b"one"])
    head_key = prefix + b"log/" + b"log".hex().encode() + b"/head"
    old = etcd.get(head_key)
    assert old is not None
    store.append("log", [b"two"])
    etcd.put(head_key, old.value)  # the host puts back the older signed head
    with pytest.raises(StoreRolledBack, match="older prefix"):
        store.append("log", [b"three"])
    assert etcd.get(head_key).value == old.value  # type: ignore[union-attr]
    with pytest.raises(StoreRolledBack):
        store.append("log", [b"four"])
    store.close()


def test_a_lost_answer_is_neither_a_fork_nor_a_lost_append(etcd: EtcdClient, tmp_path: Path) -> None:
    """etcd applies an append but its answer never arrives (a dropped connection): the
    store finds the append there and carries on. When the request itself was lost, the
    append fails with nothing written, and the next one goes through."""
    from duet.controller.etcd import EtcdUnavailable

    key = keys.Ed25519PrivateKey.generate()
    prefix = f"duet/test-{secrets.token_hex(6)}/".encode()
    _, store = _open(etcd, key, prefix, tmp_path / "a.sqlite")
    store.create_log("log")
    real = etcd.txn

    def applied_then_lost(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        raise EtcdUnavailable("answer lost")

    def lost_before(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise EtcdUnavailable("request lost")

    etcd.txn = applied_then_lost  # type: ignore[method-assign]
    assert store.append("log", [b"one"]).size == 1
    etcd.txn = lost_before  # type: ignore[method-assign]
    with pytest.raises(EtcdUnavailable):
        store.append("log", [b"never"])
    etcd.txn = real  # type: ignore[method-assign]
    assert store.append("log", [b"two"]).size == 2
    assert store.leaves("log", 0, 2) == [b"one", b"two"]
    store.close()


def test_a_store_behind_the_witnesses_cosigned_size_is_refused(etcd: EtcdClient, tmp_path: Path) -> None:
    """The hook for the witnesses' check: with no local state at all (a new machine), a
    store that lost entries the witnesses cosigned is refused, and nothing is written."""
    from duet.ledger.merkle import leaf_hash, root

    key = keys.Ed25519PrivateKey.generate()
    prefix = f"duet/test-{secrets.token_hex(6)}/".encode()
    _, a = _open(etcd, key, prefix, tmp_path / "a.sqlite")
    a.create_log("log")
    a.append("log", [b"one"])
    a.close()  # gives up the lease
    cosigned = TreeHead(2, root([leaf_hash(b"one"), leaf_hash(b"two")]))  # the witnesses saw two entries
    cid = keys.key_id(key.public_key())
    primary = Primary(etcd, prefix, ttl=60)
    primary.acquire(wait=0)
    notary = HeadNotary(Signer(f"duet/{cid}", key), Verifier(f"duet/{cid}", key.public_key()), cid)
    before = etcd.get_prefix(prefix + b"log/")
    with pytest.raises(StoreRolledBack, match="witnesses cosigned"):
        ReplicatedLedger(tmp_path / "fresh.sqlite", etcd=etcd, prefix=prefix, primary=primary, notary=notary,
                         witness_floor=lambda log_id: cosigned if log_id == "log" else None)
    assert etcd.get_prefix(prefix + b"log/") == before
    # The same store with a floor it meets opens.
    met = TreeHead(1, root([leaf_hash(b"one")]))
    ok = ReplicatedLedger(tmp_path / "fresh2.sqlite", etcd=etcd, prefix=prefix, primary=primary, notary=notary,
                          witness_floor=lambda log_id: met if log_id == "log" else None)
    assert ok.tree_head("log").size == 1
    ok.close()
