"""The ledger's durable nonce table: written in the append's transaction, expiring only
when the ledger has grown enough *and* the iat is old (never by a clock alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from duet.ledger.errors import StorageError
from duet.ledger.store import LedgerStore


def test_nonce_is_written_with_the_entry_and_survives_reopen(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.sqlite") as store:
        store.create_log("a")
        store.append("a", [b"intent"], nonces=[("n1", 1000)])
        assert store.nonce_seen("n1") and not store.nonce_seen("n2")
    with LedgerStore(tmp_path / "l.sqlite") as store:
        assert store.nonce_seen("n1")


def test_a_remembered_nonce_fails_the_whole_append(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.sqlite") as store:
        store.create_log("a")
        store.append("a", [b"first"], nonces=[("n1", 1000)])
        with pytest.raises(StorageError):
            store.append("a", [b"replayed"], nonces=[("n1", 1000)])
        assert store.tree_head("a").size == 1  # nothing of the replay was written


def test_nonces_expire_only_by_growth_and_iat_together(tmp_path: Path) -> None:
    with LedgerStore(tmp_path / "l.sqlite") as store:
        store.create_log("a")
        store.append("a", [b"x"], nonces=[("old", 1000)])
        # A clock far ahead (iat long before the cutoff) but little growth: kept.
        store.append("a", [b"y"], nonces=[("n2", 10**9)], forget=(5, 10**9))
        assert store.nonce_seen("old")
        store.append("a", [b"z"] * 10)
        # Enough growth but the iat is still inside the window: kept.
        store.append("a", [b"w"], nonces=[("n3", 10**9)], forget=(5, 999))
        assert store.nonce_seen("old")
        # Both: forgotten.
        store.append("a", [b"v"], nonces=[("n4", 10**9)], forget=(5, 1001))
        assert not store.nonce_seen("old") and store.nonce_seen("n4")
