"""Stopping promptly on SIGTERM, with clients still connected.

uvicorn's graceful shutdown asks each connection to close and waits until every one is
gone. Over TLS, closing sends close_notify and asyncio then waits for the peer's
close_notify for up to 30 s (`ssl_shutdown_timeout`): a client that keeps an idle
keep-alive connection open without reading (any pooled HTTP client, or a hostile one)
held the controller up for 30 s per stop, longer than a supervisor's stop timeout.

`PromptServer` lets each connection close politely for `GRACE_S`, then aborts those with
no request in flight (the TCP connection is dropped; there is nothing to lose on it).
A connection whose request is still running is left alone: its command finishes, is
logged, and its answer is sent, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn

#: How long idle connections get to close politely once the controller stops.
GRACE_S = 1.0
_POLL_S = 0.1


def _idle(connection: Any) -> bool:
    cycle = getattr(connection, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


class PromptServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        reaper = asyncio.ensure_future(self._abort_idle_after_grace())
        try:
            await super().shutdown(sockets)
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    async def _abort_idle_after_grace(self) -> None:
        await asyncio.sleep(GRACE_S)
        while True:
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None and _idle(connection):
                    transport.abort()
            await asyncio.sleep(_POLL_S)
