"""A thin HTTP client for the controller's API; errors become `ClientError` with the
server's stable code, so callers (and the CLI) never see raw HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:6037"


class ClientError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.index = index


class Http:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 660.0,
        transport: httpx.BaseTransport | None = None,
        trust_simulated: bool | None = None,
        state_dir: Path | None = None,
        expect_controller: Any = None,
    ) -> None:
        """An `https://` URL is an RA-TLS controller: the certificate's quote is verified
        and its key pinned during the TLS handshake, before any request is sent.
        `trust_simulated` defaults to the DUET_TRUST_SIMULATED environment variable."""
        self.url = url.rstrip("/")
        self.ratls = None
        if self.url.startswith("https://") and transport is None:
            from duet.client.ratls import RaTlsVerifier
            from duet.client.verify import default_state_dir

            if trust_simulated is None:
                trust_simulated = os.environ.get("DUET_TRUST_SIMULATED", "") not in ("", "0")
            self.ratls = RaTlsVerifier(self.url, state_dir=state_dir or default_state_dir(),
                                       trust_simulated=trust_simulated, expect=expect_controller)
            transport = httpx.HTTPTransport(verify=self.ratls.ssl_context())
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kw)
        except Exception as exc:
            from duet.client.ratls import find_ratls_error

            found = find_ratls_error(exc)
            if found is not None:  # the controller failed attestation during the handshake
                raise ClientError(found.code, found.message) from None
            if isinstance(exc, httpx.TransportError):
                raise ClientError(
                    "controller_unreachable", f"cannot reach the controller at {self.url}: {exc}"
                ) from None
            raise
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(str(err["code"]), str(err["message"]), resp.status_code, err.get("index"))
            except (ValueError, KeyError, TypeError):
                raise ClientError("http_error", f"HTTP {resp.status_code} from {path}", resp.status_code) from None
        return resp

    def get_json(self, path: str, **params: Any) -> Any:
        try:
            return self._send("GET", path, params={k: v for k, v in params.items() if v is not None}).json()
        except ValueError:
            raise ClientError("bad_response", f"{path} did not return JSON") from None

    def get_text(self, path: str, headers: dict[str, str] | None = None) -> str:
        return self._send("GET", path, headers=headers).text

    def post_json(self, path: str, body: Any) -> Any:
        try:
            return self._send("POST", path, json=body).json()
        except ValueError:
            raise ClientError("bad_response", f"{path} did not return JSON") from None
