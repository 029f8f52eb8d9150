"""The controller's durable state: identity, owner keys, CVM records.

Kept in its own SQLite file next to the ledger. The secrets stored here (the controller
key, each CVM's SSH client key) are encrypted under the state key K
(controller/statekey.py), which is itself sealed to the enclave. Under Gramine the data
dir is moreover the encrypted mount keyed to MRENCLAVE; under the simulated TEE it is a
plain file and the controller says SIMULATED about everything resting on it.

Like the ledger, this database uses WAL with `locking_mode=EXCLUSIVE` set first (so no
shared-memory index is ever made: Gramine's encrypted files cannot hold one) and
`synchronous=FULL`. Nonces are not kept here: see `replay.py`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from duet.controller.statekey import StateKey, client_key_label
from duet.ledger.entries import Mode

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS owner_keys (kid TEXT PRIMARY KEY, public_b64 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cvms (
  id TEXT PRIMARY KEY,
  record TEXT NOT NULL,
  client_key BLOB NOT NULL
);
"""


class Status(StrEnum):
    """Whether the controller can use a CVM (its mode is `duet.ledger.entries.Mode`)."""

    PROVISIONING = "provisioning"
    READY = "ready"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    LOST = "lost"
    DELETED = "deleted"


@dataclass
class CvmRecord:
    """What the controller remembers about one CVM (besides its log)."""

    id: str
    name: str
    provider: str
    tee: str
    created_at: str
    status: str = Status.PROVISIONING.value
    mode: str = Mode.PROVISIONING.value
    policy: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    port: int | None = None
    user: str | None = None
    instance_id: str | None = None
    host_key: str | None = None
    host_data: str | None = None
    reason: str | None = None
    epoch: int = 0
    #: What the provider declared it delivers for `tee` (attestation.cvm_kinds); None in
    #: records written before these fields existed (then `tee` is the evidence kind).
    evidence_kind: str | None = None
    instance_binding: str | None = None
    #: The CVM log's size when this record was last saved: start-up replays the log from
    #: here, so a record restored from an older state file is brought up to the log.
    log_size: int = 0

    @property
    def kind(self) -> str:
        """The evidence kind this CVM produces (never a label the owner typed)."""
        return self.evidence_kind if self.evidence_kind is not None else self.tee

    @property
    def binding(self) -> str:
        """The instance binding the provider declared (`none` when unknown: then users
        must accept the host-key binding alone, so nothing is assumed)."""
        return self.instance_binding or "none"

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CvmRecord:
        return cls(**json.loads(text))


#: Meta records that hold secrets (controller/providers_config.py): under K.
#: `store_state_key`: the key of the state records in etcd (controller/replicated.py).
SECRET_METAS = ("credentials_hpke_key", "credentials_mac_key", "store_state_key")
SECRET_META_PREFIX = "credentials:"  # noqa: S105 - a record name, not a secret


def is_secret_meta(key: str) -> bool:
    return key in SECRET_METAS or key.startswith(SECRET_META_PREFIX)


def secret_meta_label(key: str) -> str:
    return f"meta {key}"


class StateStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # EXCLUSIVE before the first WAL access: SQLite then never creates the
        # shared-memory index, which Gramine's encrypted files cannot hold.
        self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        #: K (controller/statekey.py): set before any secret is read or written.
        self.cipher: StateKey | None = None

    def _k(self) -> StateKey:
        if self.cipher is None:
            raise RuntimeError("the state key is not open yet")
        return self.cipher

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get_meta(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    def get_secret(self, key: str) -> bytes | None:
        """A secret meta record (provider credentials and the keys that guard them): under
        K, bound to its name, like the controller key; plaintext is refused."""
        raw = self.get_meta(key)
        return None if raw is None else self._k().decrypt(secret_meta_label(key), raw)

    def set_secret(self, key: str, value: bytes) -> None:
        if not is_secret_meta(key):
            raise ValueError(f"{key} is not a secret meta record")
        self.set_meta(key, self._k().encrypt(secret_meta_label(key), value))

    def delete_meta(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM meta WHERE k=?", (key,))

    def owner_keys(self) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT kid, public_b64 FROM owner_keys").fetchall()
        return {kid: pub for kid, pub in rows}

    def set_owner_keys(self, keys: dict[str, str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM owner_keys")
                self._db.executemany(
                    "INSERT INTO owner_keys (kid, public_b64) VALUES (?, ?)", keys.items()
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def put_cvm(self, record: CvmRecord, client_key: bytes | None = None) -> None:
        """Save a record and (when given) its SSH client key, encrypted under K."""
        if client_key is not None:
            client_key = self._k().encrypt(client_key_label(record.id), client_key)
        with self._lock:
            if client_key is None:
                self._db.execute(
                    "UPDATE cvms SET record=? WHERE id=?", (record.to_json(), record.id)
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO cvms (id, record, client_key) VALUES (?, ?, ?)",
                    (record.id, record.to_json(), client_key),
                )

    def cvms(self) -> list[CvmRecord]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM cvms ORDER BY rowid").fetchall()
        return [CvmRecord.from_json(r[0]) for r in rows]

    def client_key(self, cvm_id: str) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT client_key FROM cvms WHERE id=?", (cvm_id,)).fetchone()
        if row is None:
            raise KeyError(cvm_id)
        return self._k().decrypt(client_key_label(cvm_id), bytes(row[0]))

    def set_client_key(self, cvm_id: str, client_key: bytes) -> None:
        """Replace a CVM's SSH client key (a rotation), encrypted under K."""
        self.set_raw_client_key(cvm_id, self._k().encrypt(client_key_label(cvm_id), client_key))

    def metas(self) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT k, v FROM meta").fetchall()
        return [(str(k), bytes(v)) for k, v in rows]

    def raw_client_keys(self) -> list[tuple[str, bytes]]:
        """Each CVM's stored client key as it is at rest (for the upgrade to K)."""
        with self._lock:
            rows = self._db.execute("SELECT id, client_key FROM cvms ORDER BY rowid").fetchall()
        return [(str(i), bytes(b)) for i, b in rows]

    def set_raw_client_key(self, cvm_id: str, blob: bytes) -> None:
        with self._lock:
            self._db.execute("UPDATE cvms SET client_key=? WHERE id=?", (blob, cvm_id))

    def set_metas(self, meta: dict[str, bytes]) -> None:
        """Several meta values in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(meta.items()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rekey(self, new: StateKey, meta: dict[str, bytes]) -> None:
        """Replace K (controller/recovery.py): the controller key and every client key
        re-encrypted under `new`, with `meta` (the new seal, ...) in the same transaction,
        so the file is never half under one key and half under the other."""
        from duet.controller.statekey import CONTROLLER_KEY_LABEL, CONTROLLER_KEY_META

        old = self._k()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT v FROM meta WHERE k=?", (CONTROLLER_KEY_META,)).fetchone()
                if row is not None:
                    pem = old.decrypt(CONTROLLER_KEY_LABEL, bytes(row[0]))
                    self._db.execute("UPDATE meta SET v=? WHERE k=?",
                                     (new.encrypt(CONTROLLER_KEY_LABEL, pem), CONTROLLER_KEY_META))
                for cvm_id, blob in self._db.execute("SELECT id, client_key FROM cvms").fetchall():
                    label = client_key_label(str(cvm_id))
                    self._db.execute("UPDATE cvms SET client_key=? WHERE id=?",
                                     (new.encrypt(label, old.decrypt(label, bytes(blob))), cvm_id))
                for k, v in self._db.execute("SELECT k, v FROM meta").fetchall():
                    if is_secret_meta(str(k)):
                        label = secret_meta_label(str(k))
                        self._db.execute("UPDATE meta SET v=? WHERE k=?",
                                         (new.encrypt(label, old.decrypt(label, bytes(v))), k))
                self._db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", list(meta.items()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.cipher = new

    def snapshot(self, dest: Path) -> None:
        """A consistent copy of this database (a handover ships it; secrets stay under K)."""
        with self._lock:
            self._db.execute("VACUUM INTO ?", (str(dest),))
