"""`duet cvm run` and `duet cvm wait`: output printed as the controller logs it, signed
stdin with `-i`, and `--no-wait` for long commands (docs/wire-formats.md, "Streamed runs").
"""

from __future__ import annotations

import base64
import re
import sys
from typing import Any, BinaryIO

from duet.client.errors import ClientError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `1.5m`, `2h`, `500ms`: seconds (a bare number is seconds)."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ClientError("invalid_request", f"--timeout {text!r} is not a positive duration (e.g. 90, 90s, 5m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


def read_stdin(stream: BinaryIO, limit: int) -> bytes:
    """All of stdin, refused (not cut) past `limit`: the owner signs what the command reads."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ClientError("stdin_too_large", f"stdin is larger than {limit} bytes (-i sends at most that, "
                                             "and logs it whole)")
    return data


def _print_piece(stream: str, data: bytes) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.buffer.write(data)
    out.flush()


def print_end(res: dict[str, Any], err: Any) -> int:
    """After the output was printed: notes on stderr, and the exit status to use."""
    for name in ("stdout", "stderr"):
        if res.get(f"{name}_truncated"):
            err.print(f"duet: {name} truncated; {res[f'{name}_bytes']} bytes in all, sha256 {res[f'{name}_sha256']}")
    if res.get("timed_out"):
        err.print("duet: the command timed out and was killed")
        return 124
    if res.get("interrupted"):
        err.print(f"duet: interrupted: {res['interrupted']}", markup=False)
        return 1
    status = res.get("exit_status")
    return int(status) if isinstance(status, int) else 1


def run(owner: Any, cvm: str, command: str, *, timeout: str | None, interactive: bool, no_wait: bool,
        err: Any) -> int:
    from duet.ledger.op_names import MAX_STDIN

    stdin = read_stdin(sys.stdin.buffer, MAX_STDIN) if interactive else None
    timeout_s = parse_duration(timeout)
    try:
        res = owner.run_streamed(cvm, command, timeout_s=timeout_s, stdin=stdin, on_output=_print_piece,
                                 wait=not no_wait)
    except ClientError as exc:
        if exc.status != 404 or exc.code != "not_found" or no_wait:
            raise
        # A controller from before streamed runs: the same intent, answered at the end.
        return print_buffered(owner.run(cvm, command, timeout_s=timeout_s, stdin=stdin), err)
    if no_wait:
        print(res["command_index"])
        err.print(f"duet: command logged at index {res['command_index']}; "
                  f"wait for it with: duet cvm wait {res['cvm']} {res['command_index']}", markup=False)
        return 0
    return print_end(res, err)


def wait(owner: Any, cvm: str, index: int, err: Any) -> int:
    return print_end(owner.follow(cvm, index, on_output=_print_piece), err)


def print_buffered(res: dict[str, Any], err: Any) -> int:
    """A whole (non-streamed) answer: both streams, then the notes."""
    for name in ("stdout", "stderr"):
        _print_piece(name, base64.b64decode(res.get(name, "")))
    return print_end(res, err)
