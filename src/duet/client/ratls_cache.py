"""A short-lived cache of RA-TLS certificates this user verified (`<state dir>/ratls-verified.json`).

Why: every `duet` process is new, and over `https://` each one verified the controller's
quote in the TLS handshake (importing the attestation package and checking the DCAP
chain), although the controller's certificate had not changed since the previous command
a second ago. A certificate verified once is trusted again, by the same user, for at most
`ttl` seconds (`DUET_RATLS_CACHE_TTL`, default 300; 0 turns the cache off).

**The trade-off.** Within the TTL, what can change about an unchanged certificate is only
what time changes: its collateral expiring, or Intel revoking the platform's TCB. A cached
verdict can be up to `ttl` seconds older than that news. The key pin is checked on every
connection as before, and anything else about the certificate is bound to the cached
verdict by its digest.

**The cache is untrusted on read.** An entry is used only if all of this holds, else it
is ignored and the certificate is verified in full (and the entry replaced):

* its MAC verifies: HMAC-SHA256 under a random key in `<state dir>/ratls-cache.key` (0600),
  so an entry this user's duet did not write (a file copied in, edited or truncated) is
  never taken for a verdict;
* it is for this exact certificate (SHA-256 of its DER), for this controller origin, was
  made with the same `trust_simulated` (or a stricter one) and the same expectations, and
  is younger than the TTL in force now (a `verified_at` in the future is ignored);
* the binding is re-checked on the certificate itself: its Ed25519 key is the cached key,
  its quote extension is the quote whose digest was cached, and that quote's report data is
  SHA-256(the certificate's SubjectPublicKeyInfo) ‖ 32 zero bytes, with the cached
  MRENCLAVE and MRSIGNER in its report body.

What is skipped is the expensive part: the quote's signature chain and collateral
checks, and the import of the attestation package.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duet.client.errors import ClientError
from duet.client.statefile import locked, read_json, write_json

CACHE_FILE = "ratls-verified.json"
KEY_FILE = "ratls-cache.key"
DEFAULT_TTL_S = 300.0
#: Entries kept per file (the newest); older ones are dropped on write.
MAX_ENTRIES = 64

# An SGX DCAP quote: a 48-byte header, then the 384-byte report body.
_BODY = 48
_MRENCLAVE = slice(_BODY + 64, _BODY + 96)
_MRSIGNER = slice(_BODY + 128, _BODY + 160)
_REPORT_DATA = slice(_BODY + 320, _BODY + 384)


def ttl_from_env() -> float:
    """`DUET_RATLS_CACHE_TTL` seconds (0 turns the cache off); a bad value is an error."""
    raw = os.environ.get("DUET_RATLS_CACHE_TTL")
    if raw is None or raw == "":
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ClientError("invalid_config", f"DUET_RATLS_CACHE_TTL={raw!r}: give seconds from 0 (off) to 3600")
    return value


@dataclass(frozen=True)
class CachedReport:
    """The verified quote's claims kept in the cache (what a `PeerIdentity` shows)."""

    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    tcb_status: str
    simulated: bool
    report_data: bytes
    debug: bool = False
    advisory_ids: list[str] = field(default_factory=list)
    #: When the full verification ran (seconds since the epoch).
    verified_at: float = 0.0
    tee: str = "gramine"


