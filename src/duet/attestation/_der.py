"""Just enough DER to read and write the vendor extensions (Intel SGX PCK, AMD VCEK).

Definite lengths only; every read is bounds-checked and raises :class:`ParseError`.
"""

from __future__ import annotations

from .errors import ParseError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30


# -- writing -----------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def seq(*items: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(items))


def octets(value: bytes) -> bytes:
    return tlv(TAG_OCTET_STRING, value)


def _int_body(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative integers are not needed here")
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def integer(n: int) -> bytes:
    return tlv(TAG_INTEGER, _int_body(n))


def enumerated(n: int) -> bytes:
    return tlv(TAG_ENUMERATED, _int_body(n))


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(body))


# -- reading -----------------------------------------------------------------------------


def read_tlv(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Return (tag, value, end) of the element at ``pos``."""
    if pos + 2 > len(data):
        raise ParseError("DER: truncated element")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ParseError("DER: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise ParseError("DER: element runs past the end")
    return tag, data[pos:end], end


def read_single(data: bytes, tag: int) -> bytes:
    """Decode exactly one element of the given tag spanning all of ``data``."""
    t, value, end = read_tlv(data)
    if t != tag or end != len(data):
        raise ParseError(f"DER: expected a single element with tag {tag:#x}")
    return value


def children(value: bytes) -> list[tuple[int, bytes]]:
    """The elements inside a constructed value, as (tag, value) pairs."""
    out = []
    pos = 0
    while pos < len(value):
        tag, v, pos = read_tlv(value, pos)
        out.append((tag, v))
    return out


def decode_integer(value: bytes) -> int:
    if not value:
        raise ParseError("DER: empty INTEGER")
    return int.from_bytes(value, "big", signed=True)


def decode_oid(value: bytes) -> str:
    if not value:
        raise ParseError("DER: empty OID")
    parts = [value[0] // 40, value[0] % 40] if value[0] < 80 else [2, value[0] - 80]
    n = 0
    for b in value[1:]:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(n)
            n = 0
    return ".".join(str(p) for p in parts)
