"""The SQLite store: heads and proofs against the pure Merkle code, durability settings,
group commit, threads, and detection of corrupted data."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from duet.ledger import merkle
from duet.ledger.errors import (
    LedgerError,
    LogCorrupt,
    LogExists,
    OutOfRange,
    StorageError,
    UnknownLog,
)
from duet.ledger.store import NODE_STRIDE, LedgerStore, TreeHead


def leaf(i: int, tag: str = "") -> bytes:
    return f'{{"i":{i},"tag":"{tag}","pad":"{"x" * (i % 17)}"}}'.encode()


def fill(store: LedgerStore, log_id: str, n: int, rng: random.Random, tag: str = "") -> None:
    """Append n leaves in batches of random size (1 to 64)."""
    start = store.tree_head(log_id).size
    i = start
    while i < start + n:
        k = min(rng.randint(1, 64), start + n - i)
        store.append(log_id, [leaf(j, tag) for j in range(i, i + k)])
        i += k


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def store(db: Path) -> Iterator[LedgerStore]:
    s = LedgerStore(db)
    yield s
    s.close()


# --- basics ------------------------------------------------------------------------------


def test_logs_are_created_and_listed(store: LedgerStore) -> None:
    assert store.log_ids() == []
    store.create_log("cvm-b")
    store.create_log("cvm-a")
    assert store.log_ids() == ["cvm-a", "cvm-b"]
    assert store.has_log("cvm-a") and not store.has_log("cvm-c")
    assert store.tree_head("cvm-a") == TreeHead(0, merkle.EMPTY_ROOT)
    with pytest.raises(LogExists):
        store.create_log("cvm-a")
    with pytest.raises(UnknownLog):
        store.append("cvm-c", [b"x"])
    with pytest.raises(UnknownLog):
        store.tree_head("cvm-c")
    for bad in ("", "x" * 300, "a\nb"):
        with pytest.raises(LedgerError):
            store.create_log(bad)


def test_heads_and_proofs_match_the_pure_functions(store: LedgerStore) -> None:
    rng = random.Random(1)
    store.create_log("log")
    fill(store, "log", 150, rng)
    hashes = [merkle.leaf_hash(leaf(i)) for i in range(150)]
    head = store.tree_head("log")
    assert head == TreeHead(150, merkle.root(hashes))
    for size in range(0, 151):
        assert store.tree_head("log", size).root_hash == merkle.root(hashes[:size])
    for size in range(1, 151, 7):
        for index in range(size):
            proof = store.inclusion_proof("log", index, size)
            assert proof == merkle.inclusion_proof(hashes, index, size)
        for old in range(0, size + 1):
            proof = store.consistency_proof("log", old, size)
            assert proof == merkle.consistency_proof(hashes, old, size)
    assert store.leaves("log", 0, 150) == [leaf(i) for i in range(150)]
    assert store.leaves("log", 10, 10) == []
    assert store.verify_log("log") == head


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LedgerStore, list[bytes]]]:
    s = LedgerStore(tmp_path_factory.mktemp("big") / "big.db")
    s.create_log("big")
    fill(s, "big", 2000, random.Random(2))
    yield s, [merkle.leaf_hash(leaf(i)) for i in range(2000)]
    s.close()


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_store_proofs_verify_for_random_sizes(big: tuple[LedgerStore, list[bytes]], data: st.DataObject) -> None:
    s, hashes = big
    new = data.draw(st.integers(1, 2000))
    old = data.draw(st.integers(0, new))
    index = data.draw(st.integers(0, new - 1))
    new_root = s.tree_head("big", new).root_hash
    assert new_root == merkle.root(hashes[:new])
    incl = s.inclusion_proof("big", index, new)
    merkle.verify_inclusion(hashes[index], index, new, incl, new_root)
    cons = s.consistency_proof("big", old, new)
    merkle.verify_consistency(old, new, cons, s.tree_head("big", old).root_hash, new_root)


@settings(max_examples=3, deadline=None)
@given(st.integers(1, 2000))
@example(2000)
def test_every_proof_of_a_random_tree_verifies(big: tuple[LedgerStore, list[bytes]], n: int) -> None:
    """For one tree size n: all n inclusion proofs and all n consistency proofs."""
    s, hashes = big
    prefix = merkle.CompactRange()  # roots of every prefix in one pass
    roots = [merkle.EMPTY_ROOT]
    for h in hashes[:n]:
        prefix.append(h)
        roots.append(prefix.root())
    assert roots[n] == merkle.root(hashes[:n]) == s.tree_head("big", n).root_hash
    for index in range(n):
        proof = s.inclusion_proof("big", index, n)
        merkle.verify_inclusion(hashes[index], index, n, proof, roots[n])
    for old in range(1, n + 1):
        proof = s.consistency_proof("big", old, n)
        merkle.verify_consistency(old, n, proof, roots[old], roots[n])


def test_out_of_range_requests(store: LedgerStore) -> None:
    store.create_log("log")
    store.append("log", [leaf(i) for i in range(5)])
    bad_calls = [
        lambda: store.tree_head("log", 6),
        lambda: store.tree_head("log", -1),
        lambda: store.inclusion_proof("log", 5, 5),
        lambda: store.inclusion_proof("log", 0, 6),
        lambda: store.inclusion_proof("log", -1, 5),
        lambda: store.inclusion_proof("log", 0, 0),
        lambda: store.consistency_proof("log", 3, 2),
        lambda: store.consistency_proof("log", 2, 6),
        lambda: store.leaves("log", 3, 2),
        lambda: store.leaves("log", 0, 6),
        lambda: store.leaves("log", -1, 2),
        lambda: store.inclusion_proof("log", True, 5),  # type: ignore[arg-type]
        lambda: store.tree_head("log", "3"),  # type: ignore[arg-type]
    ]
    for call in bad_calls:
        with pytest.raises(OutOfRange):
            call()
    assert store.consistency_proof("log", 0, 5) == []
    assert store.consistency_proof("log", 5, 5) == []


def test_bad_leaves_change_nothing(store: LedgerStore) -> None:
    store.create_log("log")
    head = store.append("log", [b"one"])
    for bad in (b"single bytes value", "a str", [b"ok", "not bytes"], [b"ok", None]):
        with pytest.raises(LedgerError):
            store.append("log", bad)  # type: ignore[arg-type]
    assert store.tree_head("log") == head
    assert store.append("log", []) == head
    assert store.append("log", [bytearray(b"two"), memoryview(b"three")]).size == 3


# --- durability ----------------------------------------------------------------------------


def test_durability_settings(store: LedgerStore, db: Path) -> None:
    store.create_log("log")
    store.append("log", [b"x"])
    conn = store._conn
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # No shared-memory WAL index: Gramine's encrypted files could not hold one.
    assert not Path(str(db) + "-shm").exists()


def test_rollback_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "rollback.db"
    with LedgerStore(path, journal_mode="delete") as s:
        s.create_log("log")
        s.append("log", [b"a", b"b"])
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with LedgerStore(path, journal_mode="delete") as s:
        assert s.tree_head("log").size == 2
        assert s.verify_log("log").size == 2


def test_second_process_cannot_open(db: Path, store: LedgerStore) -> None:
    store.create_log("log")
    with pytest.raises(StorageError, match="another process"):
        LedgerStore(db, busy_timeout=0.05)
    with pytest.raises(StorageError, match="cannot open"):
        LedgerStore(db.parent / "missing-dir" / "x.db")


def test_reopen_keeps_everything(db: Path) -> None:
    rng = random.Random(3)
    with LedgerStore(db) as s:
        s.create_log("a")
        s.create_log("b")
        fill(s, "a", 300, rng)
        fill(s, "b", 20, rng, tag="b")
        heads = {name: s.tree_head(name) for name in ("a", "b")}
        proof = s.inclusion_proof("a", 123, 250)
    with LedgerStore(db) as s:
        assert {name: s.tree_head(name) for name in ("a", "b")} == heads
        assert s.inclusion_proof("a", 123, 250) == proof
        s.append("a", [leaf(300)])
        hashes = [merkle.leaf_hash(leaf(i)) for i in range(301)]
        assert s.tree_head("a").root_hash == merkle.root(hashes)
        assert s.verify_log("a").size == 301


def test_group_commit_is_all_or_nothing(store: LedgerStore) -> None:
    store.create_log("a")
    store.create_log("b")
    heads = store.append_batch({"a": [b"a0", b"a1"], "b": [b"b0"]})
    assert heads == {"a": store.tree_head("a"), "b": store.tree_head("b")}
    assert (heads["a"].size, heads["b"].size) == (2, 1)
    # Make the second log's insert fail inside the transaction: a stray row where its
    # next leaf goes. The first log's leaves must not survive the rollback.
    store._conn.execute(
        "INSERT INTO leaves (log, idx, hash, leaf) SELECT id, 1, zeroblob(32), x'' FROM logs WHERE name = 'b'"
    )
    with pytest.raises(StorageError):
        store.append_batch({"a": [b"a2", b"a3"], "b": [b"b1"]})
    assert store.tree_head("a") == heads["a"]
    assert store.leaves("a", 0, 2) == [b"a0", b"a1"]
    count = store._conn.execute(
        "SELECT count(*) FROM leaves JOIN logs ON logs.id = leaves.log WHERE name = 'a'"
    ).fetchone()[0]
    assert count == 2
    assert store.append("a", [b"a2"]).size == 3


def test_threads_share_one_store(store: LedgerStore) -> None:
    for name in ("shared", "t0", "t1", "t2", "t3"):
        store.create_log(name)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                store.append("shared", [f"{t}-{i}".encode()])
                store.append(f"t{t}", [leaf(i), leaf(i + 1000)])
                store.inclusion_proof(f"t{t}", 0, store.tree_head(f"t{t}").size)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.verify_log("shared").size == 160
    got = sorted(store.leaves("shared", 0, 160))
    assert got == sorted(f"{t}-{i}".encode() for t in range(4) for i in range(40))
    for t in range(4):
        assert store.verify_log(f"t{t}").size == 80


def test_closed_store_refuses_calls(db: Path) -> None:
    s = LedgerStore(db)
    s.create_log("log")
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.tree_head("log")


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(StorageError):
        LedgerStore(path)


# --- corruption ------------------------------------------------------------------------


def build(db: Path, n: int = 200) -> TreeHead:
    with LedgerStore(db) as s:
        s.create_log("victim")
        s.create_log("bystander")
        fill(s, "victim", n, random.Random(4))
        fill(s, "bystander", 10, random.Random(5), tag="b")
        return s.tree_head("victim")


def tamper(db: Path, sql: str, *params: object) -> None:
    """Change the closed database behind the store's back."""
    conn = sqlite3.connect(db)
    with conn:
        cur = conn.execute(sql, params)
        assert cur.rowcount == 1
    conn.close()


