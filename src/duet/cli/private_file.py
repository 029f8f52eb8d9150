"""Writing a private key file (owner, witness, recovery-holder keys)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by its owner only. The mode given to open() applies to a new
    file only: a file that already exists (``keygen --force``) is made 0600 before the
    key goes in, so a key never lands in a file others can read. A symbolic link is not
    followed (it could point the key anywhere)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
