"""The auditor's report: one self-contained HTML file, written from what the verifier verified.

Why a file the verifier writes, and never a page the controller serves: the report must rest
only on checks the reader's own verifier made. Everything in it that comes from the log
(commands, output, refusal reasons, names) is text that a CVM user or the owner chose, so it
is escaped without exception, control characters included (a terminal escape sequence in an
output stays visible as `\\x1b`), and the page carries a Content-Security-Policy that forbids
every script and every external load: `default-src 'none'`, the one inline stylesheet allowed
by its hash. Expanding a command needs no script (`<details>`), so the page works offline, in
a locked-down viewer, and on paper (printing opens every command).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from duet.ledger.errors import LedgerError
from duet.ledger.intent import parse_intent

#: How much of each output stream the report shows; the rest is named by its digest.
OUTPUT_SHOWN = 64 * 1024

_MODE_COLOURS = {
    "provisioning": "#d9d9d9",
    "in-update": "#ffe08a",
    "in-service": "#9fd8a4",
    "deleted": "#bbbbbb",
}

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#1b1b1b;max-width:72em}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ccc}
.verdict{display:inline-block;padding:.25em .8em;border-radius:4px;font-weight:700;color:#fff}
.ok{background:#1f7a35}.fail{background:#b3261e}.sim{background:#7a4b00;color:#fff;padding:0 .4em;border-radius:3px}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #e3e3e3;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f7f7f7;border:1px solid #e1e1e1;padding:.5em;white-space:pre-wrap;word-break:break-all;margin:.3em 0}
.row{border-left:4px solid transparent;padding:.2em .6em;margin:.15em 0}
.row.refused{border-color:#b3261e;background:#fdecea}.row.failed{border-color:#b3261e}
.row.command{border-color:#3b6fb6}.row.evidence,.row.lockdown{border-color:#6b4fb3}.row.mode{border-color:#1f7a35}
.badge{display:inline-block;border-radius:3px;padding:0 .4em;font-size:12px;margin-right:.4em;color:#fff}
.badge{background:#555}
.badge.pass{background:#1f7a35}.badge.fail{background:#b3261e}.badge.refused{background:#b3261e}
.badge.mode{background:#1f4f7a}.meta{color:#666;font-size:12px}
summary{cursor:pointer}svg{width:100%;height:auto;border:1px solid #ddd}
.legend span{display:inline-block;margin-right:1em}
.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin-right:.3em}
@media print{details>*{display:block}body{margin:0}}
""" + "".join(f".m-{m}{{background:{c}}}" for m, c in _MODE_COLOURS.items())


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
    return f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; base-uri 'none'; form-action 'none'"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def esc(text: Any) -> str:
    """Escape log-controlled text for HTML, and make control characters (terminal escapes,
    bidi overrides) visible instead of letting them act."""
    s = str(text)
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", s)
    return html.escape(s, quote=True)


@dataclass
class _Op:
    """One row of the timeline: an operation and what the log says happened to it."""

    index: int
    kind: str
    mode: str
    time: str
    title: str
    who: str = ""
    outcome: str = ""
    badge: str = ""
    verdict: str = ""
    body: list[str] = field(default_factory=list)
    anchors: list[int] = field(default_factory=list)


def _stream(entry: Mapping[str, Any], name: str) -> str:
    raw = entry.get(name)
    if not isinstance(raw, str):
        return ""
    if entry.get(f"{name}_encoding") == "base64":
        try:
            data = base64.b64decode(raw, validate=True)
        except ValueError:
            return "(undecodable base64 output)"
        return f"({len(data)} bytes of binary output, not shown)"
    shown = raw[:OUTPUT_SHOWN]
    more = len(raw) - len(shown)
    return shown + (f"\n… {more} more characters in the log" if more else "")


def _intent_fields(jws: Any) -> tuple[str, str, dict[str, Any]]:
    """(op, kid, args) as the signed JWS says them; the entry's own copies are not shown."""
    try:
        it = parse_intent(str(jws))
    except LedgerError:
        return "?", "?", {}
    return it.op, it.kid, it.args


