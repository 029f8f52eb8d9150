"""Tell evidence kinds apart from their bytes (for tools; verification never guesses)."""

from __future__ import annotations

import string

from .azure.evidence import looks_like_azure_evidence
from .azure.hcl import HCL_MAGIC
from .azure.maa import looks_like_jwt
from .cvm_kinds import EvidenceFormat
from .dcap.abi import TEE_TDX, looks_like_quote
from .errors import ParseError
from .snp.abi import looks_like_snp_report

KINDS = tuple(f.value for f in EvidenceFormat)
_HEX = set(string.hexdigits.encode() + b"\r\n\t ")


def decode_text(data: bytes) -> bytes:
    """Hex text (optionally ``0x``-prefixed) becomes bytes; anything else is returned as is."""
    s = data.strip()
    if s[:2] in (b"0x", b"0X"):
        s = s[2:]
    if s and len(s) >= 64 and set(s) <= _HEX:
        try:
            return bytes.fromhex(s.decode())
        except ValueError:
            return data
    return data


def detect_kind(data: bytes) -> str:
    """One of ``sgx``, ``tdx``, ``snp``, ``azure``, ``maa``; raises ParseError when unknown."""
    if looks_like_azure_evidence(data):
        return "azure"
    if looks_like_jwt(data):
        return "maa"
    raw = decode_text(data)
    if raw[:4] == HCL_MAGIC:
        return "azure"
    if looks_like_snp_report(raw):
        return "snp"
    if looks_like_quote(raw):
        tee = int.from_bytes(raw[4:8], "little")
        return "tdx" if tee == TEE_TDX else "sgx"
    raise ParseError("cannot tell what kind of evidence this is (give --kind)")