def flip_blob(db: Path, table: str, column: str, where: str, pos: int = 5) -> None:
    conn = sqlite3.connect(db)
    row = conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
    conn.close()
    data = bytearray(row[0])
    data[pos % len(data)] ^= 0x40
    tamper(db, f"UPDATE {table} SET {column} = ? WHERE {where}", bytes(data))


VICTIM = "log = (SELECT id FROM logs WHERE name = 'victim')"


def assert_refused_from_now_on(s: LedgerStore) -> None:
    """A log found corrupt stays refused; other logs are still served."""
    for call in (
        lambda: s.tree_head("victim"),
        lambda: s.leaves("victim", 0, 1),
        lambda: s.inclusion_proof("victim", 0, 1),
        lambda: s.append("victim", [b"more"]),
    ):
        with pytest.raises(LogCorrupt) as exc:
            call()
        assert exc.value.log_id == "victim" and exc.value.code == "log_corrupt"
    assert "victim" in s.corrupt_logs()
    assert s.verify_log("bystander").size == 10


def test_flipped_leaf_is_detected_on_read_and_proof(db: Path) -> None:
    build(db)
    flip_blob(db, "leaves", "leaf", f"{VICTIM} AND idx = 57")
    with LedgerStore(db) as s:
        assert s.leaves("victim", 0, 57) == [leaf(i) for i in range(57)]
        with pytest.raises(LogCorrupt, match="leaf 57") as exc:
            s.inclusion_proof("victim", 57, 200)
        assert exc.value.index == 57
        assert_refused_from_now_on(s)
    with LedgerStore(db) as s:
        with pytest.raises(LogCorrupt, match="leaf 57"):
            s.leaves("victim", 50, 60)
    with LedgerStore(db) as s:
        with pytest.raises(LogCorrupt, match="leaf 57"):
            s.verify_log("victim")


