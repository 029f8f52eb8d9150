"""Pure checks of a CVM's hardware evidence and of the user's expectations.

Given the decoded log (already proven to hash to a checkpoint signed by the attested
controller), these checks re-verify every `evidence` entry from its raw bytes: the
report's signature chain, its binding to the SSH host key the controller pinned
(report data = SHA-512(nonce ‖ host key blob)) and to this instance (HOST_DATA =
the controller's per-CVM launch value from genesis); then they weigh the latest
evidence, the mode, the command history and the lockdown checks against what the
user expects.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta
from typing import Any

from duet.attestation import AttestationError, SnpReport, validate, verify_snp_report
from duet.attestation.binding import cvm_report_data
from duet.client.audit import Check, LogState
from duet.client.expectations import UserExpectations
from duet.ledger.builtins import builtin_template
from duet.ledger.lockdown import judge as judge_lockdown
from duet.ledger.regex import compile_linear

SNP_KINDS = ("snp", "simulated-snp")
#: How far the controller's clock may run ahead of the verifier's before an entry dated
#: after the verifier's own clock fails. The controller's entry times can only be held
#: back by its host (tee/clock.py), so an entry from the future is a lie, not a delay.
MAX_CLOCK_SKEW = timedelta(seconds=60)


def _time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))


def _pem_blocks(text: str) -> list[bytes]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    return [b.encode() + b"\n" for b in blocks]


def _check_self_signed(pem: bytes) -> None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(cert)
    except Exception as exc:
        raise ValueError(f"the evidence's root certificate is not a valid self-signed certificate: {exc}") from None


def verify_evidence_entry(
    e: dict[str, Any], *, host_key: str, host_data: str | None, trust_simulated: bool,
    decoded: list[dict[str, Any]],
) -> Any:
    """Verify one evidence entry; raises ValueError / AttestationError naming the problem."""
    kind = e.get("kind")
    if kind == "none":
        raise ValueError("the CVM runs without a TEE: there is no hardware evidence")
    if kind in ("tdx", "azure-snp"):
        return _verify_other(e, kind, host_key=host_key, decoded=decoded)
    if kind not in SNP_KINDS:
        raise ValueError(f"evidence kind {kind!r} is not supported by this verifier")
    simulated = kind == "simulated-snp"
    if simulated and not trust_simulated:
        raise ValueError("the CVM's evidence is SIMULATED SEV-SNP; pass --trust-simulated to accept it")
    collateral = e.get("collateral") or {}
    try:
        raw = base64.b64decode(str(e["evidence"]), validate=True)
        vcek = base64.b64decode(str(collateral["vcek"]), validate=True)
        chain = str(collateral.get("cert_chain", ""))
        nonce = bytes.fromhex(str(e["nonce"]))
    except (KeyError, ValueError, binascii.Error):
        raise ValueError("evidence entry lacks its report, VCEK or nonce") from None
    blocks = _pem_blocks(chain)
    trusted = None
    if simulated:
        # The development ARK travels in the log; accept it only as a well-formed,
        # self-signed root, so every byte of it is still checked.
        if len(blocks) != 2:
            raise ValueError("simulated evidence must carry exactly its ASK and ARK")
        _check_self_signed(blocks[-1])
        trusted = [blocks[-1]]
    report = verify_snp_report(
        raw, vcek_der=vcek, ask_pem=chain.encode() if chain else None, now=_time(e), trusted_arks=trusted
    )
    if report.report_data != cvm_report_data(nonce, host_key):
        raise ValueError("report data does not bind the nonce to the SSH host key the controller pinned")
    if host_data is not None and report.host_data != host_data:
        raise ValueError("HOST_DATA is not the launch value the controller chose for this CVM")
    ci = e.get("command_index")
    cmd = decoded[ci] if isinstance(ci, int) and 0 <= ci < len(decoded) else {}
    if cmd.get("type") != "command" or cmd.get("action") != "attest" or str(e["nonce"]) not in str(cmd.get("command")):
        raise ValueError("evidence does not point to the logged attest command that carried its nonce")
    return report


def _verify_other(e: dict[str, Any], kind: str, *, host_key: str, decoded: list[dict[str, Any]]) -> Any:
    """TDX quotes (with the collateral logged beside them) and Azure vTPM evidence."""
    from duet.attestation import verify_azure_evidence, verify_tdx_quote

    try:
        nonce = bytes.fromhex(str(e["nonce"]))
        raw = base64.b64decode(str(e["evidence"]), validate=True)
    except (KeyError, ValueError, binascii.Error):
        raise ValueError("evidence entry lacks its evidence or nonce") from None
    expected = cvm_report_data(nonce, host_key)
    if kind == "tdx":
        report: Any = verify_tdx_quote(raw, e.get("collateral") or {}, now=_time(e))
        if report.report_data != expected:
            raise ValueError("REPORTDATA does not bind the nonce to the SSH host key the controller pinned")
    else:
        import json

        report = verify_azure_evidence(json.loads(raw), now=_time(e), nonce=expected[:32])
        provisioned = next((d for d in decoded if d.get("type") == "provisioned"), {})
        if provisioned.get("instance_id") and str(report.vm_id or "").lower() != str(
                provisioned["instance_id"]).lower():
            raise ValueError("the vTPM evidence names another VM than the one the controller created")
    return report


def evidence_checks(
    decoded: list[dict[str, Any]], state: LogState, *, trust_simulated: bool, now: datetime,
    expect: UserExpectations | None,
) -> tuple[list[Check], SnpReport | None]:
    checks: list[Check] = []
    indices = state.evidence_indices
    simulated = any(decoded[i].get("kind") == "simulated-snp" for i in indices)
    if state.host_key is None:
        return [Check("evidence", False, "the log has no provisioned entry with a pinned host key")], None
    if not indices:
        return [Check("evidence", False, "the log holds no hardware evidence for this CVM")], None
    problems: list[str] = []
    latest: Any = None
    for i in indices:
        try:
            latest = verify_evidence_entry(decoded[i], host_key=state.host_key, host_data=state.host_data,
                                           trust_simulated=trust_simulated, decoded=decoded)
        except (ValueError, AttestationError) as exc:
            problems.append(f"entry {i}: {exc}")
            latest = None
    first_mode = next((i for i, e in enumerate(decoded) if e.get("type") == "mode"), len(decoded))
    if indices[0] > first_mode:
        problems.append("no evidence before the CVM was first made usable")
    problems.extend(_in_service_without_evidence(decoded))
    label = "SIMULATED SEV-SNP" if simulated else "SEV-SNP"
    checks.append(Check(
        "evidence", not problems, "; ".join(problems[:4]) or
        f"{len(indices)} {label} reports verify, each bound to the pinned host key and this instance's HOST_DATA",
        simulated=simulated,
    ))
    if expect is not None and expect.cvm is not None:
        checks.extend(_cvm_expectations(decoded, indices[-1], latest, state, expect, now, simulated))
    return checks, latest


def _in_service_without_evidence(decoded: list[dict[str, Any]]) -> list[str]:
    out, since_mode_change = [], False
    for i, e in enumerate(decoded):
        t = e.get("type")
        if t == "evidence" and e.get("purpose") == "in-service":
            since_mode_change = True
        elif t == "mode":
            if e.get("mode") == "in-service" and not since_mode_change:
                out.append(f"entry {i}: entered in-service without fresh evidence")
            since_mode_change = False
    return out


def _cvm_expectations(
    decoded: list[dict[str, Any]], latest_index: int, latest: SnpReport | None, state: LogState,
    expect: UserExpectations, now: datetime, simulated: bool,
) -> list[Check]:
    cvm = expect.cvm
    assert cvm is not None
    checks = []
    if cvm.tee is not None:
        checks.append(Check("cvm_tee", cvm.tee == state.tee,
                            f"TEE is {state.tee}" + ("" if cvm.tee == state.tee else f", expected {cvm.tee}")))
    if cvm.max_age is not None:
        age = now - _time(decoded[latest_index])
        if age < -MAX_CLOCK_SKEW:
            checks.append(Check("evidence_age", False, f"latest evidence is dated {_fmt(-age)} in the future "
                                f"(beyond the allowed clock skew of {_fmt(MAX_CLOCK_SKEW)}): its age is unknown"))
        else:
            ok = age <= cvm.max_age
            checks.append(Check("evidence_age", ok, f"latest evidence is {_fmt(max(age, timedelta(0)))} old"
                                + ("" if ok else f", more than the allowed {cvm.max_evidence_age}")))
    claims = cvm.evidence()
    if claims.model_dump(exclude_none=True):
        if latest is None:
            checks.append(Check("cvm_claims", False, "the latest evidence did not verify, so no claim can be checked"))
        else:
            failures = validate(latest, claims)
            checks.append(Check(
                "cvm_claims", not failures,
                "; ".join(f"{f.field} is {f.found}, expected {f.expected}" for f in failures)
                or "the latest evidence has every expected value", simulated=simulated))
    if cvm.mode is not None:
        checks.append(Check("mode", state.mode == cvm.mode,
                            f"CVM is {state.mode}" + ("" if state.mode == cvm.mode else f", expected {cvm.mode}")))
    return checks


def time_checks(decoded: list[dict[str, Any]], now: datetime, skew: timedelta = MAX_CLOCK_SKEW) -> list[Check]:
    """Entry times never go back, and none is later than our clock plus `skew`. The
    controller clamps a host clock that stepped back (the entry then records the host's
    reading in `host_time`), so a log that breaks either rule was not written by it."""
    late = now + skew
    problems: list[str] = []
    previous: datetime | None = None
    clamped = 0
    for i, e in enumerate(decoded):
        if "time" not in e:
            continue  # undecodable: entries_wellformed has failed already
        t = _time(e)
        if t > late:
            problems.append(f"entry {i} is dated {e['time']}, after our clock plus {_fmt(skew)}")
        if previous is not None and t < previous:
            problems.append(f"entry {i} is dated {e['time']}, before entry {i - 1}")
        previous = t
        clamped += "host_time" in e
    if problems:
        return [Check("entry_times", False, "; ".join(problems[:5]))]
    note = f" ({clamped} written while the host clock was behind)" if clamped else ""
    return [Check("entry_times", True, f"{len(decoded)} entry times never go back nor run ahead of ours{note}")]


def history_checks(decoded: list[dict[str, Any]], expect: UserExpectations | None) -> list[Check]:
    """Every owner command in the whole history must match an allowed pattern: state a
    command left behind outlives the update window it ran in. Every builtin command must
    be exactly one of duet's templates (`duet.ledger.builtins`), so that nothing rides
    past the allow-list under a builtin's name."""
    if expect is None or expect.history is None or expect.history.allowed_commands is None:
        return []
    patterns = [compile_linear(p) for p in expect.history.allowed_commands]  # RE2: no backtracking
    bad = [
        f"entry {i}: {e.get('command')!r}"
        for i, e in enumerate(decoded)
        if e.get("type") == "command" and not e.get("builtin")
        and not any(p.search(str(e.get("command"))) for p in patterns)
    ]
    provisioned: dict[str, Any] = next((e for e in decoded if e.get("type") == "provisioned"), {})
    launch = provisioned.get("launch")
    launch = launch if isinstance(launch, dict) else {}
    snp = launch.get("simulated_snp")
    snp = snp if isinstance(snp, dict) else {}
    user = provisioned.get("user") if isinstance(provisioned.get("user"), str) else None
    tool = snp.get("report_tool") if isinstance(snp.get("report_tool"), str) else None
    bad += [
        f"entry {i}: builtin {e.get('action')} ran {e.get('command')!r}, not one of duet's templates"
        for i, e in enumerate(decoded)
        if e.get("type") == "command" and e.get("builtin")
        and builtin_template(e, user=user, report_tool=tool) is None
    ]
    n = sum(1 for e in decoded if e.get("type") == "command" and not e.get("builtin"))
    return [Check("history", not bad, ("commands outside the allowed patterns: " + "; ".join(bad[:5]))
                  if bad else f"all {n} owner commands match the allowed patterns; every builtin is duet's")]


