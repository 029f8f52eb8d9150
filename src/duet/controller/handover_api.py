"""The predecessor's two handover endpoints (controller/continuity.py has the protocol).

`GET /v1/controller/handover/challenge` hands out a fresh challenge; `POST
/v1/controller/handover` takes the successor's quote over its key and that challenge, and
answers with K and the state encrypted to that key, or `handover_refused` (logged)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from duet.controller.errors import InvalidRequest
from duet.controller.service import Controller
from duet.ledger import strictjson

#: A quote, its collateral and a few fields: generous, and far below MAX_BODY.
MAX_HANDOVER_REQUEST = 256 * 1024


async def read_json_object(request: Request, max_bytes: int, what: str) -> dict[str, Any]:
    """A small strict-JSON object body (handover, standby and recovery-share requests):
    read no more than `max_bytes`, whatever the client sends, and refuse anything else
    with a typed error."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidRequest(f"{what} larger than {max_bytes} bytes")
        chunks.append(chunk)
    try:
        body = strictjson.loads(b"".join(chunks), max_bytes=max_bytes, what=what)
    except strictjson.JsonInputError as exc:
        raise InvalidRequest(str(exc)) from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return body


def add_handover_routes(app: FastAPI, controller: Controller) -> None:
    @app.get("/v1/controller/handover/challenge")
    async def handover_challenge() -> dict[str, Any]:
        return controller.handover.challenge()

    @app.post("/v1/controller/handover")
    async def handover(request: Request) -> dict[str, Any]:
        body = await read_json_object(request, MAX_HANDOVER_REQUEST, "handover request")
        return await controller.handover.handover(body)
