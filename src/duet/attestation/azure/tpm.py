"""TPM 2.0 quotes: parse TPMS_ATTEST, verify the AK signature, the PCR digest and the nonce.

TPMS_ATTEST (TPM 2.0 Part 2, big-endian): magic ``ff544347`` (TPM_GENERATED_VALUE), type
``8018`` (TPM_ST_ATTEST_QUOTE), qualifiedSigner (TPM2B_NAME), extraData (TPM2B_DATA: the
nonce), clockInfo (clock u64, resetCount u32, restartCount u32, safe u8), firmwareVersion
u64, then TPMS_QUOTE_INFO: TPML_PCR_SELECTION (count u32; each hash u16, sizeofSelect u8,
bitmap) and pcrDigest (TPM2B_DIGEST) = H(selected PCR values in order).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import BindingError, ParseError, SignatureInvalid, UnsupportedVersion

TPM_GENERATED = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_RSASSA = 0x0014


class _BE:
    def __init__(self, data: bytes) -> None:
        self.d = data
        self.p = 0

    def take(self, n: int, field: str) -> bytes:
        if self.p + n > len(self.d):
            raise ParseError(f"TPMS_ATTEST: truncated at {field}")
        out = self.d[self.p : self.p + n]
        self.p += n
        return out

    def u(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "big")

    def tpm2b(self, field: str) -> bytes:
        return self.take(self.u(2, field), field)


@dataclass(frozen=True)
class TpmsAttestQuote:
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selection: list[tuple[int, list[int]]]  # (hash alg, PCR indices)
    pcr_digest: bytes


def parse_tpms_attest(message: bytes) -> TpmsAttestQuote:
    r = _BE(message)
    if r.u(4, "magic") != TPM_GENERATED:
        raise ParseError("TPMS_ATTEST: bad magic (not TPM_GENERATED_VALUE)")
    st = r.u(2, "type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise UnsupportedVersion(f"TPMS_ATTEST type {st:#x} is not a quote (0x8018)")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock = r.u(8, "clock")
    reset = r.u(4, "resetCount")
    restart = r.u(4, "restartCount")
    safe = r.u(1, "safe")
    fw = r.u(8, "firmwareVersion")
    count = r.u(4, "pcrSelect.count")
    if count > 16:
        raise ParseError("TPMS_ATTEST: too many PCR selections")
    selection = []
    for _ in range(count):
        alg = r.u(2, "pcrSelect.hash")
        size = r.u(1, "pcrSelect.sizeofSelect")
        bitmap = r.take(size, "pcrSelect.bitmap")
        idx = [i for i in range(size * 8) if bitmap[i // 8] & (1 << (i % 8))]
        selection.append((alg, idx))
    digest = r.tpm2b("pcrDigest")
    if r.p != len(message):
        raise ParseError("TPMS_ATTEST: trailing bytes after the quote")
    return TpmsAttestQuote(signer, extra, clock, reset, restart, bool(safe), fw, selection, digest)


@dataclass(frozen=True)
class TpmQuoteInfo:
    """A verified vTPM quote: the nonce it carries and the PCR values it covers (hex)."""

    nonce: bytes
    pcrs: dict[int, str]
    clock: int
    reset_count: int
    restart_count: int
    firmware_version: int


def _strip_tpmt_signature(sig: bytes) -> bytes:
    # A marshalled TPMT_SIGNATURE (RSASSA, SHA-256, TPM2B) is accepted as well as the raw bytes.
    if len(sig) > 6 and int.from_bytes(sig[0:2], "big") == TPM_ALG_RSASSA:
        size = int.from_bytes(sig[4:6], "big")
        if size == len(sig) - 6:
            return sig[6:]
    return sig


def verify_tpm_quote(
    message: bytes, signature: bytes, pcrs: list[bytes], ak: rsa.RSAPublicKey
) -> TpmQuoteInfo:
    """Check the AK's RSASSA-PKCS1-v1_5 / SHA-256 signature, then the PCR digest."""
    att = parse_tpms_attest(message)
    try:
        ak.verify(_strip_tpmt_signature(signature), message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid("the vTPM quote is not signed by the attestation key") from None
    covered: dict[int, str] = {}
    h = hashlib.sha256()
    for alg, indices in att.selection:
        if alg != TPM_ALG_SHA256:
            raise UnsupportedVersion(f"PCR bank {alg:#x} is not SHA-256")
        for i in indices:
            if i >= len(pcrs) or len(pcrs[i]) != 32:
                raise ParseError(f"PCR {i} is selected but not supplied (32 bytes)")
            h.update(pcrs[i])
            covered[i] = pcrs[i].hex()
    if h.digest() != att.pcr_digest:
        raise BindingError("the PCR values do not match the quote's pcrDigest")
    return TpmQuoteInfo(
        nonce=att.extra_data,
        pcrs=covered,
        clock=att.clock,
        reset_count=att.reset_count,
        restart_count=att.restart_count,
        firmware_version=att.firmware_version,
    )
