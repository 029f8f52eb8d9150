"""Typed results for SDK users: what a command on a CVM returned, with its streams as
bytes (the wire carries them base64-encoded, and they need not be text)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """One logged command's outcome. `exit_status` is None when it was killed by a
    signal or timed out; `*_sha256` are over the full streams, even when the bytes
    here were truncated at the controller's output cap."""

    cvm: str
    command_index: int | None
    result_index: int | None
    exit_status: int | None
    stdout: bytes
    stderr: bytes
    stdout_sha256: str | None = None
    stderr_sha256: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out

    @classmethod
    def from_response(cls, cvm: str, res: dict[str, Any]) -> RunResult:
        def idx(name: str) -> int | None:
            v = res.get(name)
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        status = res.get("exit_status")
        return cls(
            cvm=cvm, command_index=idx("command_index"), result_index=idx("result_index"),
            exit_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            stdout=base64.b64decode(res.get("stdout") or ""), stderr=base64.b64decode(res.get("stderr") or ""),
            stdout_sha256=res.get("stdout_sha256"), stderr_sha256=res.get("stderr_sha256"),
            stdout_truncated=bool(res.get("stdout_truncated")), stderr_truncated=bool(res.get("stderr_truncated")),
            timed_out=bool(res.get("timed_out")),
        )
