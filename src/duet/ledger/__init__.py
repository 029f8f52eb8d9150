"""The verifiable log: RFC 9162 Merkle trees and proofs, C2SP signed notes and
checkpoints, canonical entries, and the durable SQLite store.

Service users need only :mod:`~duet.ledger.merkle`, :mod:`~duet.ledger.note`,
:mod:`~duet.ledger.checkpoint` and :mod:`~duet.ledger.entries`; the controller adds
:mod:`~duet.ledger.store`. Nothing here imports the rest of duet.

The names below are imported on first use (PEP 562), so that importing one submodule
(say the store, in a recovery process) does not pay for the others (cryptography).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duet.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
    from duet.ledger.errors import (
        CheckpointError,
        EntryError,
        LedgerError,
        LogCorrupt,
        LogExists,
        NoteError,
        OutOfRange,
        ProofError,
        StorageError,
        UnknownLog,
    )
    from duet.ledger.note import (
        Note,
        NoteSignature,
        Signer,
        Verifier,
        open_note,
        sign_note,
        verifier_key_string,
    )
    from duet.ledger.store import LedgerStore, TreeHead

_EXPORTS = {
    "duet.ledger.checkpoint": ("Checkpoint", "open_checkpoint", "sign_checkpoint"),
    "duet.ledger.errors": (
        "CheckpointError",
        "EntryError",
        "LedgerError",
        "LogCorrupt",
        "LogExists",
        "NoteError",
        "OutOfRange",
        "ProofError",
        "StorageError",
        "UnknownLog",
    ),
    "duet.ledger.note": (
        "Note",
        "NoteSignature",
        "Signer",
        "Verifier",
        "open_note",
        "sign_note",
        "verifier_key_string",
    ),
    "duet.ledger.store": ("LedgerStore", "TreeHead"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EntryError",
    "LedgerError",
    "LedgerStore",
    "LogCorrupt",
    "LogExists",
    "Note",
    "NoteError",
    "NoteSignature",
    "OutOfRange",
    "ProofError",
    "Signer",
    "StorageError",
    "TreeHead",
    "UnknownLog",
    "Verifier",
    "open_checkpoint",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "verifier_key_string",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'duet.ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
