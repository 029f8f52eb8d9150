"""The verifiable log: RFC 9162 Merkle trees and proofs, C2SP signed notes and
checkpoints, canonical entries, and the durable SQLite store.

Service users need only :mod:`~duet.ledger.merkle`, :mod:`~duet.ledger.note`,
:mod:`~duet.ledger.checkpoint` and :mod:`~duet.ledger.entries`; the controller adds
:mod:`~duet.ledger.store`. Nothing here imports the rest of duet.
"""

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
