"""The client's settings: where its state lives, what the environment may switch, which
URLs an owner may send signed intents to, and the resource bounds of a verification.

A switch means what it says: a boolean environment variable is one of
``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else is an error, never a
guess (``DUET_TRUST_SIMULATED=false`` must not turn trust *on*).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from duet.client.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:6037"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean: use 1/true/yes/on or 0/false/no/off")


def env_bool(name: str, default: bool = False) -> bool:
    """An unset or empty variable is ``default``; any other value must be a boolean word."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return parse_bool(name, value)


def default_state_dir() -> Path:
    """Where the user's memory lives (remembered checkpoints, RA-TLS pins)."""
    env = os.environ.get("DUET_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "duet"


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_owner_url(url: str) -> None:
    """Signed intents travel over RA-TLS (``https://``) or plain HTTP to loopback only:
    over plain HTTP to another host, anyone on the path could read or withhold them, and
    the controller answering is not attested."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    if parts.scheme == "http":
        raise ConfigError(
            f"refusing to send owner intents over plain http:// to {parts.hostname!r}: use the controller's "
            "https:// (RA-TLS) URL; plain HTTP is allowed to loopback only")
    raise ConfigError(f"controller URL {url!r} must be https:// (or http:// to loopback)")


def controller_key_of_url(url: str) -> str:
    """The unit a CVM's controller is remembered under: scheme, lowercase host, port."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"controller URL {url!r} has an invalid port") from None
    port = port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class Limits:
    """Bounds on one verification run. The defaults fit an honest log of a million
    entries on a laptop; a run that would go past one fails with ``limit_exceeded``."""

    #: Largest log (checkpoint size) a run downloads.
    max_entries: int = 1_000_000
    #: At least this many entries per page on average (pages = 8 + size / this).
    min_entries_per_page: int = 16
    #: One response body (a page of entries, a quote, a checkpoint).
    max_response_bytes: int = 64 << 20
    #: All response bodies of one run together.
    max_total_bytes: int = 512 << 20
    #: No byte for this long ends a request.
    read_timeout: float = 30.0
    #: One request, from sending to the last byte of the body (defeats a trickle).
    request_deadline: float = 120.0
    #: Nesting depth of any JSON the controller sends.
    max_json_depth: int = 32
    #: Wall clock of one whole run (fetching and checking).
    budget: float = 900.0
    #: Longest consistency proof (RFC 9162: at most about 2 * log2(size) hashes).
    max_proof_hashes: int = 128

    def max_pages(self, size: int) -> int:
        return 8 + size // self.min_entries_per_page
