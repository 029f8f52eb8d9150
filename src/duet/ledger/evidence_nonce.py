"""The nonce of CVM evidence commits to the owner intent it answers.

A report is fresh only if its nonce was never used before, and a verifier that streams a
log cannot remember every nonce of a log that grows for ever. So the controller makes each
evidence nonce as the 8-byte big-endian index (in the CVM log) of the intent its attest
command runs under, followed by 24 random bytes. A command runs under the newest intent
(every verifier checks that), so evidence whose nonce names an older intent is old
evidence logged again, whatever nonces a verifier still remembers; only the evidence
under one intent has to be compared with each other (client/replay.py keeps those).
"""

from __future__ import annotations

import re
import secrets

NONCE_BYTES = 32
_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]{64}")


def make(intent_index: int | None) -> bytes:
    """A fresh nonce for evidence under the intent at `intent_index` (random without
    one: such an attest command is a violation every verifier reports anyway)."""
    if intent_index is None or not 0 <= intent_index < 1 << 63:
        return secrets.token_bytes(NONCE_BYTES)
    return intent_index.to_bytes(_PREFIX, "big") + secrets.token_bytes(NONCE_BYTES - _PREFIX)


def intent_of(nonce_hex: object) -> int | None:
    """The intent index a logged nonce (lower-case hex) commits to, or None if it is not
    one of these nonces."""
    if not isinstance(nonce_hex, str) or not _HEX.fullmatch(nonce_hex):
        return None
    return int(nonce_hex[:2 * _PREFIX], 16)


def problem(nonce_hex: object, intent_index: object) -> str | None:
    """Why evidence with this nonce, answering an attest command under `intent_index`,
    is not fresh evidence for that intent (None: it is)."""
    named = intent_of(nonce_hex)
    if named is None:
        return "evidence nonce does not name the intent it answers (32 bytes, the first 8 the intent's index)"
    if not isinstance(intent_index, int) or isinstance(intent_index, bool) or named != intent_index:
        return (f"evidence nonce names intent {named}, but its attest command runs under {intent_index}: "
                "old evidence logged again")
    return None
