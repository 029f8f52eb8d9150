"""Errors raised by :mod:`duet.ledger`.

One base class, :class:`LedgerError`, with a stable snake_case ``code`` per subclass, so
that the HTTP layer can map every ledger failure to a machine-readable error body in one
place (docs/errors.md) without parsing messages. Messages are for people: they name
the check that failed and, where it helps, the values involved.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by ``duet.ledger``."""

    code = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProofError(LedgerError):
    """A Merkle inclusion or consistency proof did not verify.

    ``check`` names the step that failed, so callers and tests can tell a malformed proof
    (``hash_length``, ``proof_length``) from a proof for another tree (``root_mismatch``)
    or a request that could never be proven (``index_out_of_range``).
    """

    code = "invalid_proof"

    def __init__(self, message: str, *, check: str = "invalid_proof") -> None:
        super().__init__(message)
        self.check = check


class NoteError(LedgerError):
    """A signed note is malformed or not signed by a trusted key."""

    code = "invalid_note"


class CheckpointError(LedgerError):
    """A checkpoint body is malformed or names another log."""

    code = "invalid_checkpoint"


class EntryError(LedgerError):
    """A log entry is malformed: missing or ill-typed field, or non-canonical bytes."""

    code = "invalid_entry"


class LogCorrupt(LedgerError):
    """Stored log data does not match its hashes; the log must not be served.

    ``log_id`` and ``index`` (when known) locate the damage.
    """

    code = "log_corrupt"

    def __init__(self, message: str, *, log_id: str | None = None, index: int | None = None):
        super().__init__(message)
        self.log_id = log_id
        self.index = index


class UnknownLog(LedgerError):
    """No log with this id exists in the store."""

    code = "unknown_log"


class LogExists(LedgerError):
    """``create_log`` was called for an id that already exists."""

    code = "log_exists"


class OutOfRange(LedgerError):
    """A leaf index, tree size or range lies outside the log (or is malformed)."""

    code = "out_of_range"


class StorageError(LedgerError):
    """The database could not be opened or written (locked by another process, I/O error)."""

    code = "storage_error"
