"""Shamir's secret sharing of the 32-byte state key K, M of N.

The field arithmetic is pycryptodome's (`Crypto.Protocol.SecretSharing.Shamir`, GF(2^128),
a maintained library) rather than our own: a hand-written field is one more place for a
subtle bug in the one primitive whose failure hands K out. pycryptodome shares 16-byte
secrets, so K is shared as its two halves, each with its own random polynomial and the
same x-coordinates: a share is (x, y_high | y_low). Fewer than M shares of either half
say nothing about it, so fewer than M shares say nothing about K.

Reconstruction is interpolation: any M distinct shares give *some* 32 bytes. Whether they
are K is decided by the caller (the commitment in the controller log, and K opening the
state), never here.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

KEY_LEN = 32
MAX_SHARES = 16


def split(secret: bytes, threshold: int, count: int) -> list[tuple[int, bytes]]:
    """`count` shares (x = 1..count, y = 32 bytes) of which any `threshold` give `secret`."""
    if len(secret) != KEY_LEN:
        raise ValueError("the secret is 32 bytes")
    if not 1 <= threshold <= count <= MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= count <= {MAX_SHARES}")
    if threshold == 1:
        # pycryptodome needs a polynomial of degree >= 1; M = 1 means each share is K.
        return [(x, secret) for x in range(1, count + 1)]
    high = Shamir.split(threshold, count, secret[:16])
    low = Shamir.split(threshold, count, secret[16:])
    out = []
    for (xh, yh), (xl, yl) in zip(high, low, strict=True):
        assert xh == xl
        out.append((int(xh), bytes(yh) + bytes(yl)))
    return out


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret the polynomial through these shares gives at 0 (pass exactly M)."""
    if not shares or any(len(y) != KEY_LEN or not 1 <= x <= 255 for x, y in shares):
        raise ValueError("shares are (x in 1..255, 32 bytes)")
    if len({x for x, _ in shares}) != len(shares):
        raise ValueError("duplicate share index")
    if len(shares) == 1:
        return bytes(shares[0][1])
    high = Shamir.combine([(x, y[:16]) for x, y in shares])
    low = Shamir.combine([(x, y[16:]) for x, y in shares])
    return bytes(high) + bytes(low)
