"""Signed stdin for `cvm.run` (`duet cvm run -i`).

The owner signs the SHA-256 of the bytes (`args.stdin_sha256`); the bytes travel next to
the JWS in the request body and are logged *whole* in the command entry before the
command runs. The digest alone would show that the owner chose some input, not what the
command read; a user auditing a CVM must be able to see it, as they see the command. So
stdin is public like the command text and the output: never pipe a secret in.

Bytes without a signed digest (an unsigned stream), or that do not match it, are refused
before anything is logged.
"""

from __future__ import annotations

import contextvars
import hashlib

from duet.controller.errors import DuetError
from duet.ledger.intent import Intent
from duet.ledger.operations import MAX_STDIN

__all__ = ["MAX_STDIN", "StdinMismatch", "check", "current"]

#: The verified stdin of the intent being carried out (b"" for none).
current: contextvars.ContextVar[bytes] = contextvars.ContextVar("duet_stdin", default=b"")


class StdinMismatch(DuetError):
    code = "stdin_mismatch"


def check(intent: Intent, data: bytes | None) -> bytes:
    """The stdin to give the command: exactly the bytes whose digest the owner signed."""
    signed = intent.args.get("stdin_sha256") if intent.op == "cvm.run" else None
    if data is None:
        if signed is not None:
            raise StdinMismatch("the intent signs a stdin digest, but the request carries no stdin")
        return b""
    if signed is None:
        raise StdinMismatch("stdin was sent that the intent does not sign (stdin_sha256); refused")
    if len(data) > MAX_STDIN:
        raise StdinMismatch(f"stdin is larger than {MAX_STDIN} bytes")
    if hashlib.sha256(data).hexdigest() != signed:
        raise StdinMismatch("stdin does not match the digest the owner signed")
    return data
