"""`duet watch`: keep checking a CVM, and fail loudly.

A watcher that gives up quietly when it cannot check is exactly what an attacker wants:
make the controller unreachable, delete the CVM, or stall a response, and nobody is told.
So not being able to check is itself a violation once it has lasted `grace_s` (a stated
grace period absorbs a restart or a network blip). A check that runs and fails is a
violation at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_GRACE_S = 60.0


@dataclass(frozen=True)
class Step:
    """The outcome of one check: `ok`, `degraded` (cannot check, still within the grace
    period) or `violation`, with a reason a person (and the hook) can read."""

    kind: str
    reason: str
    report: Any = None


@dataclass
class Watcher:
    check: Callable[[], Any]
    grace_s: float = DEFAULT_GRACE_S
    clock: Callable[[], float] = time.monotonic
    failing_since: float | None = None

    def step(self) -> Step:
        try:
            report = self.check()
        except Exception as exc:  # any reason the check could not run counts, bugs included
            return self._cannot_check(_reason(exc))
        self.failing_since = None
        if not report.ok:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
            return Step("violation", failed or "verification failed", report)
        return Step("ok", "", report)

    def _cannot_check(self, why: str) -> Step:
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = now
        waited = now - self.failing_since
        if waited >= self.grace_s:
            return Step("violation", f"cannot verify for {waited:.0f} s (grace {self.grace_s:.0f} s): {why}")
        return Step("degraded", f"cannot verify ({why}); a violation in {self.grace_s - waited:.0f} s "
                                "unless it recovers")


def _reason(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(code, str):
        return f"{code}: {message}"
    return f"the verification could not run: {type(exc).__name__}: {message}"
