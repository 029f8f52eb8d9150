"""Regexes that come from logs (policies) and from users (expectations) run on RE2
(`google-re2`): matching is linear in the input, so a pattern such as ``(a+)+b`` cannot
keep the controller or a verifier busy (Python's ``re`` backtracks exponentially on it).

RE2's syntax is Python's minus backreferences and lookaround (and a few rarities like
``\\Z``, written ``\\z`` in RE2); a pattern RE2 cannot compile is refused, never handed to
a backtracking engine.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2  # type: ignore[import-untyped]

MAX_PATTERN = 4096


class Pattern(Protocol):
    pattern: str

    def fullmatch(self, text: str) -> Any: ...
    def search(self, text: str) -> Any: ...


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


def compile_linear(pattern: str) -> Pattern:
    """Compile `pattern` with RE2; ValueError names why it cannot be used."""
    if not isinstance(pattern, str):
        raise ValueError("a regex must be a string")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"regex is longer than {MAX_PATTERN} characters")
    try:
        compiled: Pattern = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a regex the RE2 engine accepts (no backreferences or lookaround): {detail}") from None
    return compiled
