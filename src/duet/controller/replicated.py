"""The replicated store: the logs, the nonce table and the encrypted state in etcd.

`duet controller serve --store etcd://HOST:PORT` keeps everything the controller must
not lose in etcd, so that it survives the loss of the controller's machine, and so that
exactly one controller instance (the primary) can write. The store is *untrusted*: the
host (or whoever runs etcd) can restore an old snapshot, rewrite keys or serve another
history. So:

* **One primary, fenced.** The primary holds an etcd lease and the key `primary`
  attached to it. Every write is one etcd transaction whose first comparison is that the
  `primary` key still has the create revision this instance made it with (the fencing
  token). When the lease expires (the instance froze, lost its network, or died) etcd
  deletes the key; a successor creates it anew with a new revision, and every later
  write of the old primary fails: it raises :class:`NotPrimary`, stops appending and
  serving, and says why. Fencing never depends on the deposed instance noticing.
* **Nothing read back is believed without a signature.** Each log's head in etcd is a
  checkpoint signed by the controller's key; the leaves are checked by recomputing the
  Merkle tree and comparing it with that signed head. The controller also keeps the
  checkpoint it last wrote for every log in its own sealed local state (the local
  replica, same transaction as the leaves) and refuses a store whose head is older than
  it, or not consistent with it (a fork): :class:`StoreRolledBack`, and nothing is
  appended on top. While running, each append compares the heads in etcd with the
  exact values this primary last wrote, so a rollback underneath a running controller
  is caught at its next append. Witnesses' cosigned sizes are the check that still
  holds when the local state is lost too: `witness_floor` is the hook (a promoted
  standby wires it: controller/promotion.py), and `known_heads` the newest checkpoint a
  standby verified while it followed the primary.
* **Reads are served from a verified local replica** in the embedded store's SQLite
  format (`ledger/store.py`), so every proof, tile and leaf goes through the same
  checks as with the embedded store. A new instance (another host, a fresh data dir)
  builds its replica from etcd and verifies it on start.

Write order: etcd first, then the local replica (inside the replica's transaction), so
the replica is never ahead of etcd. A replica behind etcd is caught up on the next start.

Layout under `duet/<controller-id>/`: `primary`, `log/<hex log id>/head` (the signed
checkpoint note), `log/<hex log id>/chunk/<first index, 16 hex digits>` (the leaves of one
append, each as a 4-byte big-endian length and the bytes), `nonce/<nonce>` (`{"iat",
"seq"}`), `state/<name>` (AES-GCM under the state key; `state_key_of`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from duet.controller.etcd import (
    EtcdClient,
    EtcdUnavailable,
    KeyValue,
    compare_absent,
    compare_create,
    compare_value,
    delete,
    put,
)
from duet.controller.state import CvmRecord, StateStore
from duet.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from duet.ledger.errors import LedgerError, LogExists, StorageError
from duet.ledger.merkle import EMPTY_ROOT
from duet.ledger.note import Signer, Verifier
from duet.ledger.store import MAX_LOG_ID, LedgerStore, TreeHead, _Log, _Plan

log = logging.getLogger("duet.controller.store")

#: Seconds the primary's lease lives without a keep-alive.
DEFAULT_LEASE_TTL = 10
#: Stale nonces dropped from etcd per append (the rest go with later appends).
_PRUNE_PER_TXN = 32


class NotPrimary(LedgerError):
    """This instance is not (or no longer) the primary: it appends and serves nothing."""

    code = "not_primary"


class StoreRolledBack(LedgerError):
    """The store serves an older prefix or a fork of a log this controller signed."""

    code = "rollback_detected"


# --- signed heads ------------------------------------------------------------------------


class HeadNotary:
    """Signs and checks the heads kept in etcd: a checkpoint of log `L` has origin
    `duet/<controller-id>/L`, exactly the checkpoint users get for that log."""

    def __init__(self, signer: Signer, verifier: Verifier, controller_id: str) -> None:
        self._signer, self._verifier, self._prefix = signer, verifier, f"duet/{controller_id}/"

    def sign(self, log_id: str, size: int, root: bytes) -> bytes:
        return sign_checkpoint(Checkpoint(origin=self._prefix + log_id, size=size, root_hash=root),
                               self._signer).encode()

    def open(self, log_id: str, note: bytes) -> TreeHead:
        """The head a stored note signs; LedgerError if it is not ours or not for this log."""
        try:
            text = note.decode("utf-8")
        except UnicodeDecodeError:
            raise StoreRolledBack(f"the store's head of log {log_id!r} is not a checkpoint note") from None
        cp = open_checkpoint(text, self._verifier, expected_origin=self._prefix + log_id)
        return TreeHead(cp.size, cp.root_hash)


# --- the primary's lease -----------------------------------------------------------------


class Primary:
    """The lease that makes this instance the only writer, and its keep-alive."""

    def __init__(self, etcd: EtcdClient, prefix: bytes, *, ttl: int = DEFAULT_LEASE_TTL,
                 instance: str | None = None) -> None:
        self._etcd, self._key, self.ttl = etcd, prefix + b"primary", ttl
        self.instance = instance or secrets.token_hex(8)
        self.lease = 0
        #: The fencing token: the create revision of our `primary` key.
        self.token = 0
        self._deposed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Called once, with the reason, when this instance learns it was deposed.
        self.on_deposed: Callable[[str], None] | None = None

    def acquire(self, wait: float) -> None:
        """Take the `primary` key with a fresh lease, waiting up to `wait` seconds for a
        previous primary's lease to expire."""
        deadline = time.monotonic() + wait
        self.lease = self._etcd.lease_grant(self.ttl)
        body = json.dumps({"instance": self.instance, "pid": os.getpid()}).encode()
        while True:
            ok, revision = self._etcd.txn([compare_absent(self._key)], [put(self._key, body, self.lease)])
            if ok:
                self.token = revision
                break
            if time.monotonic() >= deadline:
                holder = self._etcd.get(self._key)
                who = json.loads(holder.value).get("instance", "?") if holder is not None else "?"
                self._etcd.lease_revoke(self.lease)
                raise NotPrimary(f"another controller instance ({who}) holds the primary lease in etcd: this one "
                                 "appends nothing (every write is fenced by that lease)")
            # A live primary keeps its lease; a dead one's expires within the TTL.
            self._etcd.lease_keepalive(self.lease)
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._keepalive, name="duet-lease", daemon=True)
        self._thread.start()
        log.info("primary in etcd %s (instance %s, lease TTL %ss, fencing token %d)",
                 self._etcd.endpoint, self.instance, self.ttl, self.token)

    def _keepalive(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 3):
            try:
                left = self._etcd.lease_keepalive(self.lease)
            except EtcdUnavailable:
                if time.monotonic() - last_ok > self.ttl:
                    self.depose(f"no contact with etcd for more than the lease TTL ({self.ttl}s)")
                    return
                continue
            if left <= 0:
                self.depose("the primary lease expired in etcd (another instance may have taken over)")
                return
            last_ok = time.monotonic()

    def depose(self, why: str) -> None:
        if self._deposed is None:
            self._deposed = why
            log.error("this controller instance is no longer primary: %s; it appends and serves nothing", why)
            if self.on_deposed is not None:
                self.on_deposed(why)
        self._stop.set()

    def check(self) -> None:
        if self._deposed is not None:
            raise NotPrimary(f"this controller instance is no longer primary: {self._deposed}")

    def compares(self) -> list[dict[str, object]]:
        """The fencing condition every write carries."""
        return [compare_create(self._key, self.token)]

    def lost_because(self) -> str | None:
        """After a failed write: why we are not primary any more (None: we still are)."""
        held = self._etcd.get(self._key)
        if held is None:
            return "the primary key is gone from etcd (the lease expired)"
        if held.create_revision != self.token:
            try:
                who = json.loads(held.value).get("instance", "?")
            except ValueError:
                who = "?"
            return f"another instance ({who}) took the primary lease"
        return None

    def release(self) -> None:
        self._stop.set()
        if self._deposed is None and self.lease:
            try:
                self._etcd.lease_revoke(self.lease)
            except EtcdUnavailable:
                pass


