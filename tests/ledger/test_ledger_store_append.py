"""The append path: the node rows and heads it writes from the in-memory right edge are
exactly what the pure Merkle code says, across single appends, batches, group commits,
failed commits and reopening."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from duet.ledger import merkle
from duet.ledger.errors import StorageError
from duet.ledger.store import NODE_STRIDE, LedgerStore, TreeHead


def leaf(i: int) -> bytes:
    return f"append-leaf-{i}-{'y' * (i % 11)}".encode()


def expected_nodes(n: int) -> set[tuple[int, int, bytes]]:
    """(level, idx, hash) of every complete subtree on a stored level, via CompactRange."""
    cr = merkle.CompactRange()
    out = set()
    for i in range(n):
        for level, idx, h in cr.append(merkle.leaf_hash(leaf(i))):
            if level % NODE_STRIDE == 0:
                out.add((level, idx, h))
    return out


Nodes = set[tuple[int, int, bytes]]


def stored(db: Path, log_id: str) -> tuple[Nodes, list[tuple[int, bytes, bytes]], tuple[int, bytes]]:
    conn = sqlite3.connect(db)
    try:
        key = conn.execute("SELECT id FROM logs WHERE name = ?", (log_id,)).fetchone()[0]
        nodes = set(conn.execute("SELECT level, idx, hash FROM nodes WHERE log = ?", (key,)))
        leaves = conn.execute("SELECT idx, hash, leaf FROM leaves WHERE log = ? ORDER BY idx", (key,)).fetchall()
        head = conn.execute("SELECT size, root FROM logs WHERE id = ?", (key,)).fetchone()
        return nodes, leaves, head
    finally:
        conn.close()


def check_on_disk(db: Path, log_id: str, n: int) -> None:
    nodes, leaves, head = stored(db, log_id)
    hashes = [merkle.leaf_hash(leaf(i)) for i in range(n)]
    assert leaves == [(i, hashes[i], leaf(i)) for i in range(n)]
    assert nodes == expected_nodes(n)
    assert tuple(head) == (n, merkle.root(hashes))


def test_single_and_batched_appends_write_exactly_the_merkle_rows(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    rng = random.Random(7)
    hashes: list[bytes] = []
    with LedgerStore(db) as s:
        s.create_log("log")
        n = 0
        while n < 600:
            k = rng.choice([1, 1, 1, 2, 3, 4, 5, 16, 17, 64])
            head = s.append("log", [leaf(i) for i in range(n, n + k)])
            hashes.extend(merkle.leaf_hash(leaf(i)) for i in range(n, n + k))
            n += k
            assert head == TreeHead(n, merkle.root(hashes))
            assert s.tree_head("log") == head
        # In memory: the right edge is exactly the complete subtrees of [0, n).
        edge = s._logs["log"].edge
        assert [level for level, _ in edge] == [level for level, _ in merkle.subtree_nodes(0, n)]
        assert merkle.fold_subtrees([h for _, h in edge]) == merkle.root(hashes)
    check_on_disk(db, "log", n)
    # Reopening rebuilds the edge from disk, and appends carry on from it.
    with LedgerStore(db) as s:
        for i in range(n, n + 70):
            assert s.append("log", [leaf(i)]).root_hash == merkle.root(
                [*hashes, *(merkle.leaf_hash(leaf(j)) for j in range(n, i + 1))]
            )
        assert s.verify_log("log").size == n + 70
    check_on_disk(db, "log", n + 70)


def test_every_size_up_to_300_one_leaf_at_a_time(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with LedgerStore(db) as s:
        s.create_log("log")
        cr = merkle.CompactRange()
        for i in range(300):
            cr.append(merkle.leaf_hash(leaf(i)))
            assert s.append("log", [leaf(i)]) == TreeHead(i + 1, cr.root())
    check_on_disk(db, "log", 300)


def test_group_commit_interleaves_logs_correctly(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with LedgerStore(db) as s:
        for name in ("x", "y", "z"):
            s.create_log(name)
        sizes = {"x": 0, "y": 0, "z": 0}
        rng = random.Random(11)
        for _ in range(40):
            batch = {}
            for name in sizes:
                k = rng.randint(0, 9)
                batch[name] = [leaf(i) for i in range(sizes[name], sizes[name] + k)]
            heads = s.append_batch(batch)
            for name in sizes:
                sizes[name] += len(batch[name])
                want = merkle.root([merkle.leaf_hash(leaf(i)) for i in range(sizes[name])])
                assert heads[name] == TreeHead(sizes[name], want)
    for name, n in sizes.items():
        check_on_disk(db, name, n)


def test_failed_commit_leaves_the_edge_and_head_untouched(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    with LedgerStore(db) as s:
        s.create_log("log")
        s.append("log", [leaf(i) for i in range(13)])
        before = s.tree_head("log")
        edge_before = list(s._logs["log"].edge)
        # A stray row where leaf 13 goes makes the next append's INSERT fail.
        s._conn.execute(
            "INSERT INTO leaves (log, idx, hash, leaf) SELECT id, 13, zeroblob(32), x'' FROM logs WHERE name = 'log'"
        )
        for batch in ([leaf(13)], [leaf(13), leaf(14), leaf(15)]):
            with pytest.raises(StorageError):
                s.append("log", batch)
            assert s.tree_head("log") == before
            assert s._logs["log"].edge == edge_before
        s._conn.execute("DELETE FROM leaves WHERE idx = 13")
        for i in range(13, 40):
            s.append("log", [leaf(i)])
        assert s.verify_log("log").size == 40
    check_on_disk(db, "log", 40)


def test_head_changed_under_the_store_is_refused(tmp_path: Path) -> None:
    """The logs-row UPDATE is conditional on the size the store holds in memory."""
    with LedgerStore(tmp_path / "e.db") as s:
        s.create_log("log")
        s.append("log", [leaf(0), leaf(1)])
        before = s.tree_head("log")
        s._conn.execute("UPDATE logs SET size = 5 WHERE name = 'log'")
        with pytest.raises(StorageError, match="changed under the store"):
            s.append("log", [leaf(2)])
        assert s.tree_head("log") == before
        count = s._conn.execute("SELECT count(*) FROM leaves").fetchone()[0]
        assert count == 2  # the leaf insert was rolled back with the failed update
