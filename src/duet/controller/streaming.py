"""Streamed command output: the owner sees output as the command writes it, and never
anything the log does not hold (docs/wire-formats.md, "Streamed runs").

How it stays honest:

* While a streamed command runs, its kept output (within the output cap) is appended to
  the CVM's log as `output` entries, coalesced for at most `FLUSH_S` or `FLUSH_BYTES`.
  The HTTP stream is built by *reading the log* (`follow`), so a byte reaches the owner
  only after the entry holding it was durably committed. A crash in the middle leaves the
  pieces already shown in the log, and start-up closes the command with `interrupted`.
* The `result` entry is exactly the one a non-streamed run writes (it repeats the kept
  output whole): verifiers that ignore `output` entries verify as before, and those that
  read them check that the pieces add up to the result (`client/audit.py`).
* The command runs in its own task: a client that goes away (or asked not to wait) does
  not stop it, and its result is logged as always.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from duet.ledger import entries

#: Output waits at most this long before it is logged (and so shown).
FLUSH_S = 0.05
#: ... or until this many bytes are waiting.
FLUSH_BYTES = 64 * 1024
#: Every this many pieces of one command, the wait doubles (up to MAX_FLUSH_S), and after
#: MAX_PIECES no more are logged: a command trickling a byte at a time cannot grow its log
#: by millions of entries (its output is still in its result entry, shown at the end).
PIECES_PER_STEP = 256
MAX_FLUSH_S = 10.0
MAX_PIECES = 4096
#: At most this many follow streams at once (each holds a connection open).
MAX_FOLLOWERS = 64
#: A follower with nothing new re-reads the log head this often, whatever it was told.
POLL_S = 1.0
#: A stream with nothing to say sends a heartbeat line this often (proxies and clients
#: with a read timeout keep the connection of a quiet command open).
HEARTBEAT_S = 15.0


class RunStream:
    """What a streamed request learns from the controller while its intent runs: the
    index of the logged command, once it is logged (never, for an operation that runs no
    command or is refused first); for a `cvm.create`, the new CVM as soon as its genesis
    and the intent are logged, before it is provisioned (`duet cvm create --no-wait`)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.command: asyncio.Future[int] = loop.create_future()
        self.created: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.cvm = ""

    def cvm_created(self, view: dict[str, Any]) -> None:
        if not self.created.done():
            self.created.set_result(view)

    def accepted(self, cvm_id: str, command_index: int) -> None:
        if not self.command.done():
            self.cvm = cvm_id
            self.command.set_result(command_index)


#: Set by the streaming endpoint for the task that carries out one intent.
current: contextvars.ContextVar[RunStream | None] = contextvars.ContextVar("duet_run_stream", default=None)


