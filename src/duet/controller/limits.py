"""Resource bounds an unauthenticated client cannot exceed: read deadlines, a connection
cap, header size, and a per-client rate for the quote endpoint.

uvicorn bounds an *idle* keep-alive connection (`timeout_keep_alive`) but nothing else: a
client that sends its request headers one byte at a time (slowloris) keeps a connection
open for ever, and a few hundred of them starve everyone else. `BoundedH11Protocol`
arms a deadline whenever the server waits for a request: the headers must be complete
within `HEADER_TIMEOUT_S`, and the body within `BODY_TIMEOUT_S` more, or the connection is
closed. A connection beyond `MAX_CONNECTIONS`, or beyond `MAX_CONNECTIONS_PER_CLIENT` from
one address, is closed at once, before any read.

h11 (rather than httptools) is the parser because it bounds the bytes it buffers of an
incomplete request head (`h11_max_incomplete_event_size`): a head that keeps growing is a
400, not a growing buffer. A head that arrives whole in one read is bounded by that read;
`HeadLimit` then refuses any head larger than `MAX_HEADER_BYTES` (431). A production
deployment may still put a reverse proxy in front (README, "Production"), but the
controller does not depend on one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
#: Requests beyond this many open connections (or running requests) get a 503.
LIMIT_CONCURRENCY = 256
#: Connections beyond this many are closed when accepted.
MAX_CONNECTIONS = 2 * LIMIT_CONCURRENCY
#: Connections from one client address beyond this many are closed when accepted, so one
#: address cannot fill the table (users behind one NAT share it: a front proxy can do
#: better, README "Production").
MAX_CONNECTIONS_PER_CLIENT = 32


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request read deadlines and a connection cap."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    max_connections = MAX_CONNECTIONS
    max_per_client = MAX_CONNECTIONS_PER_CLIENT

    _read_deadline: asyncio.TimerHandle | None = None
    _body_granted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections or self._from_same_client() > self.max_per_client:
            transport.close()
            return
        self._arm(self.header_timeout_s)

    def _from_same_client(self) -> int:
        host = self.client[0] if self.client else None
        peers: list[Any] = [getattr(c, "client", None) for c in self.connections]
        return sum(1 for peer in peers if peer and peer[0] == host)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.header_timeout_s)

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._body_granted = False
        self._read_deadline = self.loop.call_later(delay, self._on_read_deadline)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _on_read_deadline(self) -> None:
        """IDLE: no complete request head in time. SEND_BODY: the body is still coming
        (it gets `body_timeout_s` once). Any other state: the request has been read and
        is being served; `on_response_complete` re-arms."""
        self._read_deadline = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY and not self._body_granted:
            self._read_deadline = self.loop.call_later(self.body_timeout_s, self._on_read_deadline)
            self._body_granted = True
        elif state in (h11.IDLE, h11.SEND_BODY):
            self.transport.close()


class HeadLimit:
    """ASGI wrapper: a request whose target and headers exceed `max_bytes` gets a 431."""

    def __init__(self, app: Any, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(k) + len(v) + 4 for k, v in scope.get("headers") or ())
            if size > self.max_bytes:
                body = json.dumps({"error": {
                    "code": "request_head_too_large",
                    "message": f"the request line and headers exceed {self.max_bytes} bytes",
                }}).encode()
                await send({"type": "http.response.start", "status": 431, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def server_options() -> dict[str, Any]:
    """uvicorn.Config keyword arguments for every way the controller is served.

    The loop is asyncio's, named rather than left to uvicorn's "auto" (uvloop when it is
    importable): the enclave image ships neither uvloop nor httptools
    (deploy/gramine/wheels.lock), and what the tests run is then what the enclave runs,
    with no libuv under Gramine's system-call emulation and less native code to trust."""
    return {
        "http": BoundedH11Protocol,
        "loop": "asyncio",
        "ws": "none",  # the API has no WebSocket routes: no upgrade path to bound
        "timeout_keep_alive": KEEP_ALIVE_S,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": LIMIT_CONCURRENCY,
    }


class RateLimiter:
    """A token bucket per client address: `rate` calls a second, bursts up to `burst`.

    Keyed by the peer address the socket reports (the controller is not behind a proxy
    that could forward another). The table is bounded: when full, buckets that have
    refilled completely are forgotten (they carry no information), and if none has, the
    request is refused rather than the table grown.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._forget_full(now)
            if len(self._buckets) >= self.max_clients:
                return False
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        return True

    def retry_after(self, client: str) -> float:
        tokens, _ = self._buckets.get(client, (0.0, 0.0))
        return max(0.0, (1.0 - tokens) / self.rate)

    def _forget_full(self, now: float) -> None:
        full = [c for c, (t, last) in self._buckets.items() if t + (now - last) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
