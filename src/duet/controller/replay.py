"""The replay guard: every accepted intent's nonce, for as long as its intent could be
accepted again.

No table of its own: the log is the durable record. An intent the controller acts on
is appended (with its JWS, hence its nonce) before the action, so after a crash the
guard is rebuilt from the tails of the logs. An intent refused before anything was
logged changed nothing, so replaying it changes nothing either. Keeping nonces out of
a separate database saves one durable commit on every request.
"""

from __future__ import annotations

import heapq
import threading
from datetime import UTC, datetime

from duet.ledger import entries
from duet.ledger.backend import LogStore
from duet.ledger.errors import LedgerError
from duet.ledger.intent import IAT_WINDOW_S, LOG_DELAY_S, parse_intent

#: An intent is refused once |iat - now| exceeds the window at receipt, and once it is
#: older than LOG_DELAY_S when it would be logged (ledger/intent.py), so remembering a
#: nonce for that long after its iat (plus slack for the clock) covers every replay.
KEEP_S = LOG_DELAY_S + 2 * IAT_WINDOW_S
SCAN_CHUNK = 64


class ReplayGuard:
    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def claim(self, nonce: str, iat: int, now: int) -> bool:
        """Record a nonce; False if it was seen (and is still remembered)."""
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                _, old = heapq.heappop(self._expiry)
                self._seen.discard(old)
            if nonce in self._seen:
                return False
            self._seen.add(nonce)
            heapq.heappush(self._expiry, (max(iat, now) + KEEP_S, nonce))
            return True

    def seed_from_logs(self, ledger: LogStore, now: int) -> int:
        """Re-learn the nonces of intents logged within the keep window."""
        cutoff = now - KEEP_S
        seeded = 0
        for log_id in ledger.log_ids():
            end = ledger.tree_head(log_id).size
            while end > 0:
                start = max(0, end - SCAN_CHUNK)
                leaves = ledger.leaves(log_id, start, end)
                done = False
                for leaf in reversed(leaves):
                    e = entries.decode(leaf)
                    when = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00"))
                    if when.astimezone(UTC).timestamp() < cutoff:
                        done = True
                        break
                    jws = e.get("jws")
                    if isinstance(jws, str):
                        try:
                            intent = parse_intent(jws)
                        except LedgerError:
                            continue
                        if self.claim(intent.nonce, intent.iat, now):
                            seeded += 1
                if done:
                    break
                end = start
        return seeded
