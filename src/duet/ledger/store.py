"""Durable SQLite storage for many append-only Merkle logs (one per CVM).

What is stored, per log:

* ``leaves``: every leaf verbatim with its leaf hash (level 0 of the tree);
* ``nodes``: the hash of every *complete* subtree of 2**level leaves for the levels that
  are multiples of :data:`NODE_STRIDE` (2, 4, 6, ...), written when its last leaf is
  appended. A subtree on an odd level is the node hash of the two stored subtrees below
  it, read with one range query; so a tree head or proof still costs O(log n) reads and
  never a pass over the log. Skipping every other level (the idea behind tlog "tiles",
  without the packing) writes one node row per four leaves instead of one per leaf:
  most single appends dirty two pages instead of three, and full verification has a
  third as many stored hashes to compare;
* ``logs``: the current tree head (size and root), updated in the same transaction.

Durability: :meth:`LedgerStore.append` returns only after SQLite has committed the leaves,
their nodes and the new head with ``synchronous=FULL``, i.e. after fsync. A batch (and
:meth:`LedgerStore.append_batch` across logs) is one transaction: one fsync for the whole
group, and all of it or none of it after a crash.

Journal and locking: the store uses **WAL with ``locking_mode=EXCLUSIVE``**, set before the
first WAL access. In that mode SQLite keeps the WAL index in heap memory and never creates
or maps the ``-shm`` file (https://sqlite.org/wal.html#noshm), which Gramine's encrypted
files cannot provide; WAL then costs a single fsync per commit. The price is that only one
process (the controller) can open the database at a time, which is what we want anyway.
``journal_mode="delete"`` (a rollback journal, also without shared memory) is available
for file systems where WAL misbehaves; it syncs the journal and the database on every
commit and measured about half as fast for single appends (bench/ledger.py).

Integrity: stored bytes can go bad (a disk, a bug, a host editing a file that is not on
Gramine's encrypted mount), and a flipped byte must never be served as a proof that does
not verify, or as an entry that is not the one in the tree. So:

* on open, each log's head is recomputed from its right-edge subtree hashes and the last
  leaf's inclusion in it is checked (O(log n) per log);
* every leaf read is checked against its stored leaf hash;
* every proof and past tree head is verified against the stored head before it is
  returned, so a damaged node shows up as :class:`LogCorrupt` instead of a bad proof;
* :meth:`LedgerStore.verify_log` recomputes everything from the leaves.

A log found corrupt is marked and every later call on it raises :class:`LogCorrupt`
(duet refuses to serve a log it cannot prove); other logs stay available. Deliberate
rewriting of the whole file is out of scope here: Gramine's encrypted files and the
clients' remembered checkpoints (consistency proofs) cover it.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from duet.ledger.errors import (
    LedgerError,
    LogCorrupt,
    LogExists,
    OutOfRange,
    ProofError,
    StorageError,
    UnknownLog,
)
from duet.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    consistency_ranges,
    fold_subtrees,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    subtree_nodes,
    verify_consistency,
    verify_inclusion,
)
from duet.ledger.merkle import (
    root as merkle_root,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_LOG_ID = 256
JournalMode = Literal["wal", "delete", "truncate", "persist"]

NODE_STRIDE = 2
"""Interior levels stored in ``nodes`` are the multiples of this. Part of the on-disk
format (schema version 1): changing it needs a new SCHEMA_VERSION."""

_VERIFY_CHUNK_LEVEL = 12
"""verify_log hashes the leaves in aligned chunks of 2**12 leaves (NODE_STRIDE divides
12): big enough that the per-level comparisons run at C speed over lists, small enough to
stay in the CPU cache."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id    INTEGER PRIMARY KEY,
    name  TEXT    NOT NULL UNIQUE,
    size  INTEGER NOT NULL,
    root  BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS leaves (
    log   INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    leaf  BLOB    NOT NULL,
    PRIMARY KEY (log, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    log   INTEGER NOT NULL,
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (log, level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT    PRIMARY KEY,
    iat   INTEGER NOT NULL,
    seq   INTEGER NOT NULL
) WITHOUT ROWID;
"""
# `nonces` (added to schema version 1 with IF NOT EXISTS: older files gain it on open):
# the replay guard's durable memory, written in the same transaction as the entry that
# logs the intent (see `append`). `seq` is the total number of leaves in the store
# after that transaction: nonces expire by the ledger's growth, never by a clock alone.


@dataclass(frozen=True)
class TreeHead:
    """A tree size and the Merkle root of the log's first ``size`` leaves."""

    size: int
    root_hash: bytes


@dataclass
class _Log:
    key: int
    name: str
    size: int
    root: bytes
    edge: list[tuple[int, bytes]] = field(default_factory=list)
    """The right edge: (level, hash) of the complete subtrees covering [0, size), largest
    first (as subtree_nodes(0, size) lists them). Checked against the stored head and the
    last leaf on open; appends extend it without reading anything back."""
    corrupt: str | None = None


@dataclass(slots=True)
class _Plan:
    """One log's part of an append: rows to insert and the head they lead to."""

    entry: _Log
    size: int
    edge: list[tuple[int, bytes]]
    leaf_rows: list[tuple[int, int, bytes, bytes]]
    node_rows: list[tuple[int, int, int, bytes]]
    root: bytes


_INSERT_LEAF = "INSERT INTO leaves (log, idx, hash, leaf) VALUES (?, ?, ?, ?)"
_INSERT_NODE = "INSERT INTO nodes (log, level, idx, hash) VALUES (?, ?, ?, ?)"
_UPDATE_HEAD = "UPDATE logs SET size = ?, root = ? WHERE id = ? AND size = ?"
_INSERT_NONCE = "INSERT INTO nonces (nonce, iat, seq) VALUES (?, ?, ?)"
_PRUNE_NONCES = "DELETE FROM nonces WHERE seq < ? AND iat < ?"

class _Reader:
    """Reads stored hashes for one log within one call, remembering what it read (proofs
    and the heads they are checked against share most of their subtrees)."""

    def __init__(self, store: LedgerStore, entry: _Log) -> None:
        self._store = store
        self._log = entry
        self._conn = store._conn
        self._cache: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, idx: int) -> bytes:
        """Hash of the complete subtree of 2**level leaves starting at leaf idx << level."""
        cached = self._cache.get((level, idx))
        if cached is not None:
            return cached
        base = level - level % NODE_STRIDE
        span = 1 << (level - base)
        first = idx * span
        if base == 0:
            rows = self._conn.execute(
                "SELECT hash FROM leaves WHERE log = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (self._log.key, first, first + span),
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT hash FROM nodes WHERE log = ? AND level = ? AND idx >= ? AND idx < ? "
                "ORDER BY idx",
                (self._log.key, base, first, first + span),
            ).fetchall()
        hashes = [row[0] for row in rows]
        if len(hashes) != span or any(
            not isinstance(h, bytes) or len(h) != HASH_SIZE for h in hashes
        ):
            what = "missing" if len(hashes) != span else "malformed"
            raise self._store._mark_corrupt(
                self._log,
                f"stored hashes of level {base} under subtree level {level} index {idx} are {what}",
                index=idx << level,
            )
        for i, h in enumerate(hashes):
            self._cache[(base, first + i)] = h
        # span is a power of two, so the RFC tree over these hashes is the subtree.
        result = merkle_root(hashes)
        self._cache[(level, idx)] = result
        return result

    def range_hash(self, lo: int, hi: int) -> bytes:
        return fold_subtrees([self.node(level, idx) for level, idx in subtree_nodes(lo, hi)])

    def checked_leaf_hash(self, index: int) -> bytes:
        """Leaf ``index``'s stored hash, after checking it against the stored leaf."""
        row = self._conn.execute(
            "SELECT hash, leaf FROM leaves WHERE log = ? AND idx = ?", (self._log.key, index)
        ).fetchone()
        if row is None:
            raise self._store._mark_corrupt(self._log, f"leaf {index} is missing", index=index)
        stored, leaf = row
        if not isinstance(leaf, bytes) or leaf_hash(leaf) != stored:
            raise self._store._mark_corrupt(
                self._log, f"leaf {index} does not match its stored hash", index=index
            )
        self._cache[(0, index)] = stored
        return bytes(stored)

    def root_at(self, size: int) -> bytes:
        """Root of the first ``size`` leaves, proven consistent with the stored head."""
        head = self._log
        if size == head.size:
            return head.root
        if size == 0:
            return EMPTY_ROOT
        root = self.range_hash(0, size)
        proof = [self.range_hash(lo, hi) for lo, hi in consistency_ranges(size, head.size)]
        try:
            verify_consistency(size, head.size, proof, root, head.root)
        except ProofError as exc:
            raise self._store._mark_corrupt(
                head, f"stored hashes for tree size {size} disagree with the head: {exc}"
            ) from exc
        return root


class LedgerStore:
    """Many logs in one SQLite file; safe to share between threads.

    One connection (``check_same_thread=False``) guarded by a lock: SQLite serialises
    writers anyway, and the controller's appends are tiny, so a lock is simpler than a pool
    and keeps the in-memory heads and the database in step.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        journal_mode: JournalMode = "wal",
        verify_on_open: bool = False,
        busy_timeout: float = 2.0,
    ) -> None:
        """Open or create the store at ``path`` and check every log's head.

        ``verify_on_open`` additionally recomputes every log from its leaves (O(n)).
        ``busy_timeout`` is how long to wait if another process holds the database.
        """
        self._lock = threading.RLock()
        self._path = Path(path)
        self._logs: dict[str, _Log] = {}
        self._closed = False
        try:
            self._conn = sqlite3.connect(
                str(self._path),
                timeout=busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open ledger database {self._path}: {exc}") from exc
        #: Called with the seconds each durable commit took (the controller's metrics).
        self.on_commit: Callable[[float], None] | None = None
        try:
            # Appends reuse one cursor (and SQLite's prepared statements) under the lock.
            self._cursor = self._conn.cursor()
            self._configure(journal_mode)
            self._load_logs()
            if verify_on_open:
                for name in list(self._logs):
                    if self._logs[name].corrupt is None:
                        try:
                            self.verify_log(name)
                        except LogCorrupt:
                            pass  # recorded on the log; calls on it raise
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    # --- setup -------------------------------------------------------------------------

    def _configure(self, journal_mode: JournalMode) -> None:
        conn = self._conn
        try:
            # Must come before the first WAL access, so no shared-memory index is used.
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            got = conn.execute(f"PRAGMA journal_mode = {journal_mode.upper()}").fetchone()[0]
            if str(got).lower() != journal_mode:
                raise StorageError(
                    f"cannot set journal_mode={journal_mode} on {self._path} (got {got})"
                )
            conn.execute("PRAGMA synchronous = FULL")
            # Take the exclusive lock now (it is then held until close), so a second
            # process fails at open instead of at its first append.
            conn.execute("BEGIN EXCLUSIVE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise StorageError(
                        f"{self._path} has ledger schema version {version}, "
                        f"this code reads version {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            hint = " (another process holds it)" if "locked" in str(exc) else ""
            raise StorageError(f"cannot open ledger database {self._path}{hint}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self._path} is not a usable ledger database: {exc}") from exc

    def _load_logs(self) -> None:
        with self._db_errors(None):
            rows = self._conn.execute("SELECT id, name, size, root FROM logs").fetchall()
        for key, name, size, root in rows:
            # A damaged row may hold other types; _check_head then reports it.
            entry = _Log(
                key=key, name=name, size=size, root=root if isinstance(root, bytes) else b""
            )
            self._logs[name] = entry
            try:
                with self._db_errors(entry):
                    self._check_head(entry)
            except LogCorrupt:
                pass  # recorded on the log by _mark_corrupt

    def _check_head(self, entry: _Log) -> None:
        """The cheap open-time check: the stored head equals the fold of the stored
        right-edge subtrees, the last leaf is the head's last leaf and matches its hash,
        and its inclusion proof leads to the head. O(log n) reads."""
        if not isinstance(entry.size, int) or entry.size < 0 or len(entry.root) != HASH_SIZE:
            raise self._mark_corrupt(entry, "stored tree head is malformed")
        reader = _Reader(self, entry)
        nodes = subtree_nodes(0, entry.size)
        hashes = [reader.node(level, idx) for level, idx in nodes]
        if fold_subtrees(hashes) != entry.root:
            raise self._mark_corrupt(
                entry, f"stored head (size {entry.size}) does not match its subtree hashes"
            )
        last = self._conn.execute(
            "SELECT idx FROM leaves WHERE log = ? ORDER BY idx DESC LIMIT 1", (entry.key,)
        ).fetchone()
        last_idx = -1 if last is None else last[0]
        if last_idx != entry.size - 1:
            raise self._mark_corrupt(
                entry, f"head says {entry.size} leaves but the last stored leaf is {last_idx}"
            )
        if entry.size:
            index = entry.size - 1
            proof = [reader.range_hash(lo, hi) for lo, hi in inclusion_ranges(index, entry.size)]
            try:
                verify_inclusion(
                    reader.checked_leaf_hash(index), index, entry.size, proof, entry.root
                )
            except ProofError as exc:
                raise self._mark_corrupt(
                    entry, f"last leaf is not included in the head: {exc}", index=index
                ) from exc
        entry.edge = [(level, h) for (level, _), h in zip(nodes, hashes, strict=True)]

    # --- helpers -----------------------------------------------------------------------

    def _mark_corrupt(self, entry: _Log, message: str, *, index: int | None = None) -> LogCorrupt:
        """Record that ``entry`` cannot be proven and return the error to raise."""
        text = f"log {entry.name!r} is corrupt: {message}"
        if entry.corrupt is None:
            entry.corrupt = text
            logger.error("%s; refusing to serve it", text)
        return LogCorrupt(text, log_id=entry.name, index=index)

    @contextmanager
    def _db_errors(self, entry: _Log | None) -> Iterator[None]:
        """Turn SQLite errors into ledger errors: a damaged file into LogCorrupt (for the
        log being read), anything else (I/O, locking) into StorageError."""
        try:
            yield
        except LedgerError:
            raise
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError and entry is not None:
                raise self._mark_corrupt(entry, f"database file is damaged: {exc}") from exc
            raise StorageError(f"ledger database error: {exc}") from exc

    def _open(self) -> None:
        if self._closed:
            raise StorageError("ledger store is closed")

    def _get(self, log_id: str) -> _Log:
        self._open()
        entry = self._logs.get(log_id)
        if entry is None:
            raise UnknownLog(f"no log {log_id!r}")
        if entry.corrupt is not None:
            raise LogCorrupt(entry.corrupt, log_id=log_id)
        return entry

    # --- logs --------------------------------------------------------------------------

    def create_log(self, log_id: str) -> None:
        """Create an empty log (durably)."""
        if not isinstance(log_id, str) or not 0 < len(log_id) <= MAX_LOG_ID:
            raise LedgerError(f"log id must be a string of 1 to {MAX_LOG_ID} characters")
        if any(ch < " " or ch == "\x7f" for ch in log_id):
            raise LedgerError("log id must not contain control characters")
        with self._lock:
            self._open()
            if log_id in self._logs:
                raise LogExists(f"log {log_id!r} already exists")
            with self._db_errors(None):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    cur = self._conn.execute(
                        "INSERT INTO logs (name, size, root) VALUES (?, 0, ?)",
                        (log_id, EMPTY_ROOT),
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            key = cur.lastrowid
            assert key is not None
            self._logs[log_id] = _Log(key=key, name=log_id, size=0, root=EMPTY_ROOT)

    def has_log(self, log_id: str) -> bool:
        """True if the log exists (even if it is corrupt)."""
        with self._lock:
            self._open()
            return log_id in self._logs

    def log_ids(self) -> list[str]:
        """All log ids, sorted."""
        with self._lock:
            self._open()
            return sorted(self._logs)

    def corrupt_logs(self) -> dict[str, str]:
        """Logs found corrupt so far, with what was wrong."""
        with self._lock:
            return {name: e.corrupt for name, e in self._logs.items() if e.corrupt is not None}

    # --- writes ------------------------------------------------------------------------

    def append(
        self, log_id: str, leaves: Sequence[bytes], *, nonces: Sequence[tuple[str, int]] = (),
        forget: tuple[int, int] | None = None,
    ) -> TreeHead:
        """Append ``leaves`` to a log in one durable transaction; return the new head.

        ``nonces`` ((nonce, iat) of the intents these leaves log) are remembered in the
        same transaction: a nonce already remembered fails the whole append. ``forget``
        (growth, iat_before) drops, in the same transaction, the nonces remembered more
        than ``growth`` leaves ago whose iat is also before ``iat_before``."""
        with self._lock:
            plan = self._plan(self._get(log_id), leaves)
            if plan.leaf_rows:
                self._commit((plan,), nonces, forget)
            return TreeHead(plan.size, plan.root)

    def nonce_seen(self, nonce: str) -> bool:
        """Whether a logged intent used this nonce (and it has not expired)."""
        with self._lock:
            self._open()
            with self._db_errors(None):
                row = self._conn.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
            return row is not None

    def total_leaves(self) -> int:
        """Leaves in all logs together: the clock nonces expire by."""
        with self._lock:
            return sum(e.size for e in self._logs.values())

    def append_batch(self, batch: Mapping[str, Sequence[bytes]]) -> dict[str, TreeHead]:
        """Append to several logs in one transaction (group commit: one fsync in all)."""
        with self._lock:
            plans = [self._plan(self._get(log_id), leaves) for log_id, leaves in batch.items()]
            if any(plan.leaf_rows for plan in plans):
                self._commit(plans)
            return {p.entry.name: TreeHead(p.size, p.root) for p in plans}

    def _plan(self, entry: _Log, leaves: Sequence[bytes]) -> _Plan:
        """Hash the new leaves and the subtrees they complete, touching nothing yet.

        Works on a copy of the log's right edge (the in-memory one changes only after the
        commit), so a failed append needs no undo. Same hashes as merkle.CompactRange:
        each leaf merges with the edge subtrees of equal size, and the completed subtrees
        on the stored levels become node rows.
        """
        if isinstance(leaves, (bytes, bytearray, memoryview, str)):  # a tuple: faster than a union
            raise LedgerError("leaves must be a sequence of bytes, not a single value")
        sha, key, stride = hashlib.sha256, entry.key, NODE_STRIDE
        edge = entry.edge.copy()
        size = entry.size
        leaf_rows: list[tuple[int, int, bytes, bytes]] = []
        node_rows: list[tuple[int, int, int, bytes]] = []
        for i, leaf in enumerate(leaves):
            if type(leaf) is not bytes:
                if not isinstance(leaf, bytes | bytearray | memoryview):
                    raise LedgerError(f"leaf {i} is {type(leaf).__name__}, expected bytes")
                leaf = bytes(leaf)
            h = sha(b"\x00" + leaf).digest()
            leaf_rows.append((key, size, h, leaf))
            size += 1
            level = 0
            while edge and edge[-1][0] == level:
                h = sha(b"\x01" + edge.pop()[1] + h).digest()
                level += 1
                if level % stride == 0:
                    node_rows.append((key, level, (size >> level) - 1, h))
            edge.append((level, h))
        if not leaf_rows:
            return _Plan(entry, size, edge, leaf_rows, node_rows, entry.root)
        # The head: fold the edge subtrees from the right (merkle.fold_subtrees).
        root = h
        for j in range(len(edge) - 2, -1, -1):
            root = sha(b"\x01" + edge[j][1] + root).digest()
        return _Plan(entry, size, edge, leaf_rows, node_rows, root)

    def _commit(
        self, plans: Sequence[_Plan], nonces: Sequence[tuple[str, int]] = (),
        forget: tuple[int, int] | None = None,
    ) -> None:
        """Write the plans in one transaction, then (only then) update the in-memory heads."""
        started = time.perf_counter()
        cur = self._cursor
        try:
            cur.execute("BEGIN IMMEDIATE")
            self._before_write(cur, plans, nonces, forget)
            if nonces or forget is not None:
                seq = sum(e.size for e in self._logs.values()) + sum(p.size - p.entry.size for p in plans)
                if forget is not None:
                    cur.execute(_PRUNE_NONCES, (seq - forget[0], forget[1]))
                for nonce, iat in nonces:
                    cur.execute(_INSERT_NONCE, (nonce, iat, seq))
            for p in plans:
                if len(p.leaf_rows) == 1:
                    cur.execute(_INSERT_LEAF, p.leaf_rows[0])
                elif p.leaf_rows:
                    cur.executemany(_INSERT_LEAF, p.leaf_rows)
                if len(p.node_rows) == 1:
                    cur.execute(_INSERT_NODE, p.node_rows[0])
                elif p.node_rows:
                    cur.executemany(_INSERT_NODE, p.node_rows)
                cur.execute(_UPDATE_HEAD, (p.size, p.root, p.entry.key, p.entry.size))
                if cur.rowcount != 1:
                    raise StorageError(
                        f"log {p.entry.name!r} changed under the store (head mismatch)"
                    )
            cur.execute("COMMIT")  # with synchronous=FULL: returns after fsync
        except sqlite3.Error as exc:
            self._rollback()
            raise StorageError(f"append failed, nothing was written: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        for p in plans:
            p.entry.size, p.entry.root, p.entry.edge = p.size, p.root, p.edge
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started)

    def _before_write(
        self, cur: sqlite3.Cursor, plans: Sequence[_Plan], nonces: Sequence[tuple[str, int]],
        forget: tuple[int, int] | None,
    ) -> None:
        """Called inside the local transaction, before anything is written to it: a
        replicated store (`controller/replicated.py`) commits the same append to its
        remote store here, so the local copy is never ahead of it. Raising aborts the
        local transaction too."""

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                logger.exception("rollback failed")

    # --- reads -------------------------------------------------------------------------

    def tree_head(self, log_id: str, size: int | None = None) -> TreeHead:
        """The current head, or the head at an earlier ``size`` (O(log n) reads, proven
        consistent with the current head before it is returned)."""
        with self._lock:
            entry = self._get(log_id)
            if size is None:
                return TreeHead(entry.size, entry.root)
            _check_int(size, "tree size")
            if not 0 <= size <= entry.size:
                raise OutOfRange(f"tree size {size} is out of range: log has {entry.size} leaves")
            with self._db_errors(entry):
                return TreeHead(size, _Reader(self, entry).root_at(size))

    def leaves(self, log_id: str, start: int, end: int) -> list[bytes]:
        """Leaves ``start`` (inclusive) to ``end`` (exclusive), each checked against its
        stored hash."""
        return self.leaves_page(log_id, start, end, max_bytes=sys.maxsize)

    def tile(self, log_id: str, level: int, index: int, width: int) -> bytes:
        """The C2SP hash tile (`ledger/tiles.py`): the stored hashes of the complete
        subtrees of 2**(8*level) leaves at positions index*256 .. index*256+width-1. One
        range read: tile levels are multiples of 8, hence of NODE_STRIDE, so they are
        stored as they are served. Readers check tiles against a signed checkpoint."""
        with self._lock:
            entry = self._get(log_id)
            first, height = index * 256, 8 * level
            if level < 0 or not 1 <= width <= 256 or first < 0 or (first + width) << height > entry.size:
                raise OutOfRange(f"no tile {level}/{index} of width {width} in a log of {entry.size} leaves")
            with self._db_errors(entry):
                if level == 0:
                    rows = self._conn.execute(
                        "SELECT hash FROM leaves WHERE log = ? AND idx >= ? AND idx < ? ORDER BY idx",
                        (entry.key, first, first + width)).fetchall()
                else:
                    rows = self._conn.execute(
                        "SELECT hash FROM nodes WHERE log = ? AND level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                        (entry.key, height, first, first + width)).fetchall()
                hashes = [row[0] for row in rows]
                if len(hashes) != width or any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in hashes):
                    raise self._mark_corrupt(entry, f"stored hashes of tile {level}/{index} are missing or malformed",
                                             index=first << height)
                return b"".join(hashes)

    def leaves_page(self, log_id: str, start: int, end: int, max_bytes: int) -> list[bytes]:
        """Leaves from ``start`` toward ``end``, stopping before the leaf that would take the
        total beyond ``max_bytes`` (always at least one): a read page whose memory does not
        grow with the leaves' size. Each leaf is checked against its stored hash; rows are
        read one at a time from the cursor."""
        with self._lock:
            entry = self._get(log_id)
            _check_int(start, "start")
            _check_int(end, "end")
            if not 0 <= start <= end <= entry.size:
                raise OutOfRange(
                    f"leaf range [{start}, {end}) is out of range: log has {entry.size} leaves"
                )
            out: list[bytes] = []
            total = 0
            with self._db_errors(entry):
                cursor = self._conn.execute(
                    "SELECT idx, hash, leaf FROM leaves WHERE log = ? AND idx >= ? AND idx < ? "
                    "ORDER BY idx",
                    (entry.key, start, end),
                )
                try:
                    for expected, (idx, stored, leaf) in enumerate(cursor, start):
                        if idx != expected:
                            raise self._mark_corrupt(entry, f"leaf {expected} is missing", index=expected)
                        if not isinstance(leaf, bytes) or leaf_hash(leaf) != stored:
                            raise self._mark_corrupt(
                                entry, f"leaf {idx} does not match its stored hash", index=idx
                            )
                        if out and total + len(leaf) > max_bytes:
                            return out
                        out.append(bytes(leaf))
                        total += len(leaf)
                finally:
                    cursor.close()
                if len(out) != end - start:
                    missing = start + len(out)
                    raise self._mark_corrupt(entry, f"leaf {missing} is missing", index=missing)
                return out

    def inclusion_proof(self, log_id: str, index: int, size: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves, verified
        against the stored head before it is returned."""
        with self._lock:
            entry = self._get(log_id)
            _check_int(index, "leaf index")
            _check_int(size, "tree size")
            if not 0 <= index < size <= entry.size:
                raise OutOfRange(
                    f"no leaf {index} in a tree of size {size} (log has {entry.size} leaves)"
                )
            with self._db_errors(entry):
                reader = _Reader(self, entry)
                proof = [reader.range_hash(lo, hi) for lo, hi in inclusion_ranges(index, size)]
                leaf_h = reader.checked_leaf_hash(index)
                root = reader.root_at(size)
                try:
                    verify_inclusion(leaf_h, index, size, proof, root)
                except ProofError as exc:
                    raise self._mark_corrupt(
                        entry,
                        f"stored hashes give a bad proof for leaf {index}: {exc}",
                        index=index,
                    ) from exc
                return proof

    def consistency_proof(self, log_id: str, old_size: int, new_size: int) -> list[bytes]:
        """Consistency proof between tree sizes ``old_size`` ≤ ``new_size``, verified
        against the stored head before it is returned."""
        with self._lock:
            entry = self._get(log_id)
            _check_int(old_size, "old tree size")
            _check_int(new_size, "new tree size")
            if not 0 <= old_size <= new_size <= entry.size:
                raise OutOfRange(
                    f"tree sizes {old_size} → {new_size} are not within 0 ≤ old ≤ new ≤ "
                    f"{entry.size}"
                )
            if old_size in (0, new_size):
                return []
            with self._db_errors(entry):
                reader = _Reader(self, entry)
                ranges = consistency_ranges(old_size, new_size)
                proof = [reader.range_hash(lo, hi) for lo, hi in ranges]
                old_root, new_root = reader.root_at(old_size), reader.root_at(new_size)
                try:
                    verify_consistency(old_size, new_size, proof, old_root, new_root)
                except ProofError as exc:
                    raise self._mark_corrupt(
                        entry,
                        f"stored hashes give a bad consistency proof {old_size} → {new_size}: "
                        f"{exc}",
                    ) from exc
                return proof

    def verify_log(self, log_id: str) -> TreeHead:
        """Recompute the log from its leaves: every leaf hash, every stored subtree hash
        and the head. O(n); raises :class:`LogCorrupt` at the first mismatch."""
        with self._lock:
            entry = self._get(log_id)
            with self._db_errors(entry):
                self._verify_all(entry)
            return TreeHead(entry.size, entry.root)

    def _verify_all(self, entry: _Log) -> None:
        conn, key, n = self._conn, entry.key, entry.size
        sha = hashlib.sha256
        chunk = 1 << _VERIFY_CHUNK_LEVEL
        edge: list[tuple[int, bytes]] = []
        for pos in range(0, n, chunk):
            want = min(chunk, n - pos)
            # Indices are a primary key, so `want` rows in [pos, pos + want) are all of them.
            rows = conn.execute(
                "SELECT hash, leaf FROM leaves WHERE log = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (key, pos, pos + want),
            ).fetchall()
            if len(rows) != want:
                present = {
                    r[0]
                    for r in conn.execute(
                        "SELECT idx FROM leaves WHERE log = ? AND idx >= ? AND idx < ?",
                        (key, pos, pos + want),
                    )
                }
                missing = next(i for i in range(pos, pos + want) if i not in present)
                raise self._mark_corrupt(entry, f"leaf {missing} is missing", index=missing)
            try:
                level_hashes = [sha(b"\x00" + r[1]).digest() for r in rows]
            except TypeError:  # a leaf stored as something other than a blob
                level_hashes = [
                    sha(b"\x00" + r[1]).digest() if isinstance(r[1], bytes) else b"" for r in rows
                ]
            if level_hashes != [r[0] for r in rows]:
                bad = next(i for i, r in enumerate(rows) if r[0] != level_hashes[i])
                raise self._mark_corrupt(
                    entry, f"leaf {pos + bad} does not match its stored hash", index=pos + bad
                )
            del rows
            leftovers: list[tuple[int, bytes]] = []
            level = 0
            while True:
                if len(level_hashes) % 2:
                    leftovers.append((level, level_hashes[-1]))
                if len(level_hashes) < 2:
                    break
                pairs = zip(level_hashes[::2], level_hashes[1::2], strict=False)
                parents = [sha(b"\x01" + a + b).digest() for a, b in pairs]
                level += 1
                if level % NODE_STRIDE == 0:
                    first = pos >> level
                    stored = [
                        r[0]
                        for r in conn.execute(
                            "SELECT hash FROM nodes WHERE log = ? AND level = ? AND idx >= ? "
                            "AND idx < ? ORDER BY idx",
                            (key, level, first, first + len(parents)),
                        )
                    ]
                    if stored != parents:
                        self._raise_node_mismatch(entry, level, first, parents, stored)
                level_hashes = parents
            end = pos + want
            for lvl, h in reversed(leftovers):
                while edge and edge[-1][0] == lvl:
                    _, left = edge.pop()
                    h = node_hash(left, h)
                    lvl += 1
                    if lvl % NODE_STRIDE:
                        continue
                    idx = (end >> lvl) - 1
                    row = conn.execute(
                        "SELECT hash FROM nodes WHERE log = ? AND level = ? AND idx = ?",
                        (key, lvl, idx),
                    ).fetchone()
                    if row is None or row[0] != h:
                        self._raise_node_mismatch(
                            entry, lvl, idx, [h], [] if row is None else [row[0]]
                        )
                edge.append((lvl, h))
        beyond = conn.execute(
            "SELECT idx FROM leaves WHERE log = ? AND idx >= ? LIMIT 1", (key, n)
        ).fetchone()
        if beyond is not None:
            raise self._mark_corrupt(
                entry, f"leaf {beyond[0]} is stored beyond the head size {n}", index=beyond[0]
            )
        root = fold_subtrees([h for _, h in edge])
        if root != entry.root:
            raise self._mark_corrupt(
                entry,
                f"root recomputed from the leaves is {root.hex()}, stored head "
                f"(size {n}) has {entry.root.hex()}",
            )

    def _raise_node_mismatch(
        self, entry: _Log, level: int, first: int, computed: list[bytes], stored: list[bytes]
    ) -> None:
        for i, h in enumerate(computed):
            if i >= len(stored):
                what = "is missing"
            elif stored[i] != h:
                what = "does not match the leaves"
            else:
                continue
            idx = first + i
            raise self._mark_corrupt(
                entry,
                f"stored hash of subtree level {level} index {idx} {what}",
                index=idx << level,
            )
        raise self._mark_corrupt(entry, f"unexpected extra subtree hashes at level {level}")

    # --- lifecycle ---------------------------------------------------------------------

    def snapshot(self, dest: Path) -> None:
        """A consistent copy of the whole store at this moment (a controller handover
        ships it); appends wait for it, so no log is caught half-written."""
        with self._lock:
            self._cursor.execute("VACUUM INTO ?", (str(dest),))

    def close(self) -> None:
        """Close the database (idempotent). Nothing is buffered: appends are durable when
        they return."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutOfRange(f"{what} must be an integer, got {type(value).__name__}")
