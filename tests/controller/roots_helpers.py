"""What the pinned-roots tests share (test_snp_arks_setting.py, test_tdx_roots_setting.py):
a provider's settings, a nonce, a fresh host key, and the registry's verification of one
evidence entry under a given trust."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization

from duet.attestation import cvm_kinds
from duet.ledger import keys

GCP = {"project": "p", "zone": "europe-west4-a"}
NONCE = bytes(range(32))


def new_host_key() -> str:
    public = keys.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def verify(entry: dict[str, Any], host_key: str, trust: cvm_kinds.Trust) -> Any:
    """The report of `entry` (kind `snp` or `tdx`, no instance binding), or the error."""
    return cvm_kinds.verify_evidence(entry, host_key=host_key, now=datetime.now(UTC), trust=trust,
                                     binding="none").report
