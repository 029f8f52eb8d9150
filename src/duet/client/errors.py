"""The client's typed errors. Every failure a user can meet carries a stable ``code``
so the CLI prints one line and exits 1 (never a traceback), and scripts can branch on it.

This module imports nothing else of duet's client, so every client module can use it
without forming an import cycle.
"""

from __future__ import annotations


class ClientError(Exception):
    """A failure of a client operation; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, status: int | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.index = index


class LimitExceeded(ClientError):
    """The controller's answers went past a bound of :class:`duet.client.config.Limits`:
    a hostile controller or host must not be able to make the verifier run forever or
    exhaust memory. The verification is then incomplete, never passed."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__("limit_exceeded", f"{what}: {message}")
        self.what = what


class ConfigError(ClientError):
    """A setting (environment variable, URL, option) means nothing safe."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_config", message)
