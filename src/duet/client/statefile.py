"""The user's state files (remembered checkpoints, RA-TLS pins): read and written under
an exclusive file lock, through a unique temporary file in the same directory, fsynced
and renamed into place. Two verifies on one state directory then never lose each other's
anchor (a lost anchor lets a rollback pass) and never read a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from duet.client.errors import ClientError

LOCK_WAIT = 600.0


@contextlib.contextmanager
def locked(path: Path, wait: float = LOCK_WAIT,
           error: Callable[[str, str], Exception] = ClientError) -> Iterator[None]:
    """Hold the lock of state file `path` (a sibling ``.lock`` file; flock, so a crashed
    holder releases it). Waits at most `wait` seconds, then fails with a typed error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise error("state_locked", f"cannot lock {path}: {exc.strerror}") from None
                if time.monotonic() > deadline:
                    raise error("state_locked", f"{path} stayed locked by another duet for {wait:g} s") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the flock


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The file's JSON object, ``{}`` if it does not exist. A damaged file is an error,
    never silently reset: that would forget the anchors it holds."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        raise ClientError("state_corrupt", f"cannot read {what} in {path}") from None
    if not isinstance(data, dict):
        raise ClientError("state_corrupt", f"{what} in {path} is not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace `path` (call with its lock held)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
