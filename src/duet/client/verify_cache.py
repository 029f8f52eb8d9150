"""What the last verification of a log left behind, so that the next one costs only what
is new (`duet verify`, every `duet watch` tick).

Per log and per *slot* (the controller, the verifier's version, the user's expectations
and trust settings: an allow-list applies to the whole history, so other expectations
need their own replay), ``<state dir>/verify-cache/<slot>`` holds the size and root that
were verified, the Merkle compact range at that size (the complete subtrees, enough to
recompute the root as new leaves come) and the replay's state (`replay.py`).

The cache is untrusted input. Each file carries an HMAC-SHA256, under a random key kept
in the state dir (``verify-cache.key``), over its slot and its bytes: a flipped byte, a
file copied from another log, slot or state dir, or a truncated write fails the MAC. A
cache is used only if its size and root are exactly the remembered checkpoint's (the
rollback anchor in ``checkpoints.json``, which never comes from the cache) and its
compact range folds to that root. Anything else is reported and the log is verified
from its first entry; the anchor is never rebuilt from the server. Someone who can
write the state dir *and* read its key could forge a cache, as they could delete the
anchor itself: the state dir is the user's, like their SSH known_hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from duet.client.errors import ClientError

CACHE_VERSION = 1
_MAGIC = b"duet-verify-cache/1 "
#: Largest cache file read back. A replay's state does not grow with the log (replay.py);
#: what can make it large is the streamed output of open commands (at most 64 MiB).
MAX_CACHE_BYTES = 256 << 20


def slot_of(origin: str, context: dict[str, Any]) -> str:
    """The file name of a log's cache under `context` (expectations digest, trust, versions)."""
    blob = json.dumps({"origin": origin, "cache": CACHE_VERSION, **context}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class VerifyCache:
    """Call every method with the checkpoint memory's lock held (`verify.py` does)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "verify-cache"
        self.key_path = state_dir / "verify-cache.key"

    def _key(self, create: bool) -> bytes | None:
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            if not create:
                return None
            key = secrets.token_bytes(32)
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            return key
        except OSError as exc:
            raise ClientError("state_corrupt", f"cannot read {self.key_path}: {exc.strerror}") from None
        if len(key) != 32:
            if not create:
                return None
            raise ClientError("state_corrupt", f"{self.key_path} is not a 32-byte key; delete it (and the "
                                               "verify-cache directory) to start over")
        return key

    def path(self, slot: str) -> Path:
        return self.dir / slot

    @staticmethod
    def _mac(key: bytes, slot: str, body: bytes) -> str:
        return hmac.new(key, slot.encode() + b"\n" + body, hashlib.sha256).hexdigest()

    def load(self, slot: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the cached body, None), or (None, why it cannot be used); (None, None) when
        there is no cache at all."""
        try:
            with open(self.path(slot), "rb") as f:
                raw = f.read(MAX_CACHE_BYTES + 1)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"it cannot be read ({exc.strerror})"
        if len(raw) > MAX_CACHE_BYTES:
            return None, "it is too large"
        head, sep, body = raw.partition(b"\n")
        if not sep or not head.startswith(_MAGIC):
            return None, "it is not a duet verification cache"
        key = self._key(create=False)
        if key is None:
            return None, "its key (verify-cache.key) is missing"
        if not hmac.compare_digest(head[len(_MAGIC):], self._mac(key, slot, body).encode()):
            return None, "its MAC does not match (changed, damaged, or copied from elsewhere)"
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None, "it is not JSON"
        if not isinstance(data, dict):
            return None, "it is not a JSON object"
        return data, None

    def save(self, slot: str, data: dict[str, Any]) -> None:
        key = self._key(create=True)
        assert key is not None
        body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        content = _MAGIC + self._mac(key, slot, body).encode() + b"\n" + body
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{slot[:16]}.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(slot))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def drop(self, slot: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(slot).unlink()
