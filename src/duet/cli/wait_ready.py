"""`duet cvm wait CVM --for ready`: follow a CVM created with `cvm create --no-wait` until
the controller can use it.

"Ready" is the controller's status `ready`: the CVM was provisioned, its lockdown checks
and its first evidence were logged and passed, and its mode is `in-update` (commands are
accepted). It is what a create that waits returns after. `failed`, `lost`, `quarantined`
or `deleted` can never become ready: the wait ends there, with the controller's reason.
While it waits, each step the CVM's log records is shown on stderr as it is logged
(provisioned, lockdown, control plane, evidence, mode), read from the log itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from duet.client.api import ReadClient
from duet.client.errors import ClientError
from duet.ledger import entries

READY = "ready"
#: Statuses a CVM never leaves for `ready`.
HOPELESS = frozenset({"failed", "lost", "quarantined", "deleted"})
POLL_S = 0.5


def describe(e: dict[str, Any]) -> str | None:
    """One progress line for a log entry, or None for entries that are not a step. The
    whole line is shown escaped (render.visible): every field of it is logged text, and
    any of them could otherwise carry a terminal escape that hides what follows."""
    from duet.cli.render import visible

    line = _step(e)
    return None if line is None else visible(line)


def _step(e: dict[str, Any]) -> str | None:
    t = e.get("type")
    if t == "genesis":
        return f"logged: {e.get('provider')} CVM, tee {e.get('tee')} (evidence {e.get('evidence_kind')})"
    if t == "provisioned":
        return (f"provisioned: {e.get('user')}@{e.get('host')}:{e.get('port')}, "
                f"host key sha256 {str(e.get('host_key_sha256'))[:16]}…")
    if t == "lockdown":
        checks = e.get("checks") or ()
        return f"lockdown ({e.get('purpose')}): {'passed' if e.get('ok') else 'FAILED'}, {len(checks)} checks"
    if t == "control_plane":
        return f"control plane ({e.get('provider')}): {'passed' if e.get('ok') else 'FAILED'}"
    if t == "evidence":
        return f"evidence ({e.get('kind')}) verified and logged"
    if t == "mode":
        return f"mode: {e.get('previous')} -> {e.get('mode')}"
    if t == "error":
        return f"error [{e.get('code')}]: {e.get('message')}"
    return None


def wait_ready(api: ReadClient, cvm: str, *, timeout_s: float | None, say: Callable[[str], None],
               poll_s: float = POLL_S) -> dict[str, Any]:
    """The CVM's record once its status is `ready`; ClientError if it can never be
    (`cvm_<status>`) or is not by `timeout_s` (`wait_timeout`)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        rec = api.cvm(cvm)
        size, status = rec.get("tree_size"), rec.get("status")
        if isinstance(size, int) and size > shown:
            for page in api.pages(cvm, shown, size):
                for leaf in page:
                    line = describe(entries.decode(leaf))
                    if line is not None:
                        say(line)
            shown = size
        if status == READY:
            return rec
        if status in HOPELESS:
            reason = f": {rec['reason']}" if rec.get("reason") else ""
            raise ClientError(f"cvm_{status}", f"CVM {cvm} is {status} and will not become ready{reason}")
        if deadline is not None and time.monotonic() >= deadline:
            raise ClientError("wait_timeout", f"CVM {cvm} is still {status} after {timeout_s:g} s")
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
