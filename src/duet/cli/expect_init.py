"""`duet expect init CVM`: an expectations file written from a CVM that verified.

Trust on first use: the file blesses whatever the verified history holds today (the
controller build, the CVM's measurement, every command the owner ran so far). It is a
starting point to read and tighten, never a substitute for reading the commands; so it
says on stderr what it pinned and that it is TOFU.
"""

from __future__ import annotations

from typing import Any

#: RE2 and Python agree on escaping these with a backslash; everything else is literal.
_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def anchored(text: str) -> str:
    """`^text$` matching exactly `text` (RE2 syntax: no `re.escape` of spaces)."""
    return "^" + "".join("\\" + ch if ch in _SPECIAL else ch for ch in text) + "$"


def _policy_text(decoded: list[dict[str, Any]]) -> str | None:
    text = None
    for e in decoded:
        if e.get("type") in ("genesis", "policy") and isinstance(e.get("policy"), str):
            text = e["policy"]
    return text


def build(report: Any, decoded: list[dict[str, Any]], latest_evidence: Any) -> tuple[dict[str, Any], list[str]]:
    """The expectations, and the human lines saying what each pins."""
    from duet.ledger.lockdown import judge
    from duet.ledger.policy import parse_policy

    notes: list[str] = []
    doc: dict[str, Any] = {}
    c = report.controller
    ctl: dict[str, Any] = {"tee": "sgx"}
    for k in ("mrenclave", "mrsigner", "isv_prod_id"):
        if c.get(k) is not None:
            ctl[k] = c[k]
    if isinstance(c.get("isv_svn"), int):
        ctl["min_isv_svn"] = c["isv_svn"]
    if c.get("tcb_status"):
        ctl["accepted_tcb_statuses"] = [c["tcb_status"]]
    doc["controller"] = ctl
    sim = " (SIMULATED)" if c.get("simulated") else ""
    notes.append(f"controller: MRENCLAVE {str(c.get('mrenclave'))[:16]}…, MRSIGNER {str(c.get('mrsigner'))[:16]}…, "
                 f"ISV SVN >= {ctl.get('min_isv_svn')}, TCB {ctl.get('accepted_tcb_statuses')}{sim}")

    cvm: dict[str, Any] = {}
    state = report.state
    kind = getattr(state, "evidence_kind", None)
    if kind:
        cvm["tee"] = str(kind)
    target = getattr(latest_evidence, "hardware", None) or latest_evidence
    for field in ("measurement", "host_data", "mrtd", "mrconfigid"):
        value = getattr(target, field, None)
        if isinstance(value, str) and value:
            cvm[field] = value
    # A TD's event log, replayed against its RTMRs; an Azure vTPM's, against its PCRs (on
    # the Azure result itself, not on its hardware report).
    log = getattr(latest_evidence, "event_log", None) if target is not latest_evidence else None
    if not isinstance(log, dict):
        log = getattr(target, "event_log", None)
    if isinstance(log, dict):
        cvm["require_event_log"] = True
        kernel, cmdline = log.get("kernel"), log.get("cmdline")
        if isinstance(kernel, dict) and isinstance(kernel.get("digest"), str):
            cvm["kernel_digest"] = kernel["digest"]
        if isinstance(cmdline, dict) and cmdline.get("measured") is True and isinstance(cmdline.get("text"), str):
            cvm["kernel_cmdline"] = cmdline["text"]
    genesis = decoded[0] if decoded else {}
    if genesis.get("instance_binding") == "none":
        cvm["instance_binding"] = "none"
    if state is not None and state.mode == "in-service":
        cvm["mode"] = "in-service"
    if cvm:
        doc["cvm"] = cvm
    notes.append("cvm: " + ", ".join(f"{k} {str(v)[:16]}" for k, v in cvm.items()))

    commands: list[str] = []
    for e in decoded:
        if e.get("type") == "command" and not e.get("builtin") and not e.get("action"):
            p = anchored(str(e.get("command")))
            if p not in commands:
                commands.append(p)
    n_seen = len(commands)
    policy_text = _policy_text(decoded)
    actions: list[str] = []
    if policy_text is not None:
        for name, action in parse_policy(policy_text).actions.items():
            if action.run is not None:
                p = anchored(action.run)
                actions.append(name)
                if p not in commands:
                    commands.append(p)
    doc["history"] = {"allowed_commands": commands}
    notes.append(f"history: the {n_seen} owner command(s) seen so far and the policy's actions "
                 f"({', '.join(actions) or 'none'}), each as an anchored, escaped regex")

    lockdown_i = next((i for i in range(len(decoded) - 1, -1, -1) if decoded[i].get("type") == "lockdown"), None)
    if lockdown_i is not None:
        entry = decoded[lockdown_i]
        facts = entry.get("facts")
        passing = []
        for chk in entry.get("checks") or []:
            if isinstance(chk, dict) and chk.get("ok") is True and isinstance(facts, dict):
                ok, _ = judge(str(chk.get("name")), facts)
                if ok:
                    passing.append(str(chk.get("name")))
        if passing:
            doc["lockdown"] = passing
            notes.append(f"lockdown: {len(passing)} checks that pass in entry {lockdown_i}: {', '.join(passing)}")
    if report.owner_keys:
        doc["owner"] = {"keys": list(report.owner_keys)}
        notes.append(f"owner: {len(report.owner_keys)} key(s) in force")
    return doc, notes
