"""The owner side of streamed runs (docs/wire-formats.md, "Streamed runs"): read the
controller's NDJSON events, hand output to the caller as it arrives, and check that what
was shown is exactly what the logged result holds.

The controller sends only output it has already logged; this side checks that the pieces
are contiguous and, at the end, that they are a prefix of the result's streams (anything
the result holds beyond them, e.g. a non-streamed command followed later, is handed over
then)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from duet.client.api import b64_field
from duet.client.errors import ClientError

#: Called with ("stdout" | "stderr", bytes) as output arrives.
OnOutput = Callable[[str, bytes], None]


def _bad(what: str) -> ClientError:
    return ClientError("bad_response", f"the controller's stream is malformed: {what}")


def _b64(value: Any, what: str) -> bytes:
    return b64_field(value, what, _bad)


class StreamBroken(ClientError):
    """The stream ended before the command's result: the command may still be running
    (its output and result are logged all the same)."""

    def __init__(self, cvm: str | None, index: int | None) -> None:
        hint = f"; follow it with `duet cvm wait {cvm} {index}`" if cvm and index is not None else ""
        super().__init__("stream_broken", f"the controller's stream ended before the command's result{hint}")
        self.cvm, self.command_index = cvm, index


def consume(events: Iterable[Any], on_output: OnOutput | None = None, *, no_wait: bool = False) -> dict[str, Any]:
    """The body of the command's end event (what `/v1/intents` would have answered), or
    with `no_wait` `{"cvm", "command_index"}` as soon as the command is logged (for a
    `cvm.create`: `{"cvm": the CVM}` as soon as it is logged, before it is provisioned).
    A refusal raises ClientError with the controller's code."""
    shown = {"stdout": 0, "stderr": 0}
    digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
    cvm: str | None = None
    index: int | None = None
    for ev in events:
        if not isinstance(ev, dict):
            raise _bad("an event is not an object")
        kind = ev.get("event")
        if kind is None:  # an ordinary JSON answer: the operation ran no command
            return ev
        if kind == "accepted":
            cvm, index = ev.get("cvm"), ev.get("command_index")
            if not isinstance(cvm, str) or not isinstance(index, int):
                raise _bad("the accepted event names no command")
            if no_wait:
                return {"cvm": cvm, "command_index": index}
        elif kind == "output":
            stream, offset = ev.get("stream"), ev.get("offset")
            if stream not in shown or offset != shown[stream]:
                raise _bad(f"output piece at offset {offset} of {stream}, expected {shown.get(str(stream))}")
            data = _b64(ev.get("data"), "an output piece")
            shown[str(stream)] += len(data)
            digests[str(stream)].update(data)
            if on_output is not None:
                on_output(str(stream), data)
        elif kind == "end":
            status, body = ev.get("status"), ev.get("body")
            if not isinstance(status, int) or not isinstance(body, dict):
                raise _bad("the end event has no status and body")
            if status >= 400:
                got = body.get("error")
                err: dict[str, Any] = got if isinstance(got, dict) else {}
                i = err.get("index")
                raise ClientError(str(err.get("code", "http_error")), str(err.get("message", f"HTTP {status}")),
                                  status, i if isinstance(i, int) else None)
            for name in ("stdout", "stderr"):
                if name not in body:
                    continue
                content = _b64(body[name], f"the result's {name}")
                if hashlib.sha256(content[:shown[name]]).digest() != digests[name].digest() \
                        or len(content) < shown[name]:
                    raise ClientError("bad_response",
                                      f"the streamed {name} differs from the logged result's {name}")
                if on_output is not None and len(content) > shown[name]:
                    on_output(name, content[shown[name]:])
            return body
        elif kind == "created":  # a streamed cvm.create: the CVM is logged, not yet provisioned
            view = ev.get("cvm")
            if not isinstance(view, dict) or not isinstance(view.get("id"), str):
                raise _bad("the created event names no CVM")
            if no_wait:
                return {"cvm": view}
        elif kind != "heartbeat":
            raise _bad(f"unknown event {kind!r}")
    raise StreamBroken(cvm, index)
