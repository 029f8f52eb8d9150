"""Where the controller itself runs: the TEE that quotes its identity key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from duet.attestation.binding import controller_report_data

__all__ = ["Quote", "TeeBackend", "controller_report_data"]


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

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt to this build on this platform (tee/seal.py): a convenience copy only."""
        ...

    def unseal(self, blob: bytes) -> bytes:
        """Open a seal; raises `duet.tee.seal.SealUnreadable` saying why it does not open."""
        ...
