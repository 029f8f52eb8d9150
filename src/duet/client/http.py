"""A thin HTTP client for the controller's API; errors become `ClientError` with the
server's stable code, so callers (and the CLI) never see raw HTTP."""

from __future__ import annotations

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
        self, url: str = DEFAULT_URL, *, timeout: float = 660.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
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
        except httpx.TransportError as exc:
            raise ClientError("controller_unreachable", f"cannot reach the controller at {self.url}: {exc}") from None
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
