"""The log's side of C2SP tlog-witness: get a checkpoint cosigned.

A witness remembers only the size it last cosigned. The submitter sends `old <size>` with a
consistency proof from that size; when it guesses wrong, the witness answers 409 with its
size, and the submitter asks again from there (once: a witness whose size moves under it,
or lies, is reported, never chased). Every cosignature that comes back is verified against
the witness's own key before it is kept, so a witness (or anyone in between) cannot slip a
bad line into the checkpoint the log serves.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from duet.ledger.cosignature import CosignatureVerifier, verified_cosignatures
from duet.ledger.errors import LedgerError
from duet.ledger.note import parse_note

#: Consistency proof between two sizes of the log being witnessed.
ProofSource = Callable[[int, int], Sequence[bytes]]


class WitnessError(Exception):
    code = "witness_failed"

    def __init__(self, message: str, status: int | None = None, held: int | None = None) -> None:
        super().__init__(message)
        #: `held`: the size the witness says it holds (from a 409), when it said one.
        self.message, self.status, self.held = message, status, held


@dataclass(frozen=True)
class Cosigned:
    """A witness's verified cosignature lines and the timestamp they carry."""

    witness: str
    lines: str
    timestamp: int


def _body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def add_checkpoint(http: httpx.Client, url: str, witness: CosignatureVerifier, note: str, size: int,
                   proof: ProofSource, *, old: int) -> tuple[Cosigned, int]:
    """Submit `note` (a checkpoint of `size`) starting from `old`, the size we believe the
    witness holds; return its verified cosignature and the size it now holds."""
    for attempt in range(2):
        body = _body(old, proof(old, size) if 0 < old < size else [], note)
        try:
            resp = http.post(url.rstrip("/") + "/add-checkpoint", content=body)
        except httpx.HTTPError as exc:
            raise WitnessError(f"witness {witness.name} unreachable: {type(exc).__name__}") from None
        if resp.status_code == 409 and attempt == 0 and resp.headers.get("content-type") == "text/x.tlog.size":
            text = resp.text.strip()
            if not text.isdigit() or int(text) > size:
                raise WitnessError(f"witness {witness.name} holds size {text[:20]}, beyond this checkpoint "
                                   f"of size {size}: the log it saw is not this one", 409,
                                   int(text) if text.isdigit() else None)
            old = int(text)
            continue
        if resp.status_code != 200:
            text = resp.text.strip()
            held = int(text) if resp.status_code == 409 and text.isdigit() and len(text) < 20 else None
            raise WitnessError(f"witness {witness.name} refused: HTTP {resp.status_code} {resp.text[:200]}",
                               resp.status_code, held)
        return _verified(witness, note, resp.text), size
    raise WitnessError(f"witness {witness.name} changed its size while we submitted", 409)


def verified_response(witness: CosignatureVerifier, note: str, lines: str) -> Cosigned:
    """The cosignature in a witness's 200 answer `lines` to `note`, verified."""
    return _verified(witness, note, lines)


def _verified(witness: CosignatureVerifier, note: str, lines: str) -> Cosigned:
    try:
        text, _ = parse_note(note)
        cosigned = text + "\n" + lines
        seen = verified_cosignatures(cosigned, [witness])
        _, sigs = parse_note(cosigned)
    except LedgerError as exc:
        raise WitnessError(f"witness {witness.name} returned a bad cosignature: {exc}") from None
    if witness.name not in seen:
        raise WitnessError(f"witness {witness.name} returned no cosignature by its key")
    # Keep exactly the line that verified; anything else the witness sent is dropped.
    own = "".join(s.line() for s in sigs if (s.name, s.key_hash) == (witness.name, witness.key_hash))
    return Cosigned(witness.name, own, seen[witness.name])
