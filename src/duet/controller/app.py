"""The controller's HTTP API (FastAPI): the user read API and the owner intent endpoint.

Every error body is `{"error": {"code", "message"}}`; codes map to statuses here, in one
place. A client mistake is always a 4xx; a 500 means a bug or a corrupt store, and its
body never carries internals.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from duet.controller import stream_routes
from duet.controller.errors import DuetError, InvalidRequest
from duet.controller.limits import HeadLimit, RateLimiter
from duet.controller.observe import Metrics, ObserveMiddleware
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.cvm.errors import CvmError
from duet.ledger import strictjson, tiles
from duet.ledger.errors import LedgerError, OutOfRange

log = logging.getLogger("duet.controller.http")

MAX_BODY = 1 << 20
MAX_PAGE = 1000
QUOTE_RATE = 1.0
QUOTE_BURST = 10
#: A page of entries carries at most this many bytes of base64 leaves (plus one leaf when a
#: single leaf is larger).
MAX_PAGE_BYTES = 4 << 20

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "json_too_deep": 400,
    "json_non_finite": 400,
    "json_unsafe_integer": 400,
    "json_lone_surrogate": 400,
    "json_duplicate_key": 400,
    "json_too_large": 413,
    "malformed_intent": 400,
    "invalid_key": 400,
    "invalid_policy": 400,
    "unknown_provider": 400,
    "tee_not_offered": 400,
    "out_of_range": 400,
    "bad_signature": 401,
    "unknown_key": 401,
    "wrong_audience": 401,
    "stale_intent": 401,
    "forbidden": 403,
    "forbidden_in_mode": 403,
    "forbidden_by_policy": 403,
    "invalid_transition": 403,
    "handover_refused": 403,
    "unknown_cvm": 404,
    "unknown_log": 404,
    "no_witnesses": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "replayed_intent": 409,
    "cvm_deleted": 409,
    "cvm_not_ready": 409,
    "host_key_mismatch": 409,
    "evidence_refused": 409,
    "lockdown_failed": 409,
    "control_plane_failed": 409,
    "rollback_detected": 409,
    "handed_over": 409,
    "invalid_credentials": 400,
    "invalid_share": 400,
    "recovery_failed": 409,
    "recovery_off": 404,
    "request_too_large": 413,
    "request_head_too_large": 431,
    "rate_limited": 429,
    "stdin_mismatch": 400,
    "cvm_unreachable": 502,
    "provisioning_failed": 502,
    "command_failed": 502,
    "log_corrupt": 500,
    "collateral_unavailable": 503,
    "quote_mismatch": 503,
    "tee_error": 503,
    "not_in_enclave": 503,
    "not_ready": 503,
    "not_witnessed": 503,
    "unsealed_data_dir": 503,
    "not_primary": 503,
    "standby": 503,
    "store_unavailable": 503,
}


def error_response(code: str, message: str, status: int | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"error": body}, status_code=status or STATUS.get(code, 400))


class _TooLarge(Exception):
    pass


async def _read_body(request: Request) -> bytes:
    """Read at most MAX_BODY bytes, whatever Content-Length claims (it may be absent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _entry_page(size: int, start: int, leaves: list[bytes]) -> AsyncIterator[bytes]:
    """`{"tree_size", "entries": [...]}`, base64-encoding leaves as it goes and sending
    pieces of about 64 KiB (so memory holds the raw page plus one piece)."""
    buf = bytearray(b'{"tree_size":%d,"entries":[' % size)
    for i, leaf in enumerate(leaves):
        buf += b'%s{"index":%d,"leaf":"%s"}' % (b"," if i else b"", start + i, base64.b64encode(leaf))
        if len(buf) >= 64 * 1024:
            yield bytes(buf)
            buf.clear()
    buf += b"]}"
    yield bytes(buf)


IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


async def _bundle(controller: Controller, cvm_id: str, first: int, width: int, leaf0: bytes) -> AsyncIterator[bytes]:
    """A duet entry bundle (`ledger/tiles.py`), one leaf at a time: a bundle of large
    outputs can reach hundreds of MiB, and it is never held in memory whole."""
    yield tiles.encode_bundle([leaf0])
    for index in range(first + 1, first + width):
        yield tiles.encode_bundle(await run_in_threadpool(controller.ledger.leaves, cvm_id, index, index + 1))


def _typed_or_500(exc: Exception) -> JSONResponse:
    code = getattr(exc, "code", "")
    if code in STATUS:
        return error_response(code, str(exc), index=getattr(exc, "index", None))
    if not isinstance(exc, DuetError | LedgerError | CvmError):
        log.error("internal error", exc_info=exc)
    else:
        log.error("unmapped error code %r: %s", code, exc)
    return error_response("internal_error", "internal error (see the controller's log)", 500)


def create_app(controller: Controller, *, quote_limit: RateLimiter | None = None) -> FastAPI:
    """`quote_limit` meters `/v1/controller/quote` per client address: under SGX each call
    is a real quote (enclave I/O, maybe a collateral fetch), which no unauthenticated
    client may ask for without bound."""
    quote_limit = quote_limit or RateLimiter(QUOTE_RATE, QUOTE_BURST)
    metrics = Metrics()
    controller.ledger.on_commit = metrics.append_seconds.observe
    controller.on_command = metrics.command_seconds.observe

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await controller.startup()
        controller.ready = True
        controller.setup.start()  # the periodic control-plane re-check
        yield
        controller.ready = False
        await stream_routes.drain()  # streamed commands whose client left are logged to the end
        await controller.setup.stop()
        await controller.shutdown()

    async def observe(request: Request) -> None:
        """Any request may carry a checkpoint the client saw before (rollback defence)."""
        header = request.headers.get("duet-checkpoint")
        if header:
            try:
                note = base64.b64decode(header, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise InvalidRequest("Duet-Checkpoint must be the base64 of a checkpoint note") from None
            controller.observe_checkpoint(note)

    app = FastAPI(
        dependencies=[Depends(observe)],
        title="duet controller",
        version=controller.info()["version"],
        description="Owns confidential VMs; every action is in a verifiable log.",
        lifespan=lifespan,
    )

    app.add_middleware(HeadLimit)

    async def _typed_error(_: Request, exc: Exception) -> JSONResponse:
        return _typed_or_500(exc)

    from duet.tee.gramine import GramineError

    for typed in (DuetError, LedgerError, CvmError, GramineError):
        app.add_exception_handler(typed, _typed_error)

    @app.exception_handler(Exception)
    async def _any_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return error_response("internal_error", "internal error (see the controller's log)", 500)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error_response("invalid_request", problems or "invalid request", 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return error_response(code, str(exc.detail), exc.status_code)

    app.add_middleware(ObserveMiddleware, metrics=metrics)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the event loop answers (it does while commands run)."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Any:
        """Readiness: start-up recovery is done and the stores are open."""
        if not controller.ready:
            return error_response("not_ready", "the controller is starting or stopping", 503)
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.exposition([(v["status"], v["mode"]) for v in controller.list_views()])
        return Response(body, media_type=content_type)

    @app.get("/v1/controller")
    async def controller_info() -> dict[str, Any]:
        return {**controller.info(), "tlog_prefix": "/v1/controller/log/tlog/"}

    @app.get("/v1/controller/quote")
    async def controller_quote(request: Request, nonce: str = Query(..., description="hex, 1-64 bytes")) -> Any:
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2}){1,64}", nonce):
            return error_response("invalid_request", "nonce must be hex of 1 to 64 bytes")
        client = request.client.host if request.client else "?"
        if not quote_limit.allow(client):
            wait = max(1, math.ceil(quote_limit.retry_after(client)))
            response = error_response("rate_limited", f"too many quote requests from {client}; retry in {wait} s")
            response.headers["Retry-After"] = str(wait)
            return response
        # A real quote is blocking enclave I/O (and maybe a collateral fetch).
        return await run_in_threadpool(controller.quote, bytes.fromhex(nonce))

    @app.get("/v1/cvms")
    async def list_cvms() -> dict[str, Any]:
        return {"cvms": controller.list_views()}

    @app.get("/v1/cvms/{cvm_id}")
    async def get_cvm(cvm_id: str) -> dict[str, Any]:
        return {**controller.view(controller.record(cvm_id)), "tlog_prefix": f"/v1/cvms/{cvm_id}/tlog/"}

    @app.get("/v1/cvms/{cvm_id}/checkpoint", response_class=PlainTextResponse)
    async def checkpoint(cvm_id: str) -> PlainTextResponse:
        return PlainTextResponse(controller.checkpoint(cvm_id), media_type="text/plain; charset=utf-8")

    @app.get("/v1/cvms/{cvm_id}/witnessed")
    async def witnessed(cvm_id: str, size: int | None = Query(None, ge=1)) -> Any:
        """The proof that the CVM head of `size` (default: the current one) is committed by
        a `heads` entry of a witness-cosigned controller-log checkpoint (witnessing.py)."""
        controller.record(cvm_id)
        head = controller.ledger.tree_head(cvm_id).size
        want = head if size is None else size
        if want > head or want == 0:
            return error_response("out_of_range", f"need 1 <= size <= {head}; got {want}")
        return await controller.witnessing.covering(cvm_id, want)

    async def log_entries(log_id: str, start: int, end: int | None) -> Any:
        size = controller.ledger.tree_head(log_id).size
        stop = size if end is None else end
        if start > size or stop < start:
            return error_response("out_of_range", f"range [{start}, {stop}) is outside the log of size {size}")
        stop = min(stop, size, start + MAX_PAGE)
        # Read in a worker thread (SQLite and hashing are blocking), bounded in bytes: the
        # page ends early once MAX_PAGE_BYTES of base64 would be exceeded (always at least
        # one entry), and the client asks again from where it ended.
        leaves = await run_in_threadpool(controller.ledger.leaves_page, log_id, start, stop, MAX_PAGE_BYTES * 3 // 4)
        return StreamingResponse(_entry_page(size, start, leaves), media_type="application/json")

    def log_inclusion(log_id: str, index: int, tree_size: int) -> Any:
        size = controller.ledger.tree_head(log_id).size
        if tree_size > size or index >= tree_size:
            return error_response(
                "out_of_range", f"need index < tree_size <= {size}; got index {index}, tree_size {tree_size}"
            )
        hashes = controller.ledger.inclusion_proof(log_id, index, tree_size)
        return {"index": index, "tree_size": tree_size, "hashes": [base64.b64encode(h).decode() for h in hashes]}

    def log_consistency(log_id: str, old: int, new: int) -> Any:
        size = controller.ledger.tree_head(log_id).size
        if not old <= new <= size:
            return error_response("out_of_range", f"need old <= new <= {size}; got old {old}, new {new}")
        hashes = controller.ledger.consistency_proof(log_id, old, new)
        return {"old": old, "new": new, "hashes": [base64.b64encode(h).decode() for h in hashes]}

    @app.get("/v1/cvms/{cvm_id}/entries")
    async def get_entries(cvm_id: str, start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> Any:
        controller.record(cvm_id)
        return await log_entries(cvm_id, start, end)

    @app.get("/v1/cvms/{cvm_id}/proofs/inclusion")
    async def inclusion(cvm_id: str, index: int = Query(..., ge=0), tree_size: int = Query(..., ge=1)) -> Any:
        controller.record(cvm_id)
        return log_inclusion(cvm_id, index, tree_size)

    @app.get("/v1/cvms/{cvm_id}/proofs/consistency")
    async def consistency(cvm_id: str, old: int = Query(..., ge=0), new: int = Query(..., ge=0)) -> Any:
        controller.record(cvm_id)
        return log_consistency(cvm_id, old, new)

    # The controller log (origin duet/<controller-id>/controller): claims and owner-key
    # changes, read exactly as a CVM log is.
    @app.get("/v1/controller/log/checkpoint", response_class=PlainTextResponse)
    async def controller_log_checkpoint() -> PlainTextResponse:
        return PlainTextResponse(controller.controller_log_checkpoint(), media_type="text/plain; charset=utf-8")

    @app.get("/v1/controller/log/witnessed")
    async def controller_log_witnessed() -> Any:
        """The newest controller-log checkpoint a quorum of witnesses cosigned (witnessing.py)."""
        return await controller.witnessing.cosigned_checkpoint()

    @app.get("/v1/controller/log/entries")
    async def controller_log_entries(start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> Any:
        return await log_entries(CONTROLLER_LOG, start, end)

    @app.get("/v1/controller/log/proofs/inclusion")
    async def controller_log_inclusion(index: int = Query(..., ge=0), tree_size: int = Query(..., ge=1)) -> Any:
        return log_inclusion(CONTROLLER_LOG, index, tree_size)

    @app.get("/v1/controller/log/proofs/consistency")
    async def controller_log_consistency(old: int = Query(..., ge=0), new: int = Query(..., ge=0)) -> Any:
        return log_consistency(CONTROLLER_LOG, old, new)

    @app.get("/v1/cvms/{cvm_id}/tlog/checkpoint", response_class=PlainTextResponse)
    async def tlog_checkpoint(cvm_id: str) -> PlainTextResponse:
        """The C2SP tlog-tiles view of a CVM log: this checkpoint, then `tile/...` below."""
        return PlainTextResponse(controller.checkpoint(cvm_id), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache"})

    async def log_tile(log_id: str, path: str) -> Response:
        try:
            level, index, width = tiles.parse_tile_path(path)
            if level >= 0:
                data = await run_in_threadpool(controller.ledger.tile, log_id, level, index, width)
                return Response(data, media_type="application/octet-stream", headers=IMMUTABLE)
            first = index * tiles.TILE_WIDTH
            if first + width > controller.ledger.tree_head(log_id).size:
                raise OutOfRange(f"no entry bundle {index} of width {width} in this log")
            leaves = await run_in_threadpool(controller.ledger.leaves, log_id, first, first + 1)
        except (tiles.TileError, OutOfRange) as exc:
            return error_response("not_found", str(exc), 404)
        return StreamingResponse(_bundle(controller, log_id, first, width, leaves[0]),
                                 media_type="application/octet-stream", headers=IMMUTABLE)

    @app.get("/v1/cvms/{cvm_id}/tlog/tile/{path:path}")
    async def tlog_tile(cvm_id: str, path: str) -> Response:
        controller.record(cvm_id)
        return await log_tile(cvm_id, path)

    @app.get("/v1/controller/log/tlog/checkpoint", response_class=PlainTextResponse)
    async def controller_tlog_checkpoint() -> PlainTextResponse:
        """The controller log as C2SP tlog-tiles (what witnesses cosign): its checkpoint with
        the cosignatures collected, then `tile/...` below."""
        return PlainTextResponse(controller.controller_log_checkpoint(), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/v1/controller/log/tlog/tile/{path:path}")
    async def controller_tlog_tile(path: str) -> Response:
        controller._check_controller_log()  # refuses, as the checkpoint does, a log shown rolled back
        return await log_tile(CONTROLLER_LOG, path)

    from duet.controller.handover_api import add_handover_routes

    add_handover_routes(app, controller)
    from duet.controller.standby import add_standby_routes

    add_standby_routes(app, controller)
    from duet.controller.recovery_api import add_recovery_routes

    add_recovery_routes(app, controller)

    async def intent_body(request: Request) -> tuple[str, bytes | None, bytes | None] | JSONResponse:
        """`{"jws": ..., "stdin"?: <base64>, "sealed"?: <base64>}` as (jws, stdin, sealed), or
        the error response that refuses it."""
        try:
            raw = await _read_body(request)
        except _TooLarge:
            return error_response("request_too_large", f"request body is larger than {MAX_BODY} bytes")
        except ClientDisconnect:
            # The client left, or its body was too slow and the server closed it
            # (controller/limits.py); nobody reads this answer.
            return error_response("invalid_request", "the client disconnected before sending the whole body")
        try:
            # A large body is parsed in a worker thread, so the event loop keeps serving.
            parse = functools.partial(strictjson.loads, raw, max_bytes=MAX_BODY, what="request body")
            body = await run_in_threadpool(parse) if len(raw) > 64 * 1024 else parse()
        except strictjson.JsonInputError as exc:
            return error_response(exc.code, str(exc))
        if not isinstance(body, dict) or not {"jws"} <= set(body) <= {"jws", "stdin", "sealed"} \
                or not isinstance(body["jws"], str) or not isinstance(body.get("stdin", ""), str) \
                or not isinstance(body.get("sealed", ""), str):
            return error_response("invalid_request", 'request body must be {"jws": "<compact JWS>", '
                                                     '"stdin"?: "<base64>", "sealed"?: "<base64>"}')
        attached: dict[str, bytes | None] = {"stdin": None, "sealed": None}
        for name in attached:
            if name in body:
                try:
                    attached[name] = base64.b64decode(body[name], validate=True)
                except ValueError:
                    return error_response("invalid_request", f"{name} must be base64")
        return body["jws"], attached["stdin"], attached["sealed"]

    @app.post("/v1/intents")
    async def post_intent(request: Request) -> Any:
        parsed = await intent_body(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        status, result = await controller.submit(*parsed)
        return JSONResponse(result, status_code=status)

    @app.post("/v1/intents/stream")
    async def post_intent_stream(request: Request) -> Any:
        parsed = await intent_body(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        if parsed[2] is not None:
            return error_response("invalid_request", "a sealed attachment goes to /v1/intents, not to a stream")
        return await stream_routes.submit_streamed(controller, parsed[0], parsed[1], _typed_or_500)

    @app.get("/v1/cvms/{cvm_id}/commands/{index}/follow")
    async def follow_command(cvm_id: str, index: int) -> Any:
        if index < 0:
            return error_response("out_of_range", "a command index is not negative")
        controller.record(cvm_id)
        return await stream_routes.follow_command(controller, cvm_id, index)

    return app