class _Timeline:
    """Replays the (already verified) entries into timeline rows and mode bands."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.entries = entries
        self.rows: list[_Op] = []
        self.bands: list[tuple[int, int, str]] = []
        self.marks: list[tuple[int, str]] = []
        self._by_command: dict[int, _Op] = {}
        #: Streamed output pieces of each command (shown if it ends without a result).
        self._pieces: dict[int, list[Mapping[str, Any]]] = {}
        self._who: dict[int, str] = {}
        self._mode = "provisioning"
        self._band_start = 0

    def build(self) -> _Timeline:
        for i, e in enumerate(self.entries):
            getattr(self, f"_on_{str(e.get('type', '')).replace('-', '_')}", self._on_other)(i, e)
        self.bands.append((self._band_start, max(len(self.entries), 1), self._mode))
        return self

    def _row(self, i: int, e: Mapping[str, Any], kind: str, title: str, **kw: Any) -> _Op:
        op = _Op(index=i, kind=kind, mode=self._mode, time=str(e.get("time", "")), title=title, **kw)
        op.anchors.append(i)
        self.rows.append(op)
        return op

    def _on_genesis(self, i: int, e: Mapping[str, Any]) -> None:
        self._row(i, e, "genesis", f"CVM created: provider {e.get('provider')}, tee label {e.get('tee')}",
                  badge="genesis")

    def _on_intent(self, i: int, e: Mapping[str, Any]) -> None:
        self._who[i] = _intent_fields(e.get("jws"))[1]

    def _on_command(self, i: int, e: Mapping[str, Any]) -> None:
        ii = e.get("intent_index")
        who = self._who.get(ii, "") if isinstance(ii, int) else ""
        label = "builtin " if e.get("builtin") is True else ("action " if e.get("action") else "")
        action = f"{e.get('action')}: " if e.get("action") else ""
        title = f"{label}{action}{e.get('command', '')}"
        op = self._row(i, e, "command", title, who=who, outcome="running (no result)", badge="command")
        self._by_command[i] = op
        self.marks.append((i, "command"))

    def _on_result(self, i: int, e: Mapping[str, Any]) -> None:
        op = self._by_command.get(e.get("command_index"))  # type: ignore[arg-type]
        if op is None:
            return self._on_other(i, e)
        status = e.get("exit_status")
        op.outcome = f"exit {status}" if status is not None else f"signal {e.get('signal')}"
        if e.get("timed_out"):
            op.outcome += " (timed out)"
        op.anchors.append(i)
        for name in ("stdout", "stderr"):
            text = _stream(e, name)
            digest = e.get(f"{name}_sha256", "")
            cut = " (truncated in the log)" if e.get(f"{name}_truncated") else ""
            op.body.append(f"<div class='meta'>{name}: {esc(e.get(f'{name}_bytes', 0))} bytes, sha256 "
                           f"<code>{esc(digest)}</code>{cut}</div><pre class='out {name}'>{esc(text)}</pre>")
        return None

    def _on_output(self, i: int, e: Mapping[str, Any]) -> None:
        ci = e.get("command_index")
        op = self._by_command.get(ci)  # type: ignore[arg-type]
        if op is None:
            return self._on_other(i, e)
        op.anchors.append(i)
        self._pieces.setdefault(ci, []).append(e)  # type: ignore[arg-type]
        return None

    def _on_interrupted(self, i: int, e: Mapping[str, Any]) -> None:
        ci = e.get("command_index")
        op = self._by_command.get(ci)  # type: ignore[arg-type]
        if op is None:
            return self._on_other(i, e)
        op.outcome = f"interrupted: {e.get('reason', '')}"
        op.anchors.append(i)
        for piece in self._pieces.get(ci, []):  # type: ignore[arg-type]
            name = str(piece.get("stream"))
            enc = " (base64)" if piece.get("encoding") == "base64" else ""
            op.body.append(f"<div class='meta'>{esc(name)} streamed before the interruption{esc(enc)}</div>"
                           f"<pre class='out {esc(name)}'>{esc(piece.get('data', ''))}</pre>")
        return None

    def _on_rejected(self, i: int, e: Mapping[str, Any]) -> None:
        op, kid, args = _intent_fields(e.get("jws"))
        what = args.get("command") or args.get("name") or args.get("mode") or ""
        self._row(i, e, "refused", f"{op} {what}".strip(), who=kid,
                  outcome=f"refused [{e.get('code', '')}] {e.get('reason', '')}", badge="refused")
        self.marks.append((i, "refused"))

    def _on_mode(self, i: int, e: Mapping[str, Any]) -> None:
        self.bands.append((self._band_start, i, self._mode))
        self._band_start, self._mode = i, str(e.get("mode"))
        self._row(i, e, "mode", f"mode {e.get('previous')} → {e.get('mode')}", badge="mode")

    def _on_evidence(self, i: int, e: Mapping[str, Any]) -> None:
        self._row(i, e, "evidence", f"evidence {e.get('kind')} ({e.get('purpose', '')})", badge="evidence")
        self.marks.append((i, "evidence"))

    def _on_lockdown(self, i: int, e: Mapping[str, Any]) -> None:
        checks = [c for c in e.get("checks") or [] if isinstance(c, Mapping)]
        passed = sum(1 for c in checks if c.get("ok") is True)
        op = self._row(i, e, "lockdown", f"lockdown: {passed}/{len(checks)} checks pass", badge="lockdown",
                       verdict="pass" if checks and passed == len(checks) else "fail")
        for c in checks:
            op.body.append(f"<div><span class='badge {'pass' if c.get('ok') is True else 'fail'}'>"
                           f"{'PASS' if c.get('ok') is True else 'FAIL'}</span>{esc(c.get('name'))}: "
                           f"{esc(c.get('detail', ''))}</div>")
        self.marks.append((i, "lockdown"))

    def _on_other(self, i: int, e: Mapping[str, Any]) -> None:
        t = str(e.get("type", "?"))
        detail = e.get("message") or e.get("reason") or ""
        self._row(i, e, "failed" if t == "error" else "other", f"{t} {detail}".strip(),
                  badge="fail" if t == "error" else t)


def _svg(tl: _Timeline, n: int) -> str:
    width, scale = 1000, 1000 / max(n, 1)
    parts = [f"<svg viewBox='0 0 {width} 60' role='img' aria-label='timeline of modes and operations'>"]
    for start, end, mode in tl.bands:
        if end > start:
            parts.append(f"<rect class='band' x='{start * scale:.2f}' y='0' width='{(end - start) * scale:.2f}' "
                         f"height='60' fill='{_MODE_COLOURS.get(mode, '#eee')}'><title>{esc(mode)}</title></rect>")
    colours = {"command": "#3b6fb6", "refused": "#b3261e", "evidence": "#6b4fb3", "lockdown": "#6b4fb3"}
    for i, kind in tl.marks:
        x = (i + 0.5) * scale
        y, h = (8, 44) if kind in ("command", "refused") else (22, 16)
        parts.append(f"<a href='#e{i}'><rect class='mark {kind}' x='{x - 1.5:.2f}' y='{y}' width='3' height='{h}' "
                     f"fill='{colours[kind]}'><title>{kind} #{i}</title></rect></a>")
    parts.append("</svg>")
    return "".join(parts)


_ENTRY_REF = re.compile(r"\bentr(?:y|ies) (\d+)")


def _check_rows(checks: Sequence[Mapping[str, Any]], n: int) -> str:
    out = []
    for c in checks:
        refs = c.get("entries")
        if isinstance(refs, list):
            indices = [int(x) for x in refs]
        else:
            indices = [int(m) for m in _ENTRY_REF.findall(str(c.get("detail", "")))]
        links = " ".join(f"<a href='#e{i}'>#{i}</a>" for i in indices if 0 <= i < n)
        mark = "pass" if c.get("ok") else "fail"
        sim = " <span class='sim'>SIMULATED</span>" if c.get("simulated") else ""
        out.append(f"<tr class='check {mark}'><td><span class='badge {mark}'>{mark.upper()}</span></td>"
                   f"<td>{esc(c.get('name'))}{sim}</td><td>{esc(c.get('detail', ''))}</td><td>{links}</td></tr>")
    return "".join(out)


def _op_html(op: _Op) -> str:
    who = f" <span class='meta'>by {esc(op.who[:16])}…</span>" if op.who else ""
    outcome = f" — <b>{esc(op.outcome)}</b>" if op.outcome else ""
    head = (f"<span class='badge {esc(op.verdict or op.badge)}'>{esc(op.badge)}</span><code>{esc(op.time)}</code> "
            f"<span class='meta'>[{esc(op.mode)}] #{op.index}</span> <code class='what'>{esc(op.title)}</code>"
            f"{who}{outcome}")
    anchors = "".join(f"<a id='e{i}'></a>" for i in op.anchors)
    if op.body:
        return (f"<details class='row {op.kind}' data-index='{op.index}'>{anchors}<summary>{head}</summary>"
                f"{''.join(op.body)}</details>")
    return f"<div class='row {op.kind}' data-index='{op.index}'>{anchors}{head}</div>"


def render_html(report: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> str:
    """The report as one HTML document. `report` is `Report.to_json()`; `entries` are the
    decoded entries the verifier checked, in log order (index = position)."""
    tl = _Timeline(entries).build()
    ok = bool(report.get("ok"))
    simulated = bool(report.get("simulated"))
    ctl = report.get("controller") or {}
    cp = report.get("checkpoint") or {}
    sim = " <span class='sim'>SIMULATED</span>" if simulated else ""
    legend = "<p class='legend'>" + "".join(
        f"<span><i class='swatch m-{m}'></i>{m}</span>" for m in _MODE_COLOURS) + "</p>"
    commands = sum(1 for r in tl.rows if r.kind == "command")
    refused = sum(1 for r in tl.rows if r.kind == "refused")
    return "".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{_csp()}\">",
        "<meta name='referrer' content='no-referrer'>",
        f"<title>duet verification report — CVM {esc(report.get('cvm', ''))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>CVM {esc(report.get('cvm', ''))}{sim}</h1>",
        f"<p><span class='verdict {'ok' if ok else 'fail'}' id='verdict'>"
        f"{'VERIFIED' if ok else 'NOT VERIFIED'}</span>{sim}</p>",
        f"<p class='meta'>controller {esc(ctl.get('controller_id', '?'))}, tee {esc(ctl.get('tee', '?'))}"
        f"{' (SIMULATED)' if ctl.get('simulated') else ''}; checkpoint size {esc(cp.get('size', '?'))}; "
        f"{commands} commands, {refused} refused. Written by the verifier from what it verified; "
        "every text from the log is shown escaped.</p>",
        legend,
        "<h2>Timeline</h2>", _svg(tl, len(entries)),
        "<h2>Checks</h2><table><tr><th></th><th>check</th><th>detail</th><th>entries</th></tr>",
        _check_rows([c for c in report.get("checks") or [] if isinstance(c, Mapping)], len(entries)),
        "</table><h2>Operations</h2>",
        "".join(_op_html(op) for op in tl.rows),
        "</body></html>\n",
    ])
