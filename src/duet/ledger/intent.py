"""Owner intents: JWS compact (RFC 7515) with EdDSA over a canonical JSON payload.

An intent is the owner's proof that they asked for an operation. The controller checks it
before acting and stores the compact JWS verbatim in the log, so any service user can
re-check every intent offline with the owner keys from the log (docs/invariants.md, invariant 4).
Parsing and signature checks live here, in the pure verification side, because both the
controller and the user's verifier run exactly the same code. The stateful parts
(nonce replay, clock window) are the controller's; `check_claims` takes `now` explicitly.

A JWS library is not used: the format is three base64url parts and one Ed25519 check, and
we must be stricter than general JWS libraries are (canonical payload, no padding, a
fixed header, exact argument schemas per operation).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from duet.ledger import operations, strictjson
from duet.ledger.entries import OWNER_MODES
from duet.ledger.errors import LedgerError
from duet.ledger.intent_sign import _b64url as _b64url
from duet.ledger.intent_sign import new_nonce as new_nonce
from duet.ledger.intent_sign import sign_intent as sign_intent

MAX_JWS_LEN = 256 * 1024
MAX_COMMAND_LEN = operations.MAX_COMMAND_LEN
MAX_POLICY_LEN = operations.MAX_POLICY_LEN
IAT_WINDOW_S = 120
#: How long after its iat an intent may be logged. The controller checks iat against its
#: clock at receipt (±IAT_WINDOW_S), but the intent may then wait for its CVM's lock behind
#: a running command; when it is appended, its iat must lie in [entry time - LOG_DELAY_S,
#: entry time + IAT_WINDOW_S] or the controller refuses it (stale_intent). Every verifier
#: flags a logged intent outside that window, which is what lets it forget an intent's
#: nonce once its iat is older than the newest entry time minus LOG_DELAY_S: a replay of
#: it later fails this rule (docs/transparency.md, "What a verification keeps").
LOG_DELAY_S = 1800
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
NAME_RE = operations.NAME_RE
MODES = OWNER_MODES


class IntentError(LedgerError):
    code = "malformed_intent"


class BadSignature(IntentError):
    code = "bad_signature"


class UnknownKey(IntentError):
    code = "unknown_key"


class WrongAudience(IntentError):
    code = "wrong_audience"


class StaleIntent(IntentError):
    code = "stale_intent"


@dataclass(frozen=True)
class Intent:
    """A parsed (not yet trusted) intent."""

    jws: str
    kid: str
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def op(self) -> str:
        return str(self.payload["op"])

    @property
    def cvm(self) -> str | None:
        value = self.payload.get("cvm")
        return None if value is None else str(value)

    @property
    def args(self) -> dict[str, Any]:
        args = self.payload["args"]
        assert isinstance(args, dict)
        return args

    @property
    def nonce(self) -> str:
        return str(self.payload["nonce"])

    @property
    def iat(self) -> int:
        return int(self.payload["iat"])


def _unb64url(part: str, what: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise IntentError(f"JWS {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise IntentError(f"JWS {what} is not valid base64url") from None


def parse_intent(jws: str) -> Intent:
    """Split and decode a compact JWS and check the payload's shape (no trust decision)."""
    if not isinstance(jws, str) or len(jws) > MAX_JWS_LEN:
        raise IntentError("intent must be a compact JWS string of at most 256 KiB")
    parts = jws.split(".")
    if len(parts) != 3:
        raise IntentError("intent is not a compact JWS (expected three dot-separated parts)")
    header_raw = _unb64url(parts[0], "header")
    payload_raw = _unb64url(parts[1], "payload")
    signature = _unb64url(parts[2], "signature")
    header = _json_object(header_raw, "header")
    if header.get("alg") != "EdDSA":
        raise IntentError(f"JWS alg must be EdDSA, got {header.get('alg')!r}")
    unknown = set(header) - {"alg", "kid", "typ"}
    if unknown:
        raise IntentError(f"JWS header has unsupported members: {sorted(unknown)}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not re.fullmatch(r"[0-9a-f]{64}", kid):
        raise IntentError("JWS header kid must be the hex SHA-256 of the owner's public key")
    payload = _json_object(payload_raw, "payload")
    if rfc8785.dumps(payload) != payload_raw:
        raise IntentError("intent payload is not canonical JSON (RFC 8785)")
    _check_payload_shape(payload)
    return Intent(
        jws=jws,
        kid=kid,
        payload=payload,
        signing_input=(parts[0] + "." + parts[1]).encode("ascii"),
        signature=signature,
    )


def verify_signature(intent: Intent, owner_keys: Mapping[str, Ed25519PublicKey]) -> None:
    key = owner_keys.get(intent.kid)
    if key is None:
        raise UnknownKey(f"intent is signed by key {intent.kid[:16]}…, which is not an owner key")
    try:
        key.verify(intent.signature, intent.signing_input)
    except InvalidSignature:
        raise BadSignature("intent signature does not verify with the owner key") from None


def check_claims(intent: Intent, *, aud: str, now: int, window_s: int = IAT_WINDOW_S) -> None:
    """The claims a controller checks at receipt; a later verifier need not re-check time."""
    if intent.payload["aud"] != aud:
        raise WrongAudience(
            f"intent is addressed to controller {str(intent.payload['aud'])[:16]}…, "
            f"not to this one ({aud[:16]}…)"
        )
    skew = intent.iat - now
    if abs(skew) > window_s:
        raise StaleIntent(
            f"intent iat is {abs(skew)} s in the {'future' if skew > 0 else 'past'}; "
            f"the window is ±{window_s} s"
        )


def logged_time_problem(iat: int, entry_time: float) -> str | None:
    """Why an intent with this iat could not have been logged at `entry_time` (unix
    seconds) by an honest controller, or None (see LOG_DELAY_S)."""
    if iat > entry_time + IAT_WINDOW_S:
        return (f"intent iat is {int(iat - entry_time)} s after the entry's time "
                f"(at most {IAT_WINDOW_S} s ahead is accepted)")
    if iat < entry_time - LOG_DELAY_S:
        return (f"intent logged {int(entry_time - iat)} s after its iat (at most {LOG_DELAY_S} s: "
                "a stale or replayed intent)")
    return None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Strict JSON (strictjson): a payload the canonical encoder cannot re-encode (NaN, a
    big integer, a lone surrogate, deep nesting) is refused here with its own code."""
    value = strictjson.loads(raw, max_bytes=MAX_JWS_LEN, what=f"JWS {what}")
    if not isinstance(value, dict):
        raise IntentError(f"JWS {what} must be a JSON object")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_payload_shape(p: dict[str, Any]) -> None:
    required = {"v", "op", "aud", "args", "nonce", "iat"}
    missing = required - set(p)
    if missing:
        raise IntentError(f"intent payload is missing {sorted(missing)}")
    extra = set(p) - required - {"cvm"}
    if extra:
        raise IntentError(f"intent payload has unknown members {sorted(extra)}")
    if p["v"] != 1 or not _is_int(p["v"]):
        raise IntentError(f"intent version must be 1, got {p['v']!r}")
    operation = operations.OPERATIONS.get(p["op"]) if isinstance(p["op"], str) else None
    if operation is None:
        raise IntentError(f"unknown intent op {p['op']!r}; known: {', '.join(operations.OPERATIONS)}")
    if not isinstance(p["aud"], str) or not p["aud"]:
        raise IntentError("intent aud must be the controller id")
    if not isinstance(p["nonce"], str) or not NONCE_RE.fullmatch(p["nonce"]):
        raise IntentError("intent nonce must be 16-128 base64url characters")
    if not _is_int(p["iat"]) or p["iat"] < 0:
        raise IntentError("intent iat must be a non-negative integer (unix seconds)")
    # Owner keys are controller-wide (one owner set for all CVMs), so `owner.keys` names
    # no CVM; the change is appended to every live CVM's log.
    if operation.targets_cvm:
        if not isinstance(p.get("cvm"), str) or not p["cvm"]:
            raise IntentError(f"{p['op']} intent must name the target CVM in 'cvm'")
    elif "cvm" in p:
        raise IntentError(f"{p['op']} intent must not name a CVM")
    if not isinstance(p["args"], dict):
        raise IntentError("intent args must be an object")
    _check_args(p["op"], p["args"])


def _check_args(op: str, args: dict[str, Any]) -> None:
    try:
        operations.check_args(op, args)
    except ValueError as exc:
        raise IntentError(str(exc)) from None
