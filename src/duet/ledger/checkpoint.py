"""C2SP tlog checkpoints (https://c2sp.org/tlog-checkpoint) in signed notes.

A checkpoint is the note text ``<origin>\\n<size>\\n<base64 root>\\n[extension lines]``.
Clients remember the last checkpoint they saw and demand a consistency proof to every
newer one (docs/invariants.md, invariant 6), so a checkpoint must have exactly one textual form:
parsing rejects leading zeros, non-canonical base64, empty lines and a wrong origin
rather than normalising them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from duet.ledger.errors import CheckpointError
from duet.ledger.merkle import HASH_SIZE
from duet.ledger.note import Signer, Verifier, open_note, sign_note

MAX_TREE_SIZE = (1 << 63) - 1
"""Largest tree size accepted: what SQLite (and most other implementations) can count."""

_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


def _check_line(value: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{what} must be a non-empty string")
    for ch in value:
        if ch < " " or ch == "\x7f":
            raise CheckpointError(f"{what} contains a control character or newline")


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: which log (origin), how many leaves, and their Merkle root."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("checkpoint size must be an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is out of range")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions must be a tuple of strings")
        for i, line in enumerate(self.extensions):
            _check_line(line, f"checkpoint extension line {i + 1}")

    def body(self) -> str:
        """The note text of this checkpoint, ending with a newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, body: str, expected_origin: str | None = None) -> Checkpoint:
        """Parse a checkpoint note text; ``expected_origin`` (when given) must match."""
        if not isinstance(body, str):
            raise CheckpointError("checkpoint must be a string")
        if not body.endswith("\n"):
            raise CheckpointError("checkpoint does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(
                f"checkpoint has {len(lines)} lines, needs origin, size and root hash"
            )
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise CheckpointError("checkpoint origin line is empty")
        if expected_origin is not None and origin != expected_origin:
            raise CheckpointError(f"checkpoint origin is {origin!r}, expected {expected_origin!r}")
        if not _SIZE.fullmatch(size_text) or int(size_text) > MAX_TREE_SIZE:
            raise CheckpointError(
                f"checkpoint size {size_text[:40]!r} is not a decimal number without leading zeros"
            )
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CheckpointError("checkpoint root hash is not valid base64") from exc
        if base64.b64encode(root).decode("ascii") != root_text:
            raise CheckpointError("checkpoint root hash is not canonical base64")
        if len(root) != HASH_SIZE:
            raise CheckpointError(
                f"checkpoint root hash is {len(root)} bytes, expected {HASH_SIZE}"
            )
        for i, line in enumerate(extensions):
            if not line:
                raise CheckpointError(f"checkpoint extension line {i + 1} is empty")
        return cls(origin, int(size_text), root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: Signer) -> str:
    """The checkpoint as a signed note, signed by ``signer``."""
    return sign_note(cp.body(), [signer])


def open_checkpoint(
    note: str, verifier: Verifier, expected_origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note with ``verifier`` and parse its body.

    Raises :class:`~duet.ledger.errors.NoteError` if the note is malformed or not signed
    by ``verifier``, :class:`CheckpointError` if the body is not a valid checkpoint or
    names another origin. Other signatures (witness cosignatures) are ignored here; use
    :func:`duet.ledger.note.open_note` to see them.
    """
    opened = open_note(note, [verifier])
    return Checkpoint.parse(opened.text, expected_origin)