# --- the replicated ledger ---------------------------------------------------------------


def _encode_chunk(leaves: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(leaf)) + leaf for leaf in leaves)


def _decode_chunk(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated length")
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise ValueError("truncated leaf")
        out.append(data[pos:pos + n])
        pos += n
    return out


class ReplicatedLedger(LedgerStore):
    """The log store backed by etcd, with a verified local replica at `path`.

    `witness_floor(log_id)` (optional) returns the largest head the witnesses cosigned
    for a log: a store whose head is older, or not consistent with it, is refused like
    one older than the sealed checkpoint (the check that still holds when the local
    state is lost with the machine)."""

    def __init__(
        self,
        path: str | Path,
        *,
        etcd: EtcdClient,
        prefix: bytes,
        primary: Primary,
        notary: HeadNotary,
        witness_floor: Callable[[str], TreeHead | None] | None = None,
        known_heads: Callable[[str], TreeHead | None] | None = None,
    ) -> None:
        self._etcd, self._prefix, self._primary, self._notary = etcd, prefix, primary, notary
        self._witness_floor = witness_floor
        #: A promoted standby's floor: the newest checkpoint it verified while it followed
        #: the primary (controller/standby.py), for a replica that starts empty.
        self._known_heads = known_heads
        #: The exact head value this instance last wrote or verified, per log.
        self._heads: dict[str, bytes] = {}
        self._refused: LedgerError | None = None
        self._syncing = True
        self._remote_written = False
        super().__init__(path)
        try:
            with self._lock:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS store_checkpoints (log TEXT PRIMARY KEY, note BLOB NOT NULL)")
                self._sync()
        except BaseException:
            self.close()
            raise
        finally:
            self._syncing = False

    # keys
    def _log_key(self, log_id: str) -> bytes:
        return self._prefix + b"log/" + log_id.encode().hex().encode() + b"/"

    def _head_key(self, log_id: str) -> bytes:
        return self._log_key(log_id) + b"head"

    def _chunk_key(self, log_id: str, first: int) -> bytes:
        return self._log_key(log_id) + b"chunk/" + f"{first:016x}".encode()

    def _nonce_key(self, nonce: str) -> bytes:
        return self._prefix + b"nonce/" + nonce.encode()

    # --- start: build or catch up the local replica, verifying everything -------------

    def _sync(self) -> None:
        sealed = {name: bytes(note) for name, note in
                  self._conn.execute("SELECT log, note FROM store_checkpoints").fetchall()}
        heads: dict[str, KeyValue] = {}
        chunks: dict[str, list[tuple[int, bytes]]] = {}
        for kv in self._etcd.get_prefix(self._prefix + b"log/", page=64):
            rest = kv.key[len(self._prefix) + 4:]
            hexid, _, tail = rest.partition(b"/")
            try:
                log_id = bytes.fromhex(hexid.decode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise self._refuse(f"the store holds a key that is no log of ours: {kv.key[:80]!r}") from None
            if tail == b"head":
                heads[log_id] = kv
            elif tail.startswith(b"chunk/"):
                try:
                    first = int(tail[6:], 16)
                except ValueError:
                    raise self._refuse(f"the store holds a malformed chunk key for log {log_id!r}") from None
                chunks.setdefault(log_id, []).append((first, kv.value))
        for name in sorted(set(self._logs) | set(sealed)):
            if name not in heads:
                written = self._logs[name].size if name in self._logs else "?"
                raise self._refuse(f"the store has no log {name!r}, which this controller wrote ({written} entries)")
        for name, kv in sorted(heads.items()):
            self._sync_log(name, kv.value, sealed.get(name), sorted(chunks.get(name, [])))
        for kv in self._etcd.get_prefix(self._prefix + b"nonce/"):
            try:
                meta = json.loads(kv.value)
                row = (kv.key[len(self._prefix) + 6:].decode(), int(meta["iat"]), int(meta["seq"]))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                log.warning("ignoring a malformed nonce record in the store")
                continue
            self._conn.execute("INSERT OR IGNORE INTO nonces (nonce, iat, seq) VALUES (?, ?, ?)", row)

    def _sync_log(self, name: str, note: bytes, sealed: bytes | None,
                  chunks: list[tuple[int, bytes]]) -> None:
        try:
            head = self._notary.open(name, note)
        except LedgerError as exc:
            raise self._refuse(f"the store's head of log {name!r} is not signed by this controller: {exc}") from None
        if sealed is not None and head.size < self._notary.open(name, sealed).size:
            raise self._refuse(f"the store serves log {name!r} at size {head.size}, older than the checkpoint "
                               f"this controller last wrote (sealed locally, size "
                               f"{self._notary.open(name, sealed).size}): an older prefix")
        if name not in self._logs:
            LedgerStore.create_log(self, name)
        entry = self._logs[name]
        if entry.size > head.size:
            raise self._refuse(f"the store serves log {name!r} at size {head.size}, but this controller's "
                               f"local replica holds {entry.size} entries: an older prefix")
        if entry.size < head.size:
            leaves: list[bytes] = []
            for first, data in chunks:
                try:
                    got = _decode_chunk(data)
                except ValueError as exc:
                    raise self._refuse(f"the store holds a malformed chunk of log {name!r}: {exc}") from None
                if first + len(got) <= entry.size:
                    continue
                if first > entry.size + len(leaves):
                    break
                leaves.extend(got[entry.size + len(leaves) - first:])
            leaves = leaves[:head.size - entry.size]
            plan = self._plan(self._get(name), leaves)
            if plan.size != head.size or plan.root != head.root_hash:
                raise self._refuse(f"the leaves the store holds for log {name!r} do not lead to the head this "
                                   f"controller signed (size {head.size}): a fork, or leaves removed")
            self._commit((plan,))
        elif entry.root != head.root_hash:
            raise self._refuse(f"the store's head of log {name!r} (size {head.size}) disagrees with this "
                               f"controller's local replica: a fork")
        # The sealed checkpoint (and the witnesses') must be a prefix of what is now held.
        floors_heads = [("the checkpoint this controller last wrote (sealed locally)",
                         self._notary.open(name, sealed) if sealed is not None else None)]
        if self._known_heads is not None:
            floors_heads.append(("the newest checkpoint this instance verified as a standby",
                                 self._known_heads(name)))
        if self._witness_floor is not None:
            floors_heads.append(("the size the witnesses cosigned", self._witness_floor(name)))
        for what, floor_head in floors_heads:
            if floor_head is None:
                continue
            if floor_head.size > head.size:
                raise self._refuse(f"the store serves log {name!r} at size {head.size}, older than {what} "
                                   f"(size {floor_head.size}): an older prefix")
            if self.tree_head(name, floor_head.size).root_hash != floor_head.root_hash:
                raise self._refuse(f"the store's log {name!r} is not consistent with {what} "
                                   f"(size {floor_head.size}): a fork")
        self._heads[name] = note
        self._conn.execute("INSERT OR REPLACE INTO store_checkpoints (log, note) VALUES (?, ?)", (name, note))

    def _refuse(self, why: str) -> LedgerError:
        text = f"refusing the replicated store: {why}; nothing is appended on top of it"
        if self._refused is None:
            log.error("%s", text)
            self._refused = StoreRolledBack(text)
        return self._refused

    # --- the guard on every call ----------------------------------------------------------

    def _usable(self) -> None:
        if self._refused is not None:
            raise type(self._refused)(self._refused.message)
        if not self._syncing:
            self._primary.check()

    def _get(self, log_id: str) -> _Log:
        self._usable()
        return super()._get(log_id)

    # --- writes: etcd first, fenced ------------------------------------------------------

    def create_log(self, log_id: str) -> None:
        if not isinstance(log_id, str) or not 0 < len(log_id) <= MAX_LOG_ID or \
                any(ch < " " or ch == "\x7f" for ch in log_id):
            raise LedgerError(f"log id must be a string of 1 to {MAX_LOG_ID} characters, without control characters")
        with self._lock:
            self._usable()
            if log_id in self._logs:
                raise LogExists(f"log {log_id!r} already exists")
            note = self._notary.sign(log_id, 0, EMPTY_ROOT)
            head = self._head_key(log_id)
            try:
                ok, _ = self._etcd.txn([*self._primary.compares(), compare_absent(head)], [put(head, note)])
            except EtcdUnavailable:
                if not self._landed({log_id: note}):
                    raise
                ok = True
            if not ok:
                # An earlier attempt whose answer was lost may have created it: the empty
                # head signed by this controller is the same note every time (Ed25519).
                kv = self._etcd.get(head)
                if kv is None or kv.value != note or self._primary.lost_because() is not None:
                    raise self._diagnose([log_id], creating=True)
            super().create_log(log_id)
            self._heads[log_id] = note
            self._conn.execute("INSERT OR REPLACE INTO store_checkpoints (log, note) VALUES (?, ?)", (log_id, note))

    def _before_write(self, cur: sqlite3.Cursor, plans: Sequence[_Plan], nonces: Sequence[tuple[str, int]],
                      forget: tuple[int, int] | None) -> None:
        if self._syncing:
            return
        self._usable()
        compares = self._primary.compares()
        ops: list[dict[str, object]] = []
        new_heads: dict[str, bytes] = {}
        for p in plans:
            if not p.leaf_rows:
                continue
            name = p.entry.name
            compares.append(compare_value(self._head_key(name), self._heads[name]))
            note = self._notary.sign(name, p.size, p.root)
            ops.append(put(self._chunk_key(name, p.entry.size), _encode_chunk(row[3] for row in p.leaf_rows)))
            ops.append(put(self._head_key(name), note))
            new_heads[name] = note
            cur.execute("INSERT OR REPLACE INTO store_checkpoints (log, note) VALUES (?, ?)", (name, note))
        if nonces or forget is not None:
            seq = sum(e.size for e in self._logs.values()) + sum(p.size - p.entry.size for p in plans)
            if forget is not None:
                stale = cur.execute("SELECT nonce FROM nonces WHERE seq < ? AND iat < ? LIMIT ?",
                                    (seq - forget[0], forget[1], _PRUNE_PER_TXN)).fetchall()
                ops.extend(delete(self._nonce_key(row[0])) for row in stale)
            for nonce, iat in nonces:
                compares.append(compare_absent(self._nonce_key(nonce)))
                ops.append(put(self._nonce_key(nonce), json.dumps({"iat": iat, "seq": seq}).encode()))
        try:
            ok, _ = self._etcd.txn(compares, ops)
        except EtcdUnavailable:
            # The answer was lost: the append may or may not be in etcd. Find out before
            # anything else is written, so a lost answer is never mistaken for a fork.
            if not self._landed(new_heads):
                raise
            ok = True
        if not ok:
            raise self._diagnose(list(new_heads))
        self._heads.update(new_heads)
        self._remote_written = True

    def _commit(self, plans: Sequence[_Plan], nonces: Sequence[tuple[str, int]] = (),
                forget: tuple[int, int] | None = None) -> None:
        self._remote_written = False
        try:
            super()._commit(plans, nonces, forget)
        except BaseException as exc:
            if self._remote_written:
                # etcd took the append, the local replica did not: it is behind the store
                # until the next start catches it up, so serve nothing until then.
                raise self._refuse(f"the local replica fell behind the store ({exc}); restart to catch up") from exc
            raise

    def _landed(self, new_heads: dict[str, bytes]) -> bool:
        """After a transaction whose answer was lost: True if it was applied, False if it
        was not (nothing written). If etcd stays silent, nothing more is written until a
        restart re-reads the store."""
        if not new_heads:
            return False
        name, note = next(iter(new_heads.items()))
        for attempt in range(5):
            try:
                kv = self._etcd.get(self._head_key(name))
            except EtcdUnavailable:
                time.sleep(0.2 * (attempt + 1))
                continue
            return kv is not None and kv.value == note
        why = "etcd did not answer an append, and whether it was written is unknown"
        self._refused = EtcdUnavailable(f"{why}; nothing more is written until a restart re-reads the store")
        log.error("%s; refusing to write until a restart", why)
        raise self._refused

    def _diagnose(self, log_ids: Sequence[str], *, creating: bool = False) -> LedgerError:
        """A write's comparison failed: say which, and stop for good unless it was only a
        duplicate nonce."""
        lost = self._primary.lost_because()
        if lost is not None:
            self._primary.depose(lost)
            return NotPrimary(f"this controller instance is no longer primary: {lost}; nothing was appended")
        for name in log_ids:
            kv = self._etcd.get(self._head_key(name))
            if creating:
                if kv is not None:
                    return self._refuse(f"the store already holds a log {name!r} this controller never created")
                continue
            expected = self._heads[name]
            if kv is None:
                return self._refuse(f"the store lost log {name!r}, which this controller wrote")
            if kv.value != expected:
                mine = self._notary.open(name, expected)
                try:
                    theirs = self._notary.open(name, kv.value)
                except LedgerError:
                    return self._refuse(f"the store's head of log {name!r} is not signed by this controller")
                if theirs.size < mine.size:
                    return self._refuse(f"the store went back to size {theirs.size} of log {name!r}, older than "
                                        f"the checkpoint this controller last wrote (size {mine.size}): "
                                        f"an older prefix")
                return self._refuse(f"the store's head of log {name!r} changed under this primary "
                                    f"(size {theirs.size}, this controller wrote {mine.size}): a fork")
        return StorageError("append refused by the store: an intent nonce in it is already remembered")

    def close(self) -> None:
        """Close the replica and give up the lease (a successor need not wait for it)."""
        with self._lock:
            super().close()
        self._primary.release()


# --- the encrypted state -----------------------------------------------------------------


_STATE_KEY_META = "store_state_key"


#: Meta records where the store's copy replaces the local one: the witness cosignatures
#: the primary collected last (each is verified again before it is served: witnessing.py).
_STORE_WINS = frozenset({"witness_cosignatures"})


def state_key_of(state: StateStore) -> bytes:
    """The key the state is encrypted under in etcd: a random key kept in the local state
    under K (so etcd holds ciphertext only, and the state file holds the key only under K).
    It reaches a standby with K, inside the attested exchange (controller/standby.py), so
    every instance that may become primary opens the records, and nobody else."""
    key = state.get_secret(_STATE_KEY_META)  # under K, like every secret of the state file
    if key is None or len(key) != 32:
        key = AESGCM.generate_key(bit_length=256)
        state.set_secret(_STATE_KEY_META, key)
    return key


class ReplicatedState(StateStore):
    """The state file, written through to etcd (AES-GCM under the state key, fenced like
    the logs). What a fresh replica lacks is restored from etcd at start; everything the
    logs decide (mode, policy, owner keys) is then re-derived from the verified logs, so
    an old state record served by etcd changes nothing."""

    _etcd: EtcdClient | None = None
    _stored: set[str]

    def attach(self, etcd: EtcdClient, prefix: bytes, primary: Primary, key: bytes) -> None:
        self._etcd, self._sprefix, self._primary = etcd, prefix + b"state/", primary
        self._aead = AESGCM(key)
        restored = 0
        known_cvms = {rec.id for rec in self.cvms()}
        for kv in etcd.get_prefix(self._sprefix):
            name = kv.key[len(self._sprefix):].decode(errors="replace")
            try:
                plain = self._aead.decrypt(kv.value[:12], kv.value[12:], kv.key)
            except (InvalidTag, ValueError):
                log.warning("state record %s in the store is not encrypted under this controller's state key; "
                            "ignored", name)
                continue
            if name.startswith("cvm/") and name[4:] not in known_cvms:
                doc = json.loads(plain)
                StateStore.put_cvm(self, CvmRecord.from_json(doc["record"]), bytes.fromhex(doc["client_key"]))
                restored += 1
            elif name.startswith("meta/") and (StateStore.get_meta(self, name[5:]) is None
                                               or name[5:] in _STORE_WINS):
                StateStore.set_meta(self, name[5:], plain)
                restored += 1
            elif name == "owner_keys" and not StateStore.owner_keys(self):
                StateStore.set_owner_keys(self, json.loads(plain))
                restored += 1
        if restored:
            log.warning("restored %d state records from the replicated store", restored)
        self._stored = {kv.key[len(self._sprefix):].decode(errors="replace")
                        for kv in etcd.get_prefix(self._sprefix, page=512)}

    def publish_missing(self) -> int:
        """Write to etcd what the local state holds and etcd lacks (the controller key made
        at first start, before the store was attached; everything on a first start with
        `--store`). Called only once the logs verified, so nothing is written to a store
        that is being refused."""
        with self._lock:
            meta = self._db.execute("SELECT k, v FROM meta").fetchall()
        pushed = 0
        for k, v in meta:
            if k != _STATE_KEY_META and f"meta/{k}" not in self._stored:
                self._push(f"meta/{k}", bytes(v))
                pushed += 1
        owners = StateStore.owner_keys(self)
        if owners and "owner_keys" not in self._stored:
            self._push("owner_keys", json.dumps(owners, sort_keys=True).encode())
            pushed += 1
        for rec in self.cvms():
            if f"cvm/{rec.id}" not in self._stored:
                self.put_cvm(rec)
                pushed += 1
        return pushed

    def _push(self, name: str, plain: bytes) -> None:
        if self._etcd is None:
            return
        self._primary.check()
        key = self._sprefix + name.encode()
        nonce = secrets.token_bytes(12)
        ok, _ = self._etcd.txn(self._primary.compares(), [put(key, nonce + self._aead.encrypt(nonce, plain, key))])
        if not ok:
            lost = self._primary.lost_because() or "the fencing comparison failed"
            self._primary.depose(lost)
            raise NotPrimary(f"this controller instance is no longer primary: {lost}; the state was not written")
        self._stored.add(name)

    def set_meta(self, key: str, value: bytes) -> None:
        if key != _STATE_KEY_META:
            self._push(f"meta/{key}", value)
        super().set_meta(key, value)

    def delete_meta(self, key: str) -> None:
        """Gone from etcd too (fenced): a mark such as `rotation_pending` left there would
        come back into a replica that lacks it, and act again."""
        if self._etcd is not None and f"meta/{key}" in self._stored:
            self._primary.check()
            ok, _ = self._etcd.txn(self._primary.compares(), [delete(self._sprefix + f"meta/{key}".encode())])
            if not ok:
                lost = self._primary.lost_because() or "the fencing comparison failed"
                self._primary.depose(lost)
                raise NotPrimary(f"this controller instance is no longer primary: {lost}; the state was not written")
            self._stored.discard(f"meta/{key}")
        super().delete_meta(key)

    def set_owner_keys(self, keys: dict[str, str]) -> None:
        self._push("owner_keys", json.dumps(keys, sort_keys=True).encode())
        super().set_owner_keys(keys)

    def set_client_key(self, cvm_id: str, client_key: bytes) -> None:
        """A rotated key reaches etcd before the local state: a standby promoted later
        must use the key the CVM now accepts, never the one it replaced."""
        if self._etcd is not None:
            rec = next((r for r in self.cvms() if r.id == cvm_id), None)
            if rec is not None:
                self._push(f"cvm/{cvm_id}", json.dumps({"record": rec.to_json(),
                                                        "client_key": client_key.hex()}).encode())
        super().set_client_key(cvm_id, client_key)

    def put_cvm(self, record: CvmRecord, client_key: bytes | None = None) -> None:
        if self._etcd is not None:
            secret = client_key if client_key is not None else self.client_key(record.id)
            self._push(f"cvm/{record.id}", json.dumps({"record": record.to_json(),
                                                        "client_key": secret.hex()}).encode())
        super().put_cvm(record, client_key)
