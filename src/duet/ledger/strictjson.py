"""One strict JSON reader for every JSON input: request bodies, JWS payloads, log leaves.

Python's `json` accepts what other parsers and our own canonical encoder (RFC 8785) do
not: `NaN`/`Infinity`, integers of any size, strings with lone surrogates, duplicate keys,
and nesting deep enough to exhaust the interpreter's stack. Each of these, read from a
hostile client, used to surface later as a 500 (the canonical encoder refusing what the
parser let in) or as two parsers disagreeing on one document. This module refuses them at
the edge, each with its own stable `code`, so the HTTP layer answers 4xx and a client can
tell which rule it broke.

Nesting beyond the standard parser's recursion limit is caught as the `RecursionError` it
raises (the C parser counts its own depth); anything shallower is measured after parsing,
without recursion.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from duet.ledger.errors import LedgerError

#: Integers JSON numbers (IEEE doubles) carry exactly (RFC 8785 §3.2.2.3, I-JSON RFC 7493).
MAX_SAFE_INT = 2**53 - 1
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1 << 20

_SURROGATE = re.compile("[\ud800-\udfff]")
#: The only way a parsed string can hold a lone surrogate that the text did not: an escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(LedgerError):
    """A JSON input is not strict JSON; the subclass names the rule it broke."""

    code = "invalid_json"


class JsonTooLarge(JsonInputError):
    code = "json_too_large"


class JsonTooDeep(JsonInputError):
    code = "json_too_deep"


class JsonNonFinite(JsonInputError):
    code = "json_non_finite"


class JsonUnsafeInteger(JsonInputError):
    code = "json_unsafe_integer"


class JsonLoneSurrogate(JsonInputError):
    code = "json_lone_surrogate"


class JsonDuplicateKey(JsonInputError):
    code = "json_duplicate_key"


#: Every code this module raises, for the HTTP layer's status table.
CODES = tuple(c.code for c in (JsonInputError, JsonTooLarge, JsonTooDeep, JsonNonFinite,
                                JsonUnsafeInteger, JsonLoneSurrogate, JsonDuplicateKey))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonDuplicateKey(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise JsonNonFinite(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # A literal such as 1e999 overflows to infinity, which no encoder can write back.
        raise JsonNonFinite(f"number {text[:32]} is out of the range of a double")
    return value


def _exact_int(text: str) -> int:
    # Length first: int() of thousands of digits is slow, and refused beyond 4300.
    value = int(text) if len(text) <= 17 else MAX_SAFE_INT + 1
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise JsonUnsafeInteger(f"integer {text[:32]}… is beyond ±(2**53 - 1)")
    return value


def _double_int(text: str) -> int | float:
    """For canonical leaves: an integer literal beyond 2**53 is a double that JCS prints
    without a fraction (2.0**53 as ``9007199254740992``), so it is read as one and the
    caller's canonical re-encoding rejects literals that are not exactly representable."""
    if len(text) > 17:
        return _parse_float(text)
    value = int(text)
    return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else _parse_float(text)


def _not_utf8(raw: bytes, what: str) -> JsonInputError:
    """UTF-8-encoded surrogates (CESU-8 style) are the same flaw as escaped ones."""
    try:
        raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return JsonInputError(f"{what} is not UTF-8")
    return JsonLoneSurrogate(f"{what} contains an encoded surrogate code point")


def loads(
    raw: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    big_ints_as_doubles: bool = False,
    what: str = "JSON",
) -> Any:
    """Parse strict JSON, or raise a `JsonInputError` subclass naming the broken rule.

    `big_ints_as_doubles` is for RFC 8785 leaves only (see `_double_int`); at the edges an
    integer beyond ±(2**53 - 1) is refused.
    """
    if isinstance(raw, str):
        text = raw
        size = len(raw.encode("utf-8", "surrogatepass"))
    else:
        size = len(raw)
        if size > max_bytes:
            raise JsonTooLarge(f"{what} is {size} bytes; at most {max_bytes} are accepted")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(bytes(raw), what) from None
    if size > max_bytes:
        raise JsonTooLarge(f"{what} is {size} bytes; at most {max_bytes} are accepted")
    if _SURROGATE.search(text):
        raise JsonLoneSurrogate(f"{what} contains a surrogate code point outside a pair")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_parse_float,
            parse_int=_double_int if big_ints_as_doubles else _exact_int,
        )
    except JsonInputError:
        raise
    except RecursionError:
        # The C parser counts its recursion; nothing this deep is within the limit.
        raise JsonTooDeep(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise JsonInputError(f"{what} is not JSON: {str(exc)[:200]}") from None
    escapes = _SURROGATE_ESCAPE.search(text) is not None
    if escapes or text.count("[") + text.count("{") > max_depth:
        _walk(value, max_depth, escapes, what)
    return value


def _walk(value: Any, max_depth: int, strings: bool, what: str) -> None:
    """Nesting depth, and (when the text has surrogate escapes) the strings: `\\ud800`
    decodes to a lone surrogate, which UTF-8 cannot carry (RFC 8259 §8.2). Iterative, so
    it cannot itself run out of stack; only containers are pushed."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    if strings and isinstance(value, str):
        _check_string(value, what)
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise JsonTooDeep(f"{what} nests deeper than {max_depth} levels")
        children = item.values() if isinstance(item, dict) else item
        if strings and isinstance(item, dict):
            for key in item:
                _check_string(key, what)
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif strings and isinstance(child, str):
                _check_string(child, what)


def _check_string(text: str, what: str) -> None:
    if _SURROGATE.search(text):
        raise JsonLoneSurrogate(f"{what} contains an escaped lone surrogate")


def loads_object(raw: bytes | str, **kwargs: Any) -> dict[str, Any]:
    value = loads(raw, **kwargs)
    if not isinstance(value, dict):
        raise JsonInputError(f"{kwargs.get('what', 'JSON')} must be a JSON object")
    return value
