"""`duet log`: an auditor's timeline, one row per operation.

An operation is what one signed intent (or one refusal) caused: the intent, its command
and result, a mode change with its lockdown, evidence and snapshot. The controller holds a
CVM's lock for the whole of an operation, so the entries of one operation are contiguous
and every entry after an intent belongs to it until the next intent or refusal.

Who is the key id of the JWS *as verified* against the owner keys in force (never the
entry's own `kid` copy); what is the command text, for a refusal too (taken from the
verified JWS); every text is shown through `visible()`, so the log cannot drive the
terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from duet.cli.render import visible


@dataclass
class Operation:
    first: int
    time: str
    mode: str
    kind: str
    who: str
    what: str
    outcome: str = ""
    entries: list[int] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"index": self.first, "time": self.time, "mode": self.mode, "type": self.kind, "who": self.who,
                "what": self.what, "outcome": self.outcome, "entries": self.entries, "digests": self.digests}


def utc(text: Any) -> str:
    """An entry's time as UTC to the second with `Z` (entries are RFC 3339 UTC)."""
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return visible(str(text))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _args(jws: Any) -> dict[str, Any]:
    from duet.ledger.intent import parse_intent

    try:
        return dict(parse_intent(str(jws)).args)
    except Exception:  # only called for a JWS that verified; be total anyway
        return {}


def _describe(op: str, args: dict[str, Any]) -> str:
    if op == "cvm.run":
        return str(args.get("command", ""))
    if op == "cvm.action":
        return f"action {args.get('name', '')}"
    if op == "cvm.mode":
        return f"mode {args.get('mode', '')}"
    if op == "cvm.create":
        return f"create {args.get('provider', '')}" + (f" name {args['name']}" if args.get("name") else "")
    return op


def operations(decoded: list[dict[str, Any]], signed: dict[int, Any]) -> list[Operation]:
    ops: list[Operation] = []
    mode = "provisioning"
    cur: Operation | None = None
    for i, e in enumerate(decoded):
        t = e.get("type")
        starts = t in ("genesis", "intent", "rejected")
        if t == "intent" and cur is not None and cur.kind == "create" and len(cur.entries) == 1:
            starts = False  # the create intent follows its genesis: one operation
        if starts or cur is None:
            cur = Operation(first=i, time=utc(e.get("time")), mode=mode, kind=str(t), who="controller", what="")
            ops.append(cur)
        cur.entries.append(i)
        if t == "genesis":
            cur.kind, cur.what = "create", f"create {e.get('provider')} (tee {e.get('tee')})"
        if t in ("intent", "rejected") and e.get("jws") is not None:
            v = signed.get(i)
            if v is None:
                cur.who = "UNVERIFIED"
            else:
                cur.who = str(v.kid)[:16]
                cur.kind = str(v.op).removeprefix("cvm.")
                cur.what = _describe(str(v.op), _args(e.get("jws")))
        if t == "rejected":
            cur.kind = "refused"
            cur.outcome = f"refused [{e.get('code')}]"
            cur.complete = True
            if e.get("jws") is None:
                cur.who, cur.what = "(unsigned)", str(e.get("reason", ""))
        elif t == "command" and not e.get("builtin"):
            cur.what = str(e.get("command", "")) if not e.get("action") else f"action {e['action']}: {e['command']}"
            if isinstance(e.get("stdin_bytes"), int):
                cur.what += f" < stdin ({e['stdin_bytes']} B, logged)"
        elif t == "result":
            if e.get("timed_out"):
                outcome = "timed out"
            elif e.get("exit_status") is not None:
                outcome = f"exit {e.get('exit_status')}"
            else:
                outcome = f"signal {e.get('signal')}"
            command = decoded[e["command_index"]] if isinstance(e.get("command_index"), int) \
                and 0 <= e["command_index"] < len(decoded) else {}
            if not command.get("builtin"):
                cur.outcome = outcome
                cur.digests = {"stdout_sha256": str(e.get("stdout_sha256")),
                               "stderr_sha256": str(e.get("stderr_sha256"))}
                cur.complete = True
            elif not cur.outcome and e.get("exit_status") not in (0, None):
                cur.outcome = f"{command.get('action')} {outcome}"
        elif t == "interrupted":
            cur.outcome, cur.complete = f"interrupted: {e.get('reason')}", True
        elif t == "error":
            cur.outcome, cur.complete = f"error [{e.get('code')}]", True
        elif t == "mode":
            mode = str(e.get("mode"))
            if cur.kind in ("mode", "delete", "create", "genesis"):
                cur.outcome, cur.complete = f"now {mode}", True
        elif t == "lockdown":
            checks = e.get("checks") or []
            bad = [str(c.get("name")) for c in checks if isinstance(c, dict) and not c.get("ok")]
            if bad:
                cur.outcome = f"lockdown failed: {', '.join(bad)}"
        elif t in ("policy", "owner_keys"):
            cur.outcome, cur.complete = "ok", True
    for op in ops:  # once, at the end: what the log holds is data, never terminal control
        op.what, op.outcome = visible(op.what), visible(op.outcome)
    return ops


def since_filter(text: str) -> datetime:
    """`--since 1h` (a duration back from now) or an RFC 3339 time."""
    from duet.client.expectations import parse_duration

    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (90s, 30m, 1h, 7d) or an RFC 3339 time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def keep(op: Operation, since: datetime | None, types: list[str]) -> bool:
    if types and op.kind not in types:
        return False
    if since is not None:
        try:
            return datetime.fromisoformat(op.time.replace("Z", "+00:00")) >= since.replace(microsecond=0)
        except ValueError:
            return False
    return True
