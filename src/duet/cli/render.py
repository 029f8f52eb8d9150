"""Human renderings of logs and verification reports."""

from __future__ import annotations

import hashlib
import unicodedata
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # the verifier is heavy; `duet log` and `cvm list` only need visible()
    from duet.client.verify import Report


def visible(text: str) -> str:
    """Text from a log, safe to print: control characters (C0, DEL, C1) and Unicode format
    characters (bidi overrides, zero-width) shown as escapes (``\\x1b``, ``\\u202e``).
    A logged command or output is data; printed raw, ``\\x1b[8m`` would hide what follows
    and a bidi override would reorder it."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _signed(signed: Any) -> str:
    """An intent's op and signer as its verified JWS says (never the entry's copies)."""
    if signed is None:
        return "UNVERIFIED intent (its signature does not verify against the owner keys in force)"
    return f"{signed.op} by {signed.kid[:12]}…"


def _summary(e: dict[str, Any], signed: Any = None) -> str:
    t = e.get("type")
    if t == "genesis":
        return f"tee {e.get('tee')}, provider {e.get('provider')}, policy {str(e.get('policy_sha256'))[:12]}…"
    if t == "intent":
        return _signed(signed)
    if t == "command":
        label = f"[action {e['action']}] " if e.get("action") else ""
        return f"{label}{e.get('command')}"
    if t == "result":
        out_digest = str(e.get("stdout_sha256"))[:12]
        status = e.get("exit_status") if e.get("exit_status") is not None else f"signal {e.get('signal')}"
        return (f"#{e.get('command_index')} exit {status}, {e.get('stdout_bytes')} B out (sha256 {out_digest}…), "
                f"{e.get('stderr_bytes')} B err, {e.get('duration_ms')} ms")
    if t == "rejected":
        what = _signed(signed) if e.get("jws") is not None else "(no signed intent)"
        return f"{what}: [{e.get('code')}] {e.get('reason')}"
    if t == "mode":
        return f"{e.get('previous')} → {e.get('mode')}"
    if t == "provisioned":
        key = str(e.get("host_key", ""))
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return f"{e.get('host')}:{e.get('port')} user {e.get('user')}, host key sha256 {digest}…"
    if t == "interrupted":
        return f"#{e.get('command_index')}: {e.get('reason')}"
    if t == "output":
        return f"#{e.get('command_index')} {e.get('stream')} at byte {e.get('offset')}: {len(str(e.get('data')))} chars"
    if t == "evidence":
        return f"{e.get('kind')} nonce {str(e.get('nonce'))[:16]}…"
    if t == "lockdown":
        checks = e.get("checks") or []
        return f"{sum(1 for c in checks if c.get('ok'))}/{len(checks)} checks pass"
    if t == "error":
        return f"[{e.get('code')}] {e.get('message')}"
    if t == "owner_keys":
        return f"{len(e.get('keys') or [])} owner keys"
    if t == "policy":
        return f"policy {str(e.get('policy_sha256'))[:12]}…"
    if t == "heads":
        heads = e.get("heads") or []
        return f"heads of {len(heads)} CVM log(s): " + ", ".join(f"{h.get('cvm')}@{h.get('size')}" for h in heads[:4]) \
            + (" …" if len(heads) > 4 else "")
    if t == "witnesses":
        names = [str(w.get("vkey", "")).split("+", 1)[0] for w in e.get("witnesses") or []]
        return f"witnesses {', '.join(names) or 'none'}, quorum {e.get('quorum')}"
    return ""


def render_timeline(console: Console, decoded: list[dict[str, Any]], signed: dict[int, Any] | None = None) -> None:
    """`signed`: the verified op/kid of each intent (see `owner_check.verified_intents`)."""
    signed = signed or {}
    table = Table("#", "time", "type", "details", show_lines=False)
    for i, e in enumerate(decoded):
        table.add_row(str(i), visible(str(e.get("time", ""))), visible(str(e.get("type"))),
                      escape(visible(_summary(e, signed.get(i)))))
    console.print(table)


def render_report(console: Console, report: Report) -> None:
    c = report.controller
    sim = " SIMULATED" if report.simulated else ""
    console.print(f"duet verify — CVM {report.cvm}{sim}")
    if c.get("controller_id"):
        sim_label = " (SIMULATED)" if c.get("simulated") else ""
        console.print(f"controller {c['controller_id']}  tee {c.get('tee')}{sim_label}")
    for check in report.checks:
        mark = "PASS" if check.ok else "FAIL"
        label = " [SIMULATED]" if check.simulated else ""
        console.print(f"{mark}  {check.name:<22}{label} {visible(check.detail)}", markup=False)
    if report.owner_keys:
        console.print(f"owner keys in force: {', '.join(report.owner_keys)}", markup=False)
    for w in report.warnings:
        console.print(f"WARNING: {visible(w)}", markup=False)
    if report.state is not None:
        s = report.state
        console.print(f"state: mode {s.mode}, epoch {s.epoch}, {s.commands} commands, {s.rejected} rejected, "
                      f"{s.interrupted} interrupted")
    verdict = "VERIFIED" if report.ok else "NOT VERIFIED"
    console.print(f"verdict: {verdict}{sim}", markup=False)
