"""`LedgerStore.leaves_page`: a read bounded in bytes, with the same hash checks as `leaves`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from duet.ledger.errors import LogCorrupt
from duet.ledger.store import LedgerStore


def _store(db: Path, sizes: list[int]) -> None:
    with LedgerStore(db) as s:
        s.create_log("log")
        s.append("log", [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)])


def test_a_page_stops_before_the_byte_budget(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    _store(db, [100] * 10)
    with LedgerStore(db) as s:
        assert len(s.leaves_page("log", 0, 10, 350)) == 3
        assert s.leaves_page("log", 2, 10, 10_000) == s.leaves("log", 2, 10)
        assert len(s.leaves_page("log", 0, 10, 1)) == 1  # always at least one leaf
        assert s.leaves_page("log", 10, 10, 100) == []


def test_a_page_checks_every_leaf_it_returns(tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    _store(db, [100] * 10)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE leaves SET leaf = x'00' WHERE idx = 1")
    conn.close()
    with LedgerStore(db) as s, pytest.raises(LogCorrupt):
        s.leaves_page("log", 0, 10, 10_000)
