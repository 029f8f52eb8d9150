"""What every real provider needs: names, spec parsing, and resource tracking for
clean-up after a failed create.

A provider never logs credentials and never puts them in a plan or in
`Provisioned.launch`; nothing here touches them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from duet.cvm.errors import CvmNotFound, ProvisioningFailed

_T = TypeVar("_T")

TEES = ("snp", "tdx")
IMAGES = ("ubuntu-22.04", "ubuntu-24.04")
DEFAULT_IMAGE = "ubuntu-22.04"
_SLUG_RE = re.compile(r"[^a-z0-9-]+")


def resource_prefix(cvm_id: str, *, max_len: int = 40) -> str:
    """A cloud-safe name stem for a CVM: ``duet-`` + lowercase id (letters, digits, '-').

    Deterministic, so `status`/`delete` find the resources again without local state.
    Long or lossy ids get a short hash so that two ids never share a stem.
    """
    slug = _SLUG_RE.sub("-", cvm_id.lower()).strip("-")
    if not slug:
        raise ProvisioningFailed(f"invalid CVM id {cvm_id!r}")
    stem = f"duet-{slug}"
    if len(stem) > max_len or slug != cvm_id:
        digest = hashlib.sha256(cvm_id.encode()).hexdigest()[:8]
        stem = f"{stem[: max_len - 9].rstrip('-')}-{digest}"
    return stem


def spec_str(spec: Mapping[str, object], *keys: str, default: str | None = None) -> str | None:
    """The first of `keys` set (non-empty) in the spec, as a string."""
    for k in keys:
        v = spec.get(k)
        if v is not None and v != "":
            return str(v)
    return default


def tee_of(spec: Mapping[str, object], tee: str | None = None) -> str:
    value = (tee or spec_str(spec, "tee") or "snp").lower()
    if value not in TEES:
        raise ProvisioningFailed(f"unsupported TEE {value!r} (want one of {', '.join(TEES)})")
    return value


def image_of(spec: Mapping[str, object]) -> str:
    value = spec_str(spec, "image", default=DEFAULT_IMAGE) or DEFAULT_IMAGE
    if value not in IMAGES:
        raise ProvisioningFailed(f"unsupported image {value!r} (want one of {', '.join(IMAGES)})")
    return value


def host_data_of(spec: Mapping[str, object]) -> str:
    """The controller's per-CVM value: 32 bytes, lowercase hex."""
    raw = spec.get("host_data")
    try:
        data = bytes.fromhex(str(raw)) if raw is not None else b""
    except ValueError:
        data = b""
    if len(data) != 32:
        raise ProvisioningFailed("spec.host_data must be 32 bytes of hex")
    return data.hex()


def cidr_of(value: str | None) -> str | None:
    """A controller address or CIDR, normalised (``1.2.3.4`` → ``1.2.3.4/32``).

    Refuses ranges wider than /16 (IPv4) or /48 (IPv6): the point is to admit the
    controller only, never "any"."""
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ProvisioningFailed(f"controller_cidr {value!r} is not an address or CIDR") from None
    if (net.version == 4 and net.prefixlen < 16) or (net.version == 6 and net.prefixlen < 48):
        raise ProvisioningFailed(f"controller_cidr {value!r} is too wide to mean 'the controller only'")
    return str(net)


class Unresolved:
    """Collects values a plan could not know (no subscription, no controller address).

    A plan shows ``<name>`` placeholders for them and lists them; `create` refuses to
    send a plan that has any."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get(self, value: str | None, name: str) -> str:
        if value is None or value == "":
            if name not in self.names:
                self.names.append(name)
            return f"<{name}>"
        return value


@dataclass
class Tracker:
    """Resources a create has asked for, in order. Each is tracked *before* its request
    is sent, so that a request that failed half-way is cleaned up too."""

    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, kind: str, name: str, ref: str) -> None:
        self.items.append({"kind": kind, "name": name, "ref": ref})

    def reverse(self) -> list[dict[str, str]]:
        return list(reversed(self.items))


def brief(exc: BaseException) -> str:
    """A one-line description of an SDK error (its type and message; never a token)."""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = str(msg).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:500]}"


async def run_sync(cloud: str, fn: Callable[[str], _T], cvm_id: str) -> _T:
    """Run a blocking SDK call off the event loop; SDK errors become ProvisioningFailed."""
    try:
        return await asyncio.to_thread(fn, cvm_id)
    except (ProvisioningFailed, CvmNotFound):
        raise
    except Exception as exc:
        raise ProvisioningFailed(f"{cloud}: {brief(exc)}") from exc