class OutputLog:
    """Buffers the kept output of one running command and appends it as `output` entries.
    `feed` is called from the SSH session's callbacks; `flush` appends synchronously (one
    transaction, no await), so entries of one CVM never interleave."""

    def __init__(self, append: Callable[[list[entries.Entry]], int], command_index: int) -> None:
        self._append = append
        self._command_index = command_index
        self._pending: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._offset = {"stdout": 0, "stderr": 0}
        self._first: float | None = None
        self.pieces = 0

    @property
    def interval(self) -> float:
        return min(MAX_FLUSH_S, FLUSH_S * float(2 ** (self.pieces // PIECES_PER_STEP)))

    def feed(self, stream: str, data: bytes) -> None:
        if self.pieces >= MAX_PIECES:
            return
        self._pending[stream] += data
        if self._first is None:
            self._first = time.monotonic()
        if sum(len(b) for b in self._pending.values()) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        items: list[entries.Entry] = []
        for stream, buf in self._pending.items():
            if buf:
                items.append(entries.OutputEntry.piece(self._command_index, stream, self._offset[stream], bytes(buf)))
                self._offset[stream] += len(buf)
                buf.clear()
        self._first = None
        if items:
            self.pieces += len(items)
            self._append(items)

    async def pump(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            if self._first is not None and time.monotonic() - self._first >= self.interval - FLUSH_S / 2:
                self.flush()


@contextlib.asynccontextmanager
async def output_log(
    append: Callable[[list[entries.Entry]], int], command_index: int,
) -> AsyncIterator[Callable[[str, bytes], None]]:
    """Log output as it comes while the body runs; everything is logged when it ends
    (also on an error: what was kept before the connection broke is on the record)."""
    out = OutputLog(append, command_index)
    pump = asyncio.ensure_future(out.pump())
    try:
        yield out.feed
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        out.flush()


class LogWatch:
    """Wakes followers when a log grows (the controller calls `appended` after each
    append). Followers also re-read the head every POLL_S, so a missed wake-up only
    delays them."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.followers = 0

    def appended(self, log_id: str) -> None:
        event = self._events.pop(log_id, None)
        if event is not None:
            event.set()

    async def wait(self, log_id: str, timeout: float = POLL_S) -> None:
        event = self._events.setdefault(log_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def line(event: dict[str, Any]) -> bytes:
    """One NDJSON line."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def _stream_b64(e: dict[str, Any], name: str) -> str:
    raw = base64.b64decode(str(e[name])) if e.get(f"{name}_encoding") == "base64" else str(e[name]).encode()
    return base64.b64encode(raw).decode()


def outcome_from_log(cvm_id: str, command_index: int, index: int, e: dict[str, Any],
                     action: str | None) -> dict[str, Any]:
    """The body `/v1/intents` answers for a completed command, rebuilt from its logged
    result (or `interrupted`) entry."""
    body: dict[str, Any] = {"cvm": cvm_id, "command_index": command_index, "result_index": index,
                            "action": action, "tree_size": index + 1, "interrupted": None}
    if e["type"] == "interrupted":
        body["interrupted"] = str(e["reason"])
        return body
    body.update(exit_status=e["exit_status"], signal=e.get("signal"), timed_out=bool(e.get("timed_out")),
                duration_ms=e["duration_ms"])
    for name in ("stdout", "stderr"):
        body[name] = _stream_b64(e, name)
        for suffix in ("bytes", "sha256", "truncated"):
            body[f"{name}_{suffix}"] = e[f"{name}_{suffix}"]
    return body


HEARTBEAT: dict[str, Any] = {"type": "heartbeat"}


async def follow(
    leaves: Callable[[int, int], Awaitable[list[bytes]]], size: Callable[[], int], watch: LogWatch,
    log_id: str, command_index: int, until: asyncio.Future[Any] | None = None,
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """The entries of one command after its `command` entry, as they are logged: its
    `output` pieces, then its `result` or `interrupted` entry (the last one yielded).
    Stops early once `until` is done and the log has nothing more (a task that failed
    without closing its command), and yields (-1, HEARTBEAT) after HEARTBEAT_S of quiet."""
    pos = command_index + 1
    quiet_since = time.monotonic()
    while True:
        head = size()
        if pos >= head:
            if until is not None and until.done():
                return
            if time.monotonic() - quiet_since >= HEARTBEAT_S:
                quiet_since = time.monotonic()
                yield -1, HEARTBEAT
            await watch.wait(log_id)
            continue
        quiet_since = time.monotonic()
        for leaf in await leaves(pos, min(head, pos + 16)):
            e = entries.decode(leaf)
            if e.get("command_index") == command_index and e["type"] in ("output", "result", "interrupted"):
                yield pos, e
                if e["type"] != "output":
                    return
            pos += 1


def output_event(index: int, e: dict[str, Any]) -> dict[str, Any]:
    raw = base64.b64decode(str(e["data"])) if e["encoding"] == "base64" else str(e["data"]).encode()
    return {"event": "output", "index": index, "stream": e["stream"], "offset": e["offset"],
            "data": base64.b64encode(raw).decode()}


@contextlib.contextmanager
def streaming(stream: RunStream) -> Iterator[None]:
    token = current.set(stream)
    try:
        yield
    finally:
        current.reset(token)
