"""How a failed command ends: one line `error [code]: message` on stderr and an exit code
(0 ok, 1 error, 2 usage, 3 refused by the controller's mode or policy). Shared by the
typer CLI (`main._guard`) and the lean path (`lean.py`), so that both end alike; imports
only the client's errors."""

from __future__ import annotations

from duet.client.errors import ClientError

#: Controller error codes that mean "refused" (exit 3), not "failed" (exit 1).
REFUSED = frozenset({"forbidden", "forbidden_in_mode", "forbidden_by_policy", "invalid_transition",
                     "evidence_refused", "lockdown_failed", "control_plane_failed"})


def failure(exc: Exception) -> tuple[str, str, int]:
    """(code, message, exit code) of an exception that ends a command. Never a
    traceback: an unexpected failure is still one typed line."""
    if isinstance(exc, ClientError):
        suffix = f" (logged as entry {exc.index})" if exc.index is not None else ""
        return exc.code, exc.message + suffix, 3 if exc.code in REFUSED else 1
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        exit_code = getattr(exc, "exit_code", 1)
        return code, str(exc), exit_code if isinstance(exit_code, int) else 1
    return "internal_error", f"{type(exc).__name__}: {str(exc)[:500]}", 1
