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


def add_handover_routes(app: FastAPI, controller: Controller) -> None:
    @app.get("/v1/controller/handover/challenge")
    async def handover_challenge() -> dict[str, Any]:
        return controller.handover.challenge()

    @app.post("/v1/controller/handover")
    async def handover(request: Request) -> dict[str, Any]:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_HANDOVER_REQUEST:
                raise InvalidRequest(f"handover request larger than {MAX_HANDOVER_REQUEST} bytes")
        try:
            body = strictjson.loads(raw, max_bytes=MAX_HANDOVER_REQUEST, what="handover request")
        except strictjson.JsonInputError as exc:
            raise InvalidRequest(str(exc)) from None
        if not isinstance(body, dict):
            raise InvalidRequest("handover request must be a JSON object")
        return await controller.handover.handover(body)