def test_flipped_leaf_hash_is_detected(db: Path) -> None:
    build(db)
    flip_blob(db, "leaves", "hash", f"{VICTIM} AND idx = 90")
    with LedgerStore(db) as s:
        # Leaf 91's proof starts with leaf 90's hash: it cannot be proven any more.
        with pytest.raises(LogCorrupt, match="proof for leaf 91"):
            s.inclusion_proof("victim", 91, 200)
        assert_refused_from_now_on(s)
    with LedgerStore(db) as s:
        with pytest.raises(LogCorrupt, match="leaf 90 does not match"):
            s.leaves("victim", 0, 200)


@pytest.mark.parametrize("level", [NODE_STRIDE, 2 * NODE_STRIDE])
def test_flipped_subtree_hash_is_detected(db: Path, level: int) -> None:
    build(db)
    idx = 1  # the subtree [2**level, 2 * 2**level), sibling of the one holding leaf 0
    flip_blob(db, "nodes", "hash", f"{VICTIM} AND level = {level} AND idx = {idx}")
    with LedgerStore(db) as s:
        assert s.inclusion_proof("victim", 199, 200)  # does not touch that subtree
        with pytest.raises(LogCorrupt):
            s.inclusion_proof("victim", 0, 200)  # its proof contains it
        assert_refused_from_now_on(s)
    with LedgerStore(db) as s:
        with pytest.raises(LogCorrupt, match=f"level {level} index {idx}"):
            s.verify_log("victim")
    with LedgerStore(db) as s:
        size = 2 << level  # the head at this size is a fold that uses the damaged node
        with pytest.raises(LogCorrupt):
            s.tree_head("victim", size)


