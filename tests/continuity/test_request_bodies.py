"""The handover, standby and recovery-share endpoints read their bodies through one
bounded reader (controller/handover_api.py `read_json_object`). A network attacker
reaching a recovering or primary enclave streams an endless body, or sends JSON that is
not an object: it gets a typed `invalid_request`, and the reader stops at the bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from duet.controller.errors import InvalidRequest
from duet.controller.handover_api import MAX_HANDOVER_REQUEST, read_json_object
from duet.controller.recovery import MAX_SHARE_REQUEST


def _request(chunks: list[bytes], pulled: list[int]) -> Request:
    """A request whose body arrives in `chunks`, with no Content-Length (a stream)."""
    it = iter(chunks)

    async def receive() -> dict[str, Any]:
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def _read(chunks: list[bytes], max_bytes: int, pulled: list[int] | None = None) -> dict[str, Any]:
    return asyncio.run(read_json_object(_request(chunks, [] if pulled is None else pulled), max_bytes, "share request"))


@pytest.mark.parametrize("limit", [MAX_SHARE_REQUEST, MAX_HANDOVER_REQUEST])
def test_an_endless_body_is_refused_at_the_bound(limit: int) -> None:
    pulled: list[int] = []
    chunk = b" " * 4096
    with pytest.raises(InvalidRequest) as exc:
        _read([chunk] * (limit // len(chunk) + 1000), limit, pulled)
    assert exc.value.code == "invalid_request" and f"larger than {limit} bytes" in exc.value.message
    # It stopped reading at the first chunk past the bound, not at the end of the stream.
    assert sum(pulled) <= limit + len(chunk)


@pytest.mark.parametrize("body, says", [
    (b"[1, 2]", "must be a JSON object"),
    (b'"index"', "must be a JSON object"),
    (b"{not json", "share request"),
    (b'{"index": 1, "index": 2}', "duplicate key"),  # strict JSON: no second value to pick
])
def test_a_body_that_is_no_json_object_is_a_typed_refusal(body: bytes, says: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        _read([body], MAX_SHARE_REQUEST)
    assert says in exc.value.message


def test_a_json_object_in_pieces_is_read_whole() -> None:
    assert _read([b'{"index": ', b'3, "sealed"', b': "AA=="}'], MAX_SHARE_REQUEST) == {"index": 3, "sealed": "AA=="}
