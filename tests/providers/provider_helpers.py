"""Shared values for the provider tests."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.ledger import credentials as sealing

HOST_DATA = "ab" * 32


def openssh_public(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def sealed_credentials(ctl: Any, provider: str, plaintext: bytes) -> tuple[dict[str, str], bytes]:
    """What `duet controller credentials set` sends: the `credentials.set` intent's args
    and the sealed bytes beside it, sealed to the key the controller's identity endorses."""
    pub = sealing.check_endorsement(ctl.info()["credentials_key"], controller_id=ctl.controller_id,
                                    controller_key=ctl.public_key)
    blob = sealing.seal(pub, plaintext, controller_id=ctl.controller_id, provider=provider)
    return {"provider": provider, "ciphertext_sha256": hashlib.sha256(blob).hexdigest(),
            "recipient_key_id": sealing.recipient_key_id(pub)}, blob