def _b(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not base64 text")
    return base64.b64decode(value, validate=True)


def expectations_digest(expect: Any) -> str:
    """A digest of the expectations a verdict was reached under ("" for none)."""
    if expect is None:
        return ""
    dump = getattr(expect, "model_dump_json", None)
    text = dump() if callable(dump) else repr(expect)
    return hashlib.sha256(str(text).encode()).hexdigest()


@dataclass(frozen=True)
class Binding:
    """What the certificate itself says, parsed without the attestation package."""

    public_key: bytes
    spki: bytes
    quote: bytes


class VerifiedCache:
    def __init__(self, state_dir: Path, origin: str, *, ttl: float, trust_simulated: bool, expect: Any) -> None:
        self.path = Path(state_dir) / CACHE_FILE
        self.key_path = Path(state_dir) / KEY_FILE
        self.origin = origin
        self.ttl = ttl
        self.trust_simulated = trust_simulated
        self.expect = expectations_digest(expect)

    # ------------------------------------------------------------------ the MAC key

    def _key(self, create: bool) -> bytes | None:
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            key = b""
        except OSError:
            return None
        if len(key) == 32:
            return key
        if not create:
            return None
        key = secrets.token_bytes(32)
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.key_path.with_name(f".{KEY_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        os.replace(tmp, self.key_path)
        return key

    @staticmethod
    def _mac(key: bytes, entry: dict[str, Any]) -> str:
        body = json.dumps({k: v for k, v in entry.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ read / write

    def lookup(self, cert_sha256: str, binding: Binding, now: float | None = None) -> CachedReport | None:
        """The cached verdict for this certificate, if every check of the module
        docstring passes; None otherwise (then verify in full)."""
        if self.ttl <= 0:
            return None
        now = time.time() if now is None else now
        try:
            with locked(self.path, wait=5.0):
                data = read_json(self.path, "the RA-TLS verdict cache")
            key = self._key(create=False)
            entry = data.get(cert_sha256)
            if key is None or not isinstance(entry, dict):
                return None
            return self._check(entry, key, binding, now)
        except (ClientError, ValueError, TypeError, KeyError, OSError):
            return None  # a damaged cache is ignored: the certificate is verified in full

    def _check(self, e: dict[str, Any], key: bytes, binding: Binding, now: float) -> CachedReport | None:
        if not hmac.compare_digest(str(e.get("mac", "")), self._mac(key, e)):
            return None
        verified_at = float(e["verified_at"])
        if e["origin"] != self.origin or not verified_at <= now < verified_at + self.ttl:
            return None
        if e["expect"] != self.expect or (e["trust_simulated"] and not self.trust_simulated):
            return None
        simulated = bool(e["simulated"])
        if simulated and not self.trust_simulated:
            return None
        # The binding, on the certificate itself.
        quote = binding.quote
        if _b(e["public_key"]) != binding.public_key or hashlib.sha256(quote).hexdigest() != e["quote_sha256"]:
            return None
        if len(quote) < _REPORT_DATA.stop:
            return None
        expected = hashlib.sha256(binding.spki).digest() + bytes(32)
        if not hmac.compare_digest(quote[_REPORT_DATA], expected):
            return None
        if quote[_MRENCLAVE].hex() != e["mrenclave"] or quote[_MRSIGNER].hex() != e["mrsigner"]:
            return None
        return CachedReport(mrenclave=str(e["mrenclave"]), mrsigner=str(e["mrsigner"]),
                            isv_prod_id=int(e["isv_prod_id"]), isv_svn=int(e["isv_svn"]),
                            tcb_status=str(e["tcb_status"]), simulated=simulated, report_data=quote[_REPORT_DATA],
                            debug=bool(e.get("debug")), advisory_ids=[str(a) for a in e.get("advisory_ids", [])],
                            verified_at=verified_at, tee=str(e.get("tee", "gramine")))

    def store(self, cert_sha256: str, binding: Binding, report: Any, tee: str, now: float | None = None) -> None:
        """Remember a verdict just reached in full. Failing to write is not an error
        (the next process verifies in full)."""
        if self.ttl <= 0:
            return
        now = time.time() if now is None else now
        entry: dict[str, Any] = {
            "origin": self.origin, "verified_at": now, "expect": self.expect,
            "trust_simulated": self.trust_simulated, "simulated": bool(report.simulated),
            "public_key": base64.b64encode(binding.public_key).decode(),
            "quote_sha256": hashlib.sha256(binding.quote).hexdigest(),
            "mrenclave": str(report.mrenclave), "mrsigner": str(report.mrsigner),
            "isv_prod_id": int(report.isv_prod_id), "isv_svn": int(report.isv_svn),
            "tcb_status": str(report.tcb_status), "debug": bool(report.debug),
            "advisory_ids": [str(a) for a in report.advisory_ids], "tee": tee,
        }
        with contextlib.suppress(ClientError, OSError):
            key = self._key(create=True)
            if key is None:
                return
            entry["mac"] = self._mac(key, entry)
            with locked(self.path, wait=5.0):
                try:
                    data = read_json(self.path, "the RA-TLS verdict cache")
                except ClientError:
                    data = {}  # a damaged cache is rebuilt (it holds no anchor)
                data = {k: v for k, v in data.items()
                        if isinstance(v, dict) and isinstance(v.get("verified_at"), int | float)
                        and now - float(v["verified_at"]) < self.ttl}
                data[cert_sha256] = entry
                newest = sorted(data.items(), key=lambda kv: float(kv[1]["verified_at"]))[-MAX_ENTRIES:]
                write_json(self.path, dict(newest))
