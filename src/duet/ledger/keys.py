"""Ed25519 key identities shared by the controller, owners and verifiers.

A key id is the lowercase hex SHA-256 of the raw 32-byte public key (docs/wire-formats.md,
"Identifiers"): it is derivable by anyone from the key alone, so a log can name keys
without a registry. Owner keys live in PEM files (PKCS#8 private, SubjectPublicKeyInfo
public) because every crypto toolkit reads those.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from duet.ledger.errors import LedgerError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyError_",
    "key_id",
    "load_private_pem",
    "load_public_pem",
    "private_pem",
    "public_b64",
    "public_from_b64",
    "public_pem",
    "raw_public",
    "read_private_key",
    "read_public_key",
]


class KeyError_(LedgerError):
    """A key file or encoded key that is not a usable Ed25519 key."""

    code = "invalid_key"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | bytes) -> str:
    raw = key if isinstance(key, bytes) else raw_public(key)
    return hashlib.sha256(raw).hexdigest()


def public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def public_from_b64(text: str) -> Ed25519PublicKey:
    """Decode a base64 raw public key strictly (no silent dropping of bad characters)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"public key is not valid base64: {exc}") from None
    if len(raw) != 32:
        raise KeyError_(f"an Ed25519 public key has 32 bytes, this one has {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_pem(data: bytes, *, source: str = "key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_(f"{source} is not a PEM PKCS#8 private key without a password") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{source} is not an Ed25519 key")
    return key


def load_public_pem(data: bytes, *, source: str = "key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyError_(f"{source} is not a PEM SubjectPublicKeyInfo public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{source} is not an Ed25519 key")
    return key


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read key file {path}: {exc.strerror}") from None
    return load_private_pem(data, source=str(path))


def read_public_key(path: Path) -> Ed25519PublicKey:
    """Read a public key file; a private key file is accepted too (its public half is used)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read key file {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_private_pem(data, source=str(path)).public_key()
    return load_public_pem(data, source=str(path))
