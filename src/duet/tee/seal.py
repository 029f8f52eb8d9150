"""Local sealing: the enclave encrypts a small secret (the state key K) to itself.

A sealed blob opens only in an enclave of the same build (MRENCLAVE) on the same CPU at
the same TCB level (CPUSVN), because the sealing key comes from EGETKEY with the
MRENCLAVE key policy (Gramine's ``_sgx_mrenclave`` key). That is why sealing is only ever a
*convenience copy* of K (docs/continuity.md): a new build, a microcode update or a lost
host each make the local seal unreadable, and K then comes from the predecessor
(`--join`) instead.

Blob format (all integers big-endian)::

    b"duet-seal-v1\\0" | policy (1 byte, 1 = MRENCLAVE) | cpusvn (2) | mrenclave (32) |
    nonce (12) | AES-256-GCM(ciphertext || tag)

The header is in the clear (as SGX's KEYREQUEST is kept next to sealed data) and is the
AEAD's associated data, so it is authenticated; it lets the error say *why* a blob does not
open (another build, another CPUSVN) rather than only that it does not.
"""

from __future__ import annotations

import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"duet-seal-v1\0"
POLICY_MRENCLAVE = 1
_HEADER = len(MAGIC) + 1 + 2 + 32
_NONCE = 12


class SealUnreadable(Exception):
    """The local seal does not open here (another build, another CPUSVN, another host,
    or a damaged blob). ``code`` is stable: the CLI exits with it, no traceback."""

    code = "seal_unreadable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def seal_with(key: bytes, plaintext: bytes, *, mrenclave: bytes, cpusvn: int) -> bytes:
    header = MAGIC + bytes([POLICY_MRENCLAVE]) + cpusvn.to_bytes(2, "big") + mrenclave
    nonce = os.urandom(_NONCE)
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, header)


def header_of(blob: bytes) -> tuple[int, bytes]:
    """(cpusvn, mrenclave) a blob was sealed under; SealUnreadable if it is no seal."""
    if len(blob) < _HEADER + _NONCE + 16 or not blob.startswith(MAGIC) or blob[len(MAGIC)] != POLICY_MRENCLAVE:
        raise SealUnreadable("the sealed state key is not a duet seal (damaged or replaced)")
    off = len(MAGIC) + 1
    return int.from_bytes(blob[off:off + 2], "big"), blob[off + 2:off + 34]


def unseal_with(key: bytes, blob: bytes, *, mrenclave: bytes, cpusvn: int) -> bytes:
    """Open a blob with this enclave's sealing key, saying why it cannot be opened."""
    sealed_svn, sealed_mr = header_of(blob)
    if not hmac.compare_digest(sealed_mr, mrenclave):
        raise SealUnreadable(
            f"the state key was sealed by another build (MRENCLAVE {sealed_mr.hex()[:16]}…, this is "
            f"{mrenclave.hex()[:16]}…): a new build cannot open the old seal; join the old build "
            "(`duet controller serve --join URL`) after the owner approved this one")
    if sealed_svn != cpusvn:
        raise SealUnreadable(
            f"the state key was sealed at CPUSVN {sealed_svn}, this platform is at CPUSVN {cpusvn} "
            "(a microcode or BIOS update changes the sealing key): the local seal cannot be opened; "
            "the state key must come from another instance holding it (--join)")
    try:
        return AESGCM(key).decrypt(blob[_HEADER:_HEADER + _NONCE], blob[_HEADER + _NONCE:], blob[:_HEADER])
    except InvalidTag:
        raise SealUnreadable(
            "the sealed state key does not open with this platform's sealing key (another host, a "
            "microcode/TCB update, or a damaged or replaced blob)") from None
