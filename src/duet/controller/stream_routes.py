"""The HTTP side of streamed runs: `POST /v1/intents/stream` and
`GET /v1/cvms/{id}/commands/{index}/follow` (NDJSON, docs/wire-formats.md).

Both read what they send from the log (`streaming.follow`), never from the command
itself, so the owner is shown only output already on the record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from duet.controller import streaming
from duet.controller.errors import DuetError
from duet.controller.service import Controller
from duet.ledger import entries

NDJSON = "application/x-ndjson"


class TooManyFollowers(DuetError):
    code = "rate_limited"


class NotACommand(DuetError):
    code = "out_of_range"


#: Intents carried out for streamed requests: referenced here until they finish, so a
#: client that leaves never cancels (or loses) one.
_running: set[asyncio.Future[Any]] = set()


async def drain() -> None:
    """Wait for the streamed intents still running (at shutdown: their results are
    logged, as a non-streamed request's are before the server stops)."""
    if _running:
        await asyncio.wait(set(_running))


def _follow(controller: Controller, cvm_id: str, command_index: int,
            until: asyncio.Future[Any] | None = None) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    async def leaves(start: int, end: int) -> list[bytes]:
        return await run_in_threadpool(controller.ledger.leaves, cvm_id, start, end)

    return streaming.follow(leaves, lambda: controller.ledger.tree_head(cvm_id).size, controller.watch,
                            cvm_id, command_index, until)


async def submit_streamed(
    controller: Controller, jws: str, stdin_data: bytes | None, to_error: Callable[[Exception], JSONResponse],
) -> Response:
    """Carry out the intent in its own task. Until it logs a command this is an ordinary
    request (a refusal or an operation without a command is answered as `/v1/intents`
    answers it); from then on the answer streams."""
    stream = streaming.RunStream()

    async def carry_out() -> tuple[int, dict[str, Any]]:
        with streaming.streaming(stream):
            return await controller.submit(jws, stdin_data)

    task = asyncio.ensure_future(carry_out())
    _running.add(task)
    task.add_done_callback(_running.discard)
    # A client that left never reads the outcome; its error is logged by the controller.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    pending: set[asyncio.Future[Any]] = {task, stream.command, stream.created}
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if stream.created.done() and not stream.command.done():
        return StreamingResponse(_created_events(stream.created.result(), task, to_error), media_type=NDJSON)
    if not stream.command.done():
        try:
            status, body = task.result()
        except Exception as exc:
            return to_error(exc)
        return JSONResponse(body, status_code=status)
    cvm_id, command_index = stream.cvm, stream.command.result()
    task.add_done_callback(lambda _: controller.watch.appended(cvm_id))

    async def events() -> AsyncIterator[bytes]:
        yield streaming.line({"event": "accepted", "cvm": cvm_id, "command_index": command_index})
        async for index, e in _follow(controller, cvm_id, command_index, task):
            if e["type"] == "output":
                yield streaming.line(streaming.output_event(index, e))
            elif e["type"] == "heartbeat":
                yield streaming.line({"event": "heartbeat"})
        try:
            status, body = await asyncio.shield(task)
        except Exception as exc:
            err = to_error(exc)
            status, body = err.status_code, json.loads(bytes(err.body))
        yield streaming.line({"event": "end", "status": status, "body": body})

    return StreamingResponse(events(), media_type=NDJSON)


async def _created_events(view: dict[str, Any], task: asyncio.Future[tuple[int, dict[str, Any]]],
                          to_error: Callable[[Exception], JSONResponse]) -> AsyncIterator[bytes]:
    """A streamed `cvm.create`: the CVM as soon as it is logged (a client that asked not
    to wait leaves here; provisioning goes on), then heartbeats, then the create's answer."""
    yield streaming.line({"event": "created", "cvm": view})
    while not task.done():
        await asyncio.wait({task}, timeout=streaming.HEARTBEAT_S)
        if not task.done():
            yield streaming.line({"event": "heartbeat"})
    try:
        status, body = task.result()
    except Exception as exc:
        err = to_error(exc)
        status, body = err.status_code, json.loads(bytes(err.body))
    yield streaming.line({"event": "end", "status": status, "body": body})


async def follow_command(controller: Controller, cvm_id: str, command_index: int) -> Response:
    """Follow a logged command to its result: the output it logs from now on (and what it
    logged before), then the body `/v1/intents` answers for it."""
    size = controller.ledger.tree_head(cvm_id).size
    if command_index >= size:
        raise NotACommand(f"entry {command_index} is beyond the log (size {size})")
    leaf = (await run_in_threadpool(controller.ledger.leaves, cvm_id, command_index, command_index + 1))[0]
    command = entries.decode(leaf)
    if command["type"] != "command":
        raise NotACommand(f"entry {command_index} is a {command['type']} entry, not a command")
    watch = controller.watch
    if watch.followers >= streaming.MAX_FOLLOWERS:
        raise TooManyFollowers(f"more than {streaming.MAX_FOLLOWERS} streams follow commands; retry later")
    action = command.get("action")

    async def events() -> AsyncIterator[bytes]:
        watch.followers += 1
        try:
            yield streaming.line({"event": "accepted", "cvm": cvm_id, "command_index": command_index})
            async for index, e in _follow(controller, cvm_id, command_index):
                if e["type"] == "output":
                    yield streaming.line(streaming.output_event(index, e))
                elif e["type"] == "heartbeat":
                    yield streaming.line({"event": "heartbeat"})
                else:
                    body = streaming.outcome_from_log(cvm_id, command_index, index, e,
                                                      None if action is None else str(action))
                    yield streaming.line({"event": "end", "status": 200, "body": body})
        finally:
            watch.followers -= 1

    return StreamingResponse(events(), media_type=NDJSON)
