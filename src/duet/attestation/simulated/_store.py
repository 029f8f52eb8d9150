"""Per-directory development key material: created once, atomically, readable only by us."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# Development evidence is valid for ten years from the start of 2026, as the collateral says.
DEV_NOT_BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
DEV_NOT_AFTER = datetime(2036, 1, 1, tzinfo=UTC)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_key(pem: str) -> PrivateKeyTypes:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def load_ec_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = load_key(pem)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def load_rsa_key(pem: str) -> rsa.RSAPrivateKey:
    key = load_key(pem)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("expected an RSA private key")
    return key


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def write_state_once(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write ``state`` to ``path`` unless another writer got there first; return the winner."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if it exists: first writer wins
        except FileExistsError:
            existing = read_state(path)
            if existing is None:
                raise
            return existing
    finally:
        os.unlink(tmp)
    return state


def write_public(path: Path, data: bytes) -> None:
    """Write a public artefact (root certificate) next to the state, atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
