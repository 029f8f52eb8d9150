"""Intent nonces, remembered only while a replay of them could pass the other rules.

An intent nonce must never repeat (a logged intent replayed later would authorise its
operation twice). Remembering every nonce grows with the log, so the rule is split in
two, both checked by every verifier (the streaming replay, the whole-log audit and the
controller-log replay use this one class, so they judge alike):

* the logging window (`ledger.intent.logged_time_problem`): an intent's iat lies in
  [entry time - LOG_DELAY_S, entry time + IAT_WINDOW_S], which the controller enforces
  when it appends the intent;
* nonce uniqueness, among the intents whose iat is at least the newest intent entry time
  seen minus LOG_DELAY_S (and one second for rounding).

Entry times never go back (checked as `entry_times`), so an intent logged later has an
entry time of at least that newest time; with the same nonce and an iat older than the
cut-off, it fails the window. Digests older than the cut-off are therefore dropped: what
is kept is the intents of the last LOG_DELAY_S of log time, whatever the log's length.

Owner-key changes copied into a CVM log from the controller log are logged when the CVM is
next used, long after their iat: they are exempt from the window, and their nonces are
kept for ever (one per owner-key change, which the controller log keeps anyway).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

from duet.ledger.intent import LOG_DELAY_S, logged_time_problem

#: Prune when the remembered digests have doubled since the last prune (at least this many).
_PRUNE_MIN = 64
_REC = 24  # 16-byte digest, 8-byte iat


def digest(nonce: str) -> bytes:
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).digest()[:16]


class NonceWindow:
    def __init__(self) -> None:
        #: Digest -> the largest iat it was seen with.
        self.seen: dict[bytes, int] = {}
        #: Digests of owner-key changes copied from the controller log (never forgotten).
        self.copies: set[bytes] = set()
        #: The newest entry time (unix seconds) of an intent judged so far.
        self.newest: float | None = None
        self._next_prune = _PRUNE_MIN

    def check(self, i: int, nonce: str, iat: int, when: datetime) -> list[str]:
        """The problems of the intent logged at entry `i` at `when` (and remember it)."""
        t = when.timestamp()
        problem = logged_time_problem(iat, t)
        if problem is not None:
            return [f"entry {i}: {problem}"]
        self.newest = t if self.newest is None else max(self.newest, t)
        cutoff = self.newest - LOG_DELAY_S - 1
        d = digest(nonce)
        old = self.seen.get(d)
        out = [f"entry {i}: intent nonce reused (replay)"] if old is not None and old >= cutoff else []
        self.seen[d] = iat if old is None else max(old, iat)
        if len(self.seen) >= self._next_prune:
            # Only an optimisation: an entry older than the cut-off never counts (above).
            self.seen = {k: v for k, v in self.seen.items() if v >= cutoff}
            self._next_prune = max(_PRUNE_MIN, 2 * len(self.seen))
        return out

    def check_copy(self, i: int, nonce: str) -> list[str]:
        """An owner-key change copied from the controller log (no window: see above)."""
        d = digest(nonce)
        if d in self.copies:
            return [f"entry {i}: intent nonce reused (replay)"]
        self.copies.add(d)
        return []

    def dump(self) -> dict[str, Any]:
        recs = b"".join(k + v.to_bytes(8, "big") for k, v in sorted(self.seen.items()))
        copies = b"".join(sorted(self.copies))
        return {"seen": base64.b64encode(recs).decode(), "copies": base64.b64encode(copies).decode(),
                "newest": self.newest}

    @classmethod
    def load(cls, data: Any) -> NonceWindow:
        """From :meth:`dump` (a verification cache: ValueError on anything else)."""
        if not isinstance(data, dict) or set(data) != {"seen", "copies", "newest"}:
            raise ValueError("malformed nonce window")
        out = cls()
        seen = base64.b64decode(str(data["seen"]), validate=True)
        copies = base64.b64decode(str(data["copies"]), validate=True)
        if len(seen) % _REC or len(copies) % 16:
            raise ValueError("malformed nonce window")
        out.seen = {seen[k:k + 16]: int.from_bytes(seen[k + 16:k + _REC], "big") for k in range(0, len(seen), _REC)}
        out.copies = {copies[k:k + 16] for k in range(0, len(copies), 16)}
        newest = data["newest"]
        if newest is not None and (isinstance(newest, bool) or not isinstance(newest, int | float)):
            raise ValueError("malformed nonce window")
        out.newest = None if newest is None else float(newest)
        out._next_prune = max(_PRUNE_MIN, 2 * len(out.seen))
        return out