def test_missing_subtree_hash_is_detected(db: Path) -> None:
    build(db)
    tamper(db, f"DELETE FROM nodes WHERE {VICTIM} AND level = {NODE_STRIDE} AND idx = 2")
    with LedgerStore(db) as s:
        # The head at size 12 folds [0, 8) and [8, 12); the latter was deleted.
        with pytest.raises(LogCorrupt, match="missing"):
            s.consistency_proof("victim", 12, 200)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE logs SET root = zeroblob(32) WHERE name = 'victim'",
        "UPDATE logs SET size = 199 WHERE name = 'victim'",
        "UPDATE logs SET size = 201 WHERE name = 'victim'",
        f"DELETE FROM leaves WHERE {VICTIM} AND idx = 199",
        f"UPDATE leaves SET leaf = x'00' WHERE {VICTIM} AND idx = 199",
        f"UPDATE nodes SET hash = zeroblob(32) WHERE {VICTIM} AND level = 6 AND idx = 2",
    ],
    ids=["root", "size-smaller", "size-larger", "last-leaf-gone", "last-leaf", "edge-node"],
)
def test_damage_to_the_head_is_detected_on_open(db: Path, damage: str) -> None:
    build(db)
    tamper(db, damage)
    with LedgerStore(db) as s:
        assert "victim" in s.corrupt_logs()
        assert_refused_from_now_on(s)


def test_flipped_byte_in_the_file_is_detected(db: Path) -> None:
    """Damage below SQLite: flip a byte of a leaf inside the database file itself."""
    head = build(db, n=300)
    raw = bytearray(db.read_bytes())
    marker = leaf(123)
    pos = raw.find(marker)
    assert pos >= 0 and raw.find(marker, pos + 1) < 0
    raw[pos + 3] ^= 0x01
    db.write_bytes(bytes(raw))
    with LedgerStore(db) as s:
        assert s.tree_head("victim") == head  # the head itself is intact
        with pytest.raises(LogCorrupt, match="leaf 123"):
            s.leaves("victim", 120, 130)
    with LedgerStore(db, verify_on_open=True) as s:
        assert "leaf 123" in s.corrupt_logs()["victim"]
        assert s.verify_log("bystander").size == 10


def test_flipped_node_byte_in_the_file_is_detected(db: Path) -> None:
    build(db, n=300)
    conn = sqlite3.connect(db)
    node = conn.execute(f"SELECT hash FROM nodes WHERE {VICTIM} AND level = {NODE_STRIDE} AND idx = 3").fetchone()[0]
    conn.close()
    raw = bytearray(db.read_bytes())
    pos = raw.find(node)
    assert pos >= 0 and raw.find(node, pos + 1) < 0
    raw[pos + 17] ^= 0x80
    db.write_bytes(bytes(raw))
    with LedgerStore(db) as s:
        leaf_under_sibling = 2 << NODE_STRIDE  # leaf 32: first leaf of the sibling subtree
        with pytest.raises(LogCorrupt):
            s.inclusion_proof("victim", leaf_under_sibling, 300)
