"""One exception hierarchy for attestation: every failure has a stable snake_case ``code``.

Callers (the controller's HTTP layer, the CLI) map ``code`` to their own responses; the
message is for people. No verifier in this package lets any other exception escape for
bad input: parsers raise :class:`ParseError` and friends, never ``IndexError``/``struct.error``.
"""

from __future__ import annotations

from dataclasses import dataclass


class AttestationError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``str(e)`` is for people."""

    code: str = "attestation_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ParseError(AttestationError):
    """The evidence is not well-formed (truncated, wrong size, bad encoding)."""

    code = "malformed_evidence"


class WrongKind(ParseError):
    """The input is well-formed, but it is a different kind of evidence than expected."""

    code = "wrong_evidence_kind"


class UnsupportedVersion(ParseError):
    """A report / quote / envelope version this code does not know."""

    code = "unsupported_version"


class MissingCertificate(ParseError):
    """A certificate the evidence needs was not given (the message lists what was found)."""

    code = "certificate_missing"


class VerificationError(AttestationError):
    """Base for cryptographic failures (signature, chain, collateral, TCB)."""

    code = "verification_failed"


class SignatureInvalid(VerificationError):
    code = "signature_invalid"


class ChainInvalid(VerificationError):
    """A certificate chain does not link up (wrong issuer, bad certificate signature)."""

    code = "chain_invalid"


class UntrustedRoot(ChainInvalid):
    """The chain is internally consistent but ends at a root the caller did not trust."""

    code = "untrusted_root"


class ProductMismatch(ChainInvalid):
    """The certificates given are for another product (a Genoa chain for a Milan VCEK)."""

    code = "product_mismatch"


class CertificateExpired(ChainInvalid):
    """A certificate, CRL or signed collateral item is outside its validity period at ``now``."""

    code = "certificate_expired"


class TokenExpired(CertificateExpired):
    """A signed token (MAA JWT) is past its ``exp`` at ``now``."""

    code = "token_expired"


class TokenNotYetValid(CertificateExpired):
    """A signed token is before its ``nbf`` at ``now``."""

    code = "token_not_yet_valid"


class CertificateRevoked(ChainInvalid):
    code = "certificate_revoked"


# Short alias used in the brief.
Revoked = CertificateRevoked


class CollateralError(VerificationError):
    """Supplied collateral is unusable: malformed, for another platform, or inconsistent."""

    code = "collateral_invalid"


class TcbError(VerificationError):
    """The platform's TCB is unacceptable (no matching level, revoked, below the certificate)."""

    code = "tcb_invalid"


class DebugEnclave(VerificationError):
    """The enclave / TD / guest runs with debugging enabled."""

    code = "debug_enclave"


class BindingError(VerificationError):
    """A link between two pieces of evidence does not hold (claims hash, nonce, AK)."""

    code = "binding_mismatch"


@dataclass(frozen=True)
class Failure:
    """One failed expectation: which field, what was found, what was expected."""

    field: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{self.field} is {self.found}, expected {self.expected}"


class ExpectationFailed(AttestationError):
    """Verified evidence whose claims do not meet the caller's expectations."""

    code = "expectation_failed"

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = list(failures)
        text = "; ".join(str(f) for f in self.failures) or "no failures"
        super().__init__(f"{len(self.failures)} expectation(s) failed: {text}")
