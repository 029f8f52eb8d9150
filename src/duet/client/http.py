"""A thin HTTP client for the controller's API; errors become `ClientError` with the
server's stable code, so callers (and the CLI) never see raw HTTP.

Reads are bounded (:class:`~duet.client.config.Limits`): each response body has a size
cap, each request a deadline that covers the headers and the body (a controller that
trickles one byte every few seconds is cut off, not waited for), all bodies of one run a
total cap, and a run a wall-clock budget. JSON is parsed with a depth limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx

from duet.client.config import DEFAULT_URL, Limits, default_state_dir, env_bool
from duet.client.errors import ClientError, LimitExceeded
from duet.client.wire import Reads, parse_json, raise_for_status

__all__ = ["DEFAULT_URL", "ClientError", "Http", "LimitExceeded", "RunBudget", "parse_json"]


class RunBudget:
    """What one verification run may still spend: wall clock and body bytes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.budget
        self.bytes = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self, what: str) -> None:
        if self.remaining() <= 0:
            raise LimitExceeded("budget", f"the run took longer than {self.limits.budget:g} s ({what})")

    def spend(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_total_bytes:
            raise LimitExceeded("total_bytes", f"the controller sent more than {self.limits.max_total_bytes} "
                                               "bytes in this run")


class _Deadline(threading.local):
    at: float | None = None


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write also stops at the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def _timeout(self, timeout: float | None) -> float | None:
        at = self._deadline.at
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the request's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._timeout(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._timeout(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, self._timeout(timeout)),
                               self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options),
                               self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(deadline: _Deadline, **kw: Any) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(**kw)
    pool = transport._pool  # httpcore.ConnectionPool: the only place a network backend plugs in
    pool._network_backend = _DeadlineBackend(pool._network_backend, deadline)
    return transport


class Http(Reads):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 660.0,
        transport: httpx.BaseTransport | None = None,
        trust_simulated: bool | None = None,
        state_dir: Path | None = None,
        expect_controller: Any = None,
        limits: Limits | None = None,
    ) -> None:
        """An `https://` URL is an RA-TLS controller: the certificate's quote is verified
        and its key pinned (under `state_dir`) during the TLS handshake, before any request
        is sent. `trust_simulated` defaults to the DUET_TRUST_SIMULATED environment
        variable (a strict boolean). `timeout` bounds owner requests (a command may run
        for minutes); reads are bounded by `limits`."""
        self.url = url.rstrip("/")
        self.limits = limits or Limits()
        self.timeout = timeout
        self.ratls = None
        self.run: RunBudget | None = None
        self._deadline = _Deadline()
        if trust_simulated is None:
            trust_simulated = env_bool("DUET_TRUST_SIMULATED")
        self.trust_simulated = trust_simulated
        if transport is None:
            verify: Any = True
            if self.url.startswith("https://"):
                from duet.client.ratls import RaTlsVerifier

                self.ratls = RaTlsVerifier(self.url, state_dir=state_dir or default_state_dir(),
                                           trust_simulated=trust_simulated, expect=expect_controller)
                verify = self.ratls.ssl_context()
            transport = _deadline_transport(self._deadline, verify=verify)
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_run(self) -> RunBudget:
        """Begin a bounded run (one verification): later reads share its budget."""
        self.run = RunBudget(self.limits)
        return self.run

    def _error(self, exc: Exception, path: str) -> ClientError | None:
        from duet.client.ratls import find_ratls_error

        found = find_ratls_error(exc)
        if found is not None:  # the controller failed attestation during the handshake
            return ClientError(found.code, found.message)
        if isinstance(exc, httpx.TimeoutException):
            return LimitExceeded("timeout", f"{path}: the controller did not answer in time")
        if isinstance(exc, httpx.TransportError):
            return ClientError("controller_unreachable", f"cannot reach the controller at {self.url}: {exc}")
        return None

    def read(self, path: str, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        """GET `path` and return its body, within every bound of `limits`."""
        lim = self.limits
        run = self.run
        if run is not None:
            run.check_time(path)
        deadline = time.monotonic() + lim.request_deadline
        if run is not None:
            deadline = min(deadline, run.deadline)
        self._deadline.at = deadline
        timeout = httpx.Timeout(min(lim.read_timeout, self.timeout))
        hdrs = {"Accept-Encoding": "identity", **(headers or {})}
        chunks: list[bytes] = []
        total = 0
        try:
            with self._client.stream("GET", path, params=params, headers=hdrs, timeout=timeout) as resp:
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > lim.max_response_bytes:
                        raise LimitExceeded("response_bytes",
                                            f"{path} sent more than {lim.max_response_bytes} bytes")
                    if run is not None:
                        run.spend(len(chunk))
                    if time.monotonic() > deadline:
                        raise LimitExceeded("timeout", f"{path}: the body took longer than "
                                                       f"{lim.request_deadline:g} s")
                    chunks.append(chunk)
                status = resp.status_code
        except ClientError:
            raise
        except Exception as exc:
            found = self._error(exc, path)
            if found is None:
                raise
            if isinstance(found, LimitExceeded) and run is not None and run.remaining() <= 0:
                raise LimitExceeded("budget", f"the run took longer than {lim.budget:g} s ({path})") from None
            raise found from None
        finally:
            self._deadline.at = None
        body = b"".join(chunks)
        raise_for_status(status, body, path)
        return body

    def stream_lines(self, method: str, path: str, body: Any = None) -> Iterator[Any]:
        """An NDJSON answer (streamed runs), one parsed line at a time as it arrives. An
        error status is raised as `/v1/intents` errors are; a JSON (not NDJSON) answer is
        yielded whole, as one line. The whole answer is bounded by `max_response_bytes`."""
        lim = self.limits
        total = 0
        try:
            with self._client.stream(method, path, json=body, headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code >= 400 or not resp.headers.get("content-type", "").startswith(
                        "application/x-ndjson"):
                    content = resp.read()
                    if len(content) > lim.max_response_bytes:
                        raise LimitExceeded("response_bytes", f"{path} sent more than {lim.max_response_bytes} bytes")
                    raise_for_status(resp.status_code, content, path)
                    yield parse_json(content, path, lim.max_json_depth)
                    return
                for text in resp.iter_lines():
                    total += len(text) + 1
                    if total > lim.max_response_bytes:
                        raise LimitExceeded("response_bytes", f"{path} sent more than {lim.max_response_bytes} bytes")
                    if text.strip():
                        yield parse_json(text.encode(), path, lim.max_json_depth)
        except ClientError:
            raise
        except Exception as exc:
            found = self._error(exc, path)
            if found is None:
                raise
            raise found from None

    def post_json(self, path: str, body: Any) -> Any:
        """Owner requests: bounded by `timeout` (a command may legitimately run long)."""
        try:
            resp = self._client.request("POST", path, json=body)
        except Exception as exc:
            found = self._error(exc, path)
            if found is None:
                raise
            raise found from None
        content = resp.content
        if len(content) > self.limits.max_response_bytes:
            raise LimitExceeded("response_bytes", f"{path} sent more than {self.limits.max_response_bytes} bytes")
        raise_for_status(resp.status_code, content, path)
        return parse_json(content, path, self.limits.max_json_depth)
