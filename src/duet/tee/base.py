"""Where the controller itself runs: the TEE that quotes its identity key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

QUOTE_DOMAIN = b"duet-controller-v1"


def controller_report_data(public_key_raw: bytes, nonce: bytes) -> bytes:
    """Report data that binds a quote to the controller key and the asker's nonce
    (DESIGN.md, "Controller quote"): SHA-512 fills the 64-byte field exactly."""
    return hashlib.sha512(QUOTE_DOMAIN + public_key_raw + nonce).digest()


@dataclass(frozen=True)
class Quote:
    quote: bytes
    collateral: dict[str, Any]
    #: DER of the root CA the collateral chains to, only for a simulated TEE (a real
    #: quote chains to Intel's root, which verifiers have built in).
    simulated_root_ca: bytes | None


class TeeBackend(Protocol):
    kind: str  # "simulated" | "gramine"
    simulated: bool

    def quote(self, report_data: bytes) -> Quote: ...

    def measurement(self) -> dict[str, str]:
        """The identity a user pins (MRENCLAVE, MRSIGNER, ...) as hex."""
        ...