def lockdown_checks(decoded: list[dict[str, Any]], state: LogState, expect: UserExpectations | None) -> list[Check]:
    """The latest lockdown must pass every expected check twice: as the controller judged
    it, and as today's judges (`duet.ledger.lockdown`) judge the facts it logged. A log
    without facts (an older controller, an older and weaker judge) fails."""
    if expect is None or expect.lockdown is None:
        return []
    if not state.lockdown_indices:
        return [Check("lockdown", False, "the log holds no lockdown checks")]
    i = state.lockdown_indices[-1]
    entry = decoded[i]
    results = {c.get("name"): c for c in entry.get("checks", []) if isinstance(c, dict)}
    facts = entry.get("facts")
    problems = []
    for name in expect.lockdown:
        c = results.get(name)
        if c is None:
            problems.append(f"{name} was not checked")
            continue
        if c.get("ok") is not True:
            problems.append(f"{name} failed: {c.get('detail', '')}")
            continue
        if not isinstance(facts, dict):
            problems.append(f"{name}: the entry logs no facts (an older, weaker judge); it cannot be judged again")
            continue
        ok, detail = judge_lockdown(name, facts)
        if not ok:
            problems.append(f"{name} fails when judged again: {detail}")
    return [Check("lockdown", not problems, (f"latest lockdown (entry {i}): " + "; ".join(problems))
                  if problems else f"latest lockdown (entry {i}) passes {', '.join(expect.lockdown)}")]


def _fmt(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
