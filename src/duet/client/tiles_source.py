"""Verify a CVM log from a static C2SP tlog-tiles mirror (`duet verify --from-tiles URL`).

A mirror is a directory any file server can serve, written by `duet state export --tiles`:

    checkpoint            the controller-signed checkpoint note
    tile/<L>/<N>...       standard hash tiles
    tile/duet-entries/... duet's entry bundles (ledger/tiles.py says why not tile/entries)
    duet-identity.json    the controller's key, and a quote over the exporter's nonce

Nothing in it is trusted: the identity is checked exactly as a bundle's is (canonical, only
fields that verification reads), the checkpoint against the attested key, every entry
against its level-0 tile hash and the tiles against the checkpoint's root. As with a bundle,
the quote is not fresh (its nonce is the exporter's), and the report says so.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import rfc8785

from duet.client.bundle import BUNDLE_VERSION, CONTROLLER_FIELDS, QUOTE_FIELDS, _canonical_problem
from duet.client.errors import ClientError, LimitExceeded
from duet.ledger import tiles
from duet.ledger.errors import LedgerError

IDENTITY = "duet-identity.json"
IDENTITY_FIELDS = {"duet_bundle", "cvm", "controller", "nonce", "quote"}
#: A hash tile is 8 KiB; an entry bundle may hold 256 large outputs.
MAX_FILE = 1 << 30
MAX_IDENTITY = 1 << 20


def write_mirror(bundle: bytes, out: Path) -> int:
    """Turn an exported bundle into a tile mirror under `out`; returns the files written."""
    data = json.loads(bundle)
    leaves = [base64.b64decode(e) for e in data["entries"]]
    out.mkdir(parents=True, exist_ok=True)
    written = 0

    def write(rel: str, content: bytes) -> None:
        nonlocal written
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written += 1

    tiles.export_tree(leaves, write)
    write("checkpoint", data["checkpoint"].encode())
    write(IDENTITY, rfc8785.dumps({k: data[k] for k in IDENTITY_FIELDS}))
    return written


class TileSource:
    """A `verify.Source` over a tile mirror at an http(s) URL or a local directory."""

    live = False

    def __init__(self, where: str, *, timeout: float = 30.0, max_total: int = 8 << 30) -> None:
        self.where = where.rstrip("/") + "/"
        self._local = urlsplit(where).scheme not in ("http", "https")
        self._client = None if self._local else httpx.Client(timeout=timeout, follow_redirects=False)
        self._left = max_total
        self.identity = self._load_identity()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> TileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, rel: str, limit: int = MAX_FILE) -> bytes:
        if self._local:
            try:
                with open(Path(self.where) / rel, "rb") as f:
                    data = f.read(limit + 1)
            except OSError as exc:
                raise ClientError("tiles_unavailable", f"cannot read {rel} from {self.where}: {exc.strerror}") from None
        else:
            assert self._client is not None
            chunks, size = [], 0
            try:
                with self._client.stream("GET", self.where + rel) as resp:
                    if resp.status_code != 200:
                        raise ClientError("tiles_unavailable", f"{self.where}{rel}: HTTP {resp.status_code}")
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            break
                        chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise ClientError("tiles_unavailable", f"{self.where}{rel}: {type(exc).__name__}") from None
            data = b"".join(chunks)
        if len(data) > limit:
            raise LimitExceeded("file_size", f"{rel} is larger than {limit} bytes")
        self._left -= len(data)
        if self._left < 0:
            raise LimitExceeded("total_bytes", "the mirror sent more than this run may read")
        return data

    def _load_identity(self) -> dict[str, Any]:
        raw = self.fetch(IDENTITY, MAX_IDENTITY)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ClientError("invalid_bundle", f"{IDENTITY} is not JSON") from None
        if not isinstance(data, dict) or data.get("duet_bundle") != BUNDLE_VERSION or set(data) != IDENTITY_FIELDS:
            raise ClientError("invalid_bundle", f"{IDENTITY} is not a duet mirror identity (version {BUNDLE_VERSION})")
        if not isinstance(data.get("controller"), dict) or set(data["controller"]) != set(CONTROLLER_FIELDS) \
                or not isinstance(data.get("quote"), dict) or not set(data["quote"]) <= set(QUOTE_FIELDS) \
                or not isinstance(data.get("cvm"), str) or not isinstance(data.get("nonce"), str):
            raise ClientError("invalid_bundle", f"{IDENTITY} has fields a mirror identity does not have")
        if rfc8785.dumps(data) != raw:
            raise ClientError("invalid_bundle", f"{IDENTITY} is not in canonical form (RFC 8785): it was edited")
        problem = _canonical_problem({**data, "entries": []})
        if problem:
            raise ClientError("invalid_bundle", f"{IDENTITY}: {problem}")
        return data

    @property
    def cvm(self) -> str:
        return str(self.identity["cvm"])

    def controller(self) -> dict[str, Any]:
        return dict(self.identity["controller"])

    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]:
        return bytes.fromhex(self.identity["nonce"]), dict(self.identity["quote"])

    def checkpoint(self, cvm: str, shown: str | None = None) -> str:
        try:
            return self.fetch("checkpoint", 1 << 16).decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError("bad_response", "the mirror's checkpoint is not UTF-8") from None

    def leaves(self, cvm: str, size: int) -> list[bytes]:
        try:
            return tiles.read_leaves(size, self.fetch)
        except LedgerError as exc:
            raise ClientError("bad_response", f"the mirror's tiles do not match: {exc}") from None

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        raise ClientError("offline", "a tile mirror is read whole; consistency is checked from the leaves")
