"""The controller's API over the standard library's `http.client`, for `duet cvm run` and
`duet cvm wait` (`duet/cli/lean.py`).

Why a second client: a `duet` process is short-lived, and importing httpx (with httpcore,
h11, anyio, certifi) costs a new process more than the command's own round trip. This class
offers the part of :class:`duet.client.http.Http` that :class:`~duet.client.api.ReadClient`
and :class:`~duet.client.owner.OwnerClient` use to sign and send an intent and read its
streamed answer (`get_json`, `get_text`, `post_json`, `stream_lines`), with the same
bounds (:class:`~duet.client.config.Limits`), the same typed errors
(:mod:`duet.client.wire`) and, over `https://`, the same RA-TLS check: the connection's
`SSLContext` is :meth:`duet.client.ratls.RaTlsVerifier.ssl_context`, which attests the
controller inside the TLS handshake, before a request is written. Anything else (proxies,
verification runs with a budget) is the full client's.

Each request opens its own connection: on loopback or with the RA-TLS verdict already in
the verifier's memory that costs little, and it needs no keep-alive bookkeeping.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from duet.client.config import DEFAULT_URL, Limits, default_state_dir, env_bool
from duet.client.errors import ClientError, LimitExceeded
from duet.client.wire import Reads, parse_json, raise_for_status

NDJSON = "application/x-ndjson"
_CHUNK = 64 * 1024


class LeanHttp(Reads):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 660.0,
        trust_simulated: bool | None = None,
        state_dir: Path | None = None,
        limits: Limits | None = None,
    ) -> None:
        """As :class:`duet.client.http.Http` (without transports or expectations: a
        caller that needs those uses the full client)."""
        self.url = url.rstrip("/")
        self.limits = limits or Limits()
        self.timeout = timeout
        self.ratls: Any = None
        if trust_simulated is None:
            trust_simulated = env_bool("DUET_TRUST_SIMULATED")
        self.trust_simulated = trust_simulated
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._context: Any = None
        if self._https:
            from duet.client.ratls import RaTlsVerifier

            self.ratls = RaTlsVerifier(self.url, state_dir=state_dir or default_state_dir(),
                                       trust_simulated=trust_simulated, expect=None)
            self._context = self.ratls.ssl_context()

    def close(self) -> None:
        """Nothing is held between requests."""

    def __enter__(self) -> LeanHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _wrapped(self, exc: Exception, path: str) -> Exception:
        """A transport failure as `Http` reports it (anything else as is)."""
        if isinstance(exc, ClientError):
            return exc
        if self._https:
            from duet.client.ratls import find_ratls_error

            found = find_ratls_error(exc)
            if found is not None:  # the controller failed attestation during the handshake
                return ClientError(found.code, found.message)
        if isinstance(exc, TimeoutError):
            return LimitExceeded("timeout", f"{path}: the controller did not answer in time")
        if isinstance(exc, OSError | http.client.HTTPException):
            return ClientError("controller_unreachable", f"cannot reach the controller at {self.url}: {exc}")
        return exc

    def _open(self, method: str, path: str, body: Any, timeout: float,
              params: dict[str, Any] | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Accept-Encoding": "identity", "Accept": "*/*"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, target, body=data, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _body(self, resp: http.client.HTTPResponse, path: str, deadline: float | None) -> bytes:
        lim = self.limits
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > lim.max_response_bytes:
                raise LimitExceeded("response_bytes", f"{path} sent more than {lim.max_response_bytes} bytes")
            if deadline is not None and time.monotonic() > deadline:
                raise LimitExceeded("timeout", f"{path}: the body took longer than {lim.request_deadline:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _exchange(self, method: str, path: str, body: Any, timeout: float, params: dict[str, Any] | None,
                  deadline: float | None) -> bytes:
        """One whole request and its bounded answer; an error status raised as the
        controller's typed error."""
        try:
            conn, resp = self._open(method, path, body, timeout, params)
            try:
                content = self._body(resp, path, deadline)
                status = resp.status
            finally:
                conn.close()
        except Exception as exc:
            raise self._wrapped(exc, path) from None
        raise_for_status(status, content, path)
        return content

    # ------------------------------------------------------------------ what Http offers

    def read(self, path: str, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        """GET `path` within the bounds of `limits` (`headers` are not supported)."""
        if headers:
            raise ValueError("LeanHttp.read takes no extra headers")
        lim = self.limits
        return self._exchange("GET", path, None, min(lim.read_timeout, self.timeout), params,
                              time.monotonic() + lim.request_deadline)

    def post_json(self, path: str, body: Any) -> Any:
        """Owner requests: bounded by `timeout` (a command may legitimately run long)."""
        content = self._exchange("POST", path, body, self.timeout, None, None)
        return parse_json(content, path, self.limits.max_json_depth)

    def stream_lines(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """An NDJSON answer, one parsed line at a time as it arrives; a JSON answer (or an
        error) as `Http.stream_lines` gives it. Bounded by `max_response_bytes` in all."""
        lim = self.limits
        try:
            conn, resp = self._open(method, path, body, self.timeout)
        except Exception as exc:
            raise self._wrapped(exc, path) from None
        try:
            if resp.status >= 400 or not (resp.getheader("content-type") or "").startswith(NDJSON):
                content = self._body(resp, path, None)
                raise_for_status(resp.status, content, path)
                yield parse_json(content, path, lim.max_json_depth)
                return
            total = 0
            pending = b""
            while True:
                chunk = resp.read1(_CHUNK)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    total += len(line) + 1
                    if total > lim.max_response_bytes:
                        raise LimitExceeded("response_bytes", f"{path} sent more than {lim.max_response_bytes} bytes")
                    if line.strip():
                        yield parse_json(line, path, lim.max_json_depth)
                if total + len(pending) > lim.max_response_bytes:
                    raise LimitExceeded("response_bytes", f"{path} sent more than {lim.max_response_bytes} bytes")
            if pending.strip():
                yield parse_json(pending, path, lim.max_json_depth)
        except Exception as exc:
            raise self._wrapped(exc, path) from None
        finally:
            conn.close()
