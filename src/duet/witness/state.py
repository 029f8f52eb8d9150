"""The witness's memory: the latest cosigned (size, root) per log origin, durable.

A witness that forgets is worse than none: after a crash it would cosign a fork of what it
cosigned before. So the record is fsynced (SQLite, `synchronous=FULL`) before any
cosignature leaves, and the check of the old size and the write of the new one happen in
one write transaction (`BEGIN IMMEDIATE`), so two concurrent submissions cannot roll the
record back (the race the C2SP text describes).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WitnessState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                         "root BLOB NOT NULL)")
        self._lock = threading.Lock()

    def latest(self, origin: str) -> tuple[int, bytes | None]:
        row = self._db.execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (0, None) if row is None else (int(row[0]), bytes(row[1]))

    def update(self, origin: str, decide: Callable[[int, bytes | None], T | None], size: int, root: bytes) -> T | None:
        """Run `decide(current_size, current_root)` and, if it returns None (no objection),
        durably record (size, root) — all inside one write transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                objection = decide(*self.latest(origin))
                if objection is None:
                    self._db.execute("INSERT INTO logs (origin, size, root) VALUES (?, ?, ?) ON CONFLICT(origin) "
                                     "DO UPDATE SET size = excluded.size, root = excluded.root", (origin, size, root))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return objection

    def close(self) -> None:
        self._db.close()
