"""What every HTTP client of the controller does with an answer, whatever carries it:
JSON parsed with a depth limit, and an error status turned into the server's typed
error. Shared by :mod:`duet.client.http` (httpx) and :mod:`duet.client.lean_http` (the
standard library's http.client, for `duet cvm run`), so that both read the controller
alike. Imports nothing but the standard library and the client's errors.
"""

from __future__ import annotations

import json
from typing import Any

from duet.client.config import Limits
from duet.client.errors import ClientError, LimitExceeded


def _depth_ok(value: Any, limit: int) -> bool:
    """Iterative (no recursion), visiting containers only: cheap next to json.loads."""
    if not isinstance(value, dict | list):
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        for c in v.values() if isinstance(v, dict) else v:
            if isinstance(c, dict | list):
                stack.append((c, d + 1))
    return True


def parse_json(body: bytes, what: str, max_depth: int) -> Any:
    """JSON from the controller, or a typed error (never a RecursionError traceback)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ClientError("bad_response", f"{what} did not return valid JSON") from None
    if not _depth_ok(value, max_depth):
        raise LimitExceeded("json_depth", f"{what} returned JSON nested deeper than {max_depth}")
    return value


def raise_for_status(status: int, body: bytes, path: str) -> None:
    """An error status as the controller's typed error (`{"error": {code, message, index}}`)."""
    if status < 400:
        return
    try:
        err = json.loads(body)["error"]
        code, message = str(err["code"]), str(err["message"])
        index = err.get("index")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ClientError("http_error", f"HTTP {status} from {path}", status) from None
    raise ClientError(code, message[:2000], status, index if isinstance(index, int) else None)


class Reads:
    """What both transports (client/http.py over httpx, client/lean_http.py over the
    standard library) derive from their bounded `read`."""

    limits: Limits

    def read(self, path: str, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        raise NotImplementedError

    def get_json(self, path: str, **params: Any) -> Any:
        body = self.read(path, {k: v for k, v in params.items() if v is not None})
        return parse_json(body, path, self.limits.max_json_depth)

    def get_text(self, path: str, headers: dict[str, str] | None = None) -> str:
        body = self.read(path, headers=headers)
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientError("bad_response", f"{path} did not return UTF-8 text") from None
