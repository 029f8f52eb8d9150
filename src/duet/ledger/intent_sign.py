"""Signing an owner intent (a compact JWS, EdDSA over RFC 8785 canonical JSON; see
:mod:`duet.ledger.intent` for the format and its checks).

Apart from the parser because the parser checks each operation's arguments against its
pydantic model (`duet.ledger.operations`), and a `duet cvm run` process, which only
signs, should not import pydantic (`duet/cli/lean.py`). The parser re-exports these
names, so `duet.ledger.intent.sign_intent` is this function.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.ledger.keys import key_id


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def sign_intent(
    key: Ed25519PrivateKey,
    *,
    op: str,
    aud: str,
    args: Mapping[str, Any],
    cvm: str | None = None,
    iat: int,
    nonce: str | None = None,
) -> str:
    """Make a compact JWS; the caller supplies `iat` so tests can forge stale intents."""
    payload: dict[str, Any] = {
        "v": 1,
        "op": op,
        "aud": aud,
        "args": dict(args),
        "nonce": nonce or new_nonce(),
        "iat": iat,
    }
    if cvm is not None:
        payload["cvm"] = cvm
    header = {"alg": "EdDSA", "kid": key_id(key.public_key()), "typ": "duet-intent+jws"}
    signing_input = (
        _b64url(rfc8785.dumps(header)) + "." + _b64url(rfc8785.dumps(payload))
    ).encode("ascii")
    return signing_input.decode("ascii") + "." + _b64url(key.sign(signing_input))
