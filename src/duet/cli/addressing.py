"""A CVM is named by its id or by a unique live name (the controller refuses a duplicate
live name and a name that looks like an id, so the two never collide). Shared by the
typer CLI and the lean path (`lean.py`); imports nothing heavy."""

from __future__ import annotations

import re
from typing import Any

from duet.client.errors import ClientError

_ID = re.compile(r"[0-9a-f]{16}")


def cvm_id(http: Any, ref: str) -> str:
    """The id of the CVM `ref` names (an id is taken as is, without a request)."""
    if _ID.fullmatch(ref):
        return ref
    from duet.client.api import ReadClient

    live = [c for c in ReadClient(http).cvms() if c.get("name") == ref and c.get("status") != "deleted"]
    if not live:
        raise ClientError("unknown_cvm", f"no live CVM is named {ref!r} (and it is not an id)")
    if len(live) > 1:
        raise ClientError("ambiguous_name", f"{len(live)} live CVMs are named {ref!r}; use the id: "
                          + ", ".join(str(c["id"]) for c in live))
    return str(live[0]["id"])
