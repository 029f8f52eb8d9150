"""A bounds-checked little-endian reader: parsers never see IndexError or struct.error."""

from __future__ import annotations

from .errors import ParseError


class Reader:
    """Reads fields from ``data`` in order; every read is checked against the end."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str, pos: int = 0) -> None:
        self._data = data
        self._pos = pos
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise ParseError(
                f"{self._what}: truncated at {field} (needs {n} bytes at offset {self._pos}, "
                f"{len(self._data)} in all)"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")


def le(data: bytes, off: int, n: int) -> int:
    """Little-endian unsigned integer from a slice known to be in range."""
    return int.from_bytes(data[off : off + n], "little")
