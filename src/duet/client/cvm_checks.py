"""Pure checks of a CVM's hardware evidence and of the user's expectations.

Given the decoded log (already proven to hash to a checkpoint signed by the attested
controller), these checks re-verify every `evidence` entry from its raw bytes: the
report's signature chain, its binding to the SSH host key the controller pinned
(report data = SHA-512(nonce ‖ host key blob)) and to this instance (the binding the
provider declared in genesis: HOST_DATA, MRCONFIGID, the VM id, or none, which the
user must accept explicitly), all through the same registry the controller used
(`duet.attestation.cvm_kinds`); then they weigh the newest verified evidence, the mode,
the command history and the lockdown checks against what the user expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Sized
from datetime import datetime, timedelta
from typing import Any

from duet.attestation import AttestationError, cvm_kinds, validate
from duet.client.audit import Check, LogState
from duet.client.expectations import UserExpectations
from duet.ledger import control_plane, evidence_nonce
from duet.ledger.builtins import builtin_template
from duet.ledger.entries import EvidencePurpose, Mode
from duet.ledger.lockdown import judge as judge_lockdown
from duet.ledger.regex import compile_linear

SNP_KINDS = ("snp", "simulated-snp")
#: How far the controller's clock may run ahead of the verifier's before an entry dated
#: after the verifier's own clock fails. The controller's entry times can only be held
#: back by its host (tee/clock.py), so an entry from the future is a lie, not a delay.
MAX_CLOCK_SKEW = timedelta(seconds=60)


def _time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))


def declared_kind(genesis: dict[str, Any]) -> str | None:
    """The evidence kind the provider declared at create (genesis). Logs of early
    controllers lack it; there the `tee` field was the evidence kind."""
    kind = genesis.get("evidence_kind", genesis.get("tee"))
    return kind if isinstance(kind, str) else None


def declared_binding(genesis: dict[str, Any]) -> str:
    """The instance binding the provider declared. Logs of early controllers lack it:
    there SNP kinds were bound by HOST_DATA (when genesis carries it), Azure by the VM
    id, and nothing else had one."""
    binding = genesis.get("instance_binding")
    if isinstance(binding, str):
        return binding
    kind = declared_kind(genesis)
    if kind in (cvm_kinds.CvmKind.SNP, cvm_kinds.CvmKind.SIMULATED_SNP) and genesis.get("host_data"):
        return cvm_kinds.InstanceBinding.HOST_DATA
    if kind in (cvm_kinds.CvmKind.AZURE_SNP, cvm_kinds.CvmKind.AZURE_TDX):
        return cvm_kinds.InstanceBinding.VM_ID
    return cvm_kinds.InstanceBinding.NONE


def verify_evidence_entry(
    e: dict[str, Any], *, host_key: str, binding: str, host_data: str | None, instance_id: str | None,
    trust: cvm_kinds.Trust, decoded: list[dict[str, Any]], index: int,
) -> cvm_kinds.Verified:
    """Verify one evidence entry exactly as the controller did before logging it
    (`cvm_kinds.verify_evidence`), then its link to the logged command that asked for
    it. `trust`: what the user trusts (`user_trust`). Raises ValueError /
    AttestationError naming the problem."""
    verified = cvm_kinds.verify_evidence(e, host_key=host_key, now=_time(e), trust=trust, binding=binding,
                                         host_data=host_data, instance_id=instance_id)
    _check_command_link(e, decoded, index)
    return verified


def user_trust(
    expect: UserExpectations | None, *, simulated: bool, snp_arks: tuple[bytes, ...] | None = None,
    tdx_roots: tuple[bytes, ...] | None = None,
) -> cvm_kinds.Trust:
    """What the user's verifier trusts beyond the vendors' roots: `simulated` (the
    simulated kinds), the SEV-SNP and DCAP roots given (library callers, tests), else those
    the expectations pin (`cvm.snp_arks`, `cvm.tdx_roots`), else none (AMD's and Intel's
    only); the MAA keys and the vTPM roots the expectations pin (`maa_pins`, `ak_roots`)."""
    return cvm_kinds.Trust(simulated=simulated,
                           snp_arks=snp_arks if snp_arks is not None else pinned_snp_arks(expect),
                           tdx_roots=tdx_roots if tdx_roots is not None else pinned_tdx_roots(expect),
                           maa=maa_pins(expect), azure_ak_roots=ak_roots(expect))


def maa_pins(expect: UserExpectations | None) -> cvm_kinds.MaaPins | None:
    """What the user pins of MAA (`cvm.maa_jwks`, `cvm.maa_signing_keys`, `cvm.maa_issuer`);
    None when nothing is pinned, and then MAA evidence fails."""
    if expect is None or expect.cvm is None:
        return None
    claims = expect.cvm.evidence()
    if claims.maa_jwks is None and claims.maa_signing_keys is None and claims.maa_issuer is None:
        return None
    return cvm_kinds.MaaPins(
        issuer=claims.maa_issuer, jwks=claims.maa_jwks,
        key_sha256=tuple(claims.maa_signing_keys) if claims.maa_signing_keys is not None else None)


def _pinned(expect: UserExpectations | None, field: str) -> tuple[bytes, ...] | None:
    """The certificates (PEM) the expectations pin under `cvm.<field>`; None: none."""
    if expect is None or expect.cvm is None:
        return None
    pems = getattr(expect.cvm.evidence(), field)
    return tuple(p.encode() for p in pems) if pems is not None else None


def ak_roots(expect: UserExpectations | None) -> tuple[bytes, ...] | None:
    """The vTPM roots the user pins for Azure AK certificates (`cvm.azure_ak_roots`); None:
    the AK certificate is shown but not checked (the AK is bound by the hardware report)."""
    return _pinned(expect, "azure_ak_roots")


def pinned_snp_arks(expect: UserExpectations | None) -> tuple[bytes, ...] | None:
    """The SEV-SNP roots the user trusts instead of AMD's ARKs (`cvm.snp_arks`); None:
    AMD's only."""
    return _pinned(expect, "snp_arks")


def pinned_tdx_roots(expect: UserExpectations | None) -> tuple[bytes, ...] | None:
    """The DCAP roots the user trusts instead of Intel's for TDX quotes (`cvm.tdx_roots`),
    as DER (what the DCAP verifier compares); None: Intel's only."""
    from duet.attestation.pinned_roots import load_pinned

    pems = _pinned(expect, "tdx_roots")
    return tuple(load_pinned("tdx_roots", pems)) if pems is not None else None


def _check_command_link(e: dict[str, Any], decoded: list[dict[str, Any]], index: int) -> None:
    """Every kind alike: the evidence names the builtin `attest` command, logged before
    it, whose text carries its nonce and which completed before the evidence was logged."""
    def attest(ci: int) -> tuple[dict[str, Any] | None, bool]:
        done = any(d.get("type") == "result" and d.get("command_index") == ci for d in decoded[ci + 1:index])
        return decoded[ci], done

    check_command_link(e, index, attest)


#: Evidence entries under one intent (an honest controller logs one per attest command,
#: and runs a few attest commands per intent); more are a problem and are not remembered.
MAX_EVIDENCE_PER_INTENT = 256


def evidence_nonce_problem(nonce: Any, intent_index: Any, seen: Mapping[int, Sized]) -> str | None:
    """Why evidence with `nonce`, answering an attest command under `intent_index`, is
    refused before its nonce is compared with those in `seen` (by intent), or None."""
    stale = evidence_nonce.problem(nonce, intent_index)
    if stale is not None:
        return stale
    if len(seen.get(intent_index, ())) >= MAX_EVIDENCE_PER_INTENT:
        return f"more than {MAX_EVIDENCE_PER_INTENT} evidence entries under intent {intent_index}"
    return None


def attest_command(decoded: Sequence[dict[str, Any]], ci: Any, index: int) -> dict[str, Any] | None:
    """The attest command entry at `ci`, if evidence at `index` can name it (else the
    link check reports it)."""
    if not isinstance(ci, int) or isinstance(ci, bool) or not 0 <= ci < index:
        return None
    cmd = decoded[ci]
    if cmd.get("type") != "command" or cmd.get("action") != "attest" or cmd.get("builtin") is not True:
        return None
    return cmd


def check_command_link(
    e: dict[str, Any], index: int, attest: Callable[[int], tuple[dict[str, Any] | None, bool]],
) -> None:
    """The link rule, given `attest(ci)`: the entry at `ci` (None when unknown) and
    whether a result for it was logged before `index` (the streaming replay remembers
    only recent attest commands, so an unknown one fails, never passes)."""
    ci = e.get("command_index")
    if not isinstance(ci, int) or isinstance(ci, bool) or not 0 <= ci < index:
        raise ValueError("evidence does not point to the logged attest command that carried its nonce")
    cmd, done = attest(ci)
    if cmd is None or cmd.get("type") != "command" or cmd.get("action") != "attest" \
            or cmd.get("builtin") is not True or str(e.get("nonce")) not in str(cmd.get("command")):
        raise ValueError("evidence does not point to the logged attest command that carried its nonce")
    if not done:
        raise ValueError("evidence was logged before its attest command's result")


def evidence_checks(
    decoded: list[dict[str, Any]], state: LogState, *, trust_simulated: bool, now: datetime,
    expect: UserExpectations | None, snp_arks: tuple[bytes, ...] | None = None,
    tdx_roots: tuple[bytes, ...] | None = None,
) -> tuple[list[Check], Any]:
    """`snp_arks` / `tdx_roots`: SEV-SNP / DCAP roots to trust instead of AMD's / Intel's
    (private roots, tests); else those the expectations pin (`user_trust`)."""
    trust = user_trust(expect, simulated=trust_simulated, snp_arks=snp_arks, tdx_roots=tdx_roots)
    checks: list[Check] = []
    indices = state.evidence_indices
    if state.host_key is None:
        return [Check("evidence", False, "the log has no provisioned entry with a pinned host key")], None
    if not indices:
        return [Check("evidence", False, "the log holds no hardware evidence for this CVM")], None
    genesis = decoded[0]
    kind, binding = declared_kind(genesis), declared_binding(genesis)
    provisioned = next((d for d in decoded if d.get("type") == "provisioned"), {})
    instance_id = provisioned.get("instance_id")
    problems: list[str] = binding_problems(genesis, expect)
    latest: cvm_kinds.Verified | None = None
    #: Evidence nonces by the intent their attest command ran under.
    nonces: dict[int, set[str]] = {}
    allow_debug = expect is not None and expect.cvm is not None and expect.cvm.allow_debug
    for i in indices:
        e = decoded[i]
        latest = None
        if e.get("kind") != kind and e.get("kind") != cvm_kinds.CvmKind.NONE:
            problems.append(f"entry {i}: evidence kind {e.get('kind')} is not the kind declared at create ({kind})")
            continue
        cmd = attest_command(decoded, e.get("command_index"), i)
        if cmd is not None:  # else the link check in verify_evidence_entry fails
            under = cmd.get("intent_index")
            problem = evidence_nonce_problem(e.get("nonce"), under, nonces)
            if problem is not None:
                problems.append(f"entry {i}: {problem}")
                continue
            assert isinstance(under, int)  # evidence_nonce.problem said so
            if str(e.get("nonce")) in nonces.setdefault(under, set()):
                problems.append(f"entry {i}: evidence nonce reused (not fresh)")
                continue
            nonces[under].add(str(e.get("nonce")))
        try:
            latest = verify_evidence_entry(
                e, host_key=state.host_key, binding=binding, host_data=state.host_data,
                instance_id=str(instance_id) if instance_id else None, trust=trust, decoded=decoded, index=i)
        except (ValueError, AttestationError) as exc:
            problems.append(f"entry {i}: {exc}")
            continue
        if getattr(latest.report, "debug", False) is not False and not allow_debug:
            problems.append(f"entry {i}: the CVM runs with DEBUG enabled (the host can read and change its "
                            "memory); accept that explicitly with cvm.allow_debug: true")
    state.evidence_kind = latest.kind if latest is not None else None
    first_mode = next((i for i, e in enumerate(decoded) if e.get("type") == "mode"), len(decoded))
    if indices[0] > first_mode:
        problems.append("no evidence before the CVM was first made usable")
    problems.extend(_in_service_without_evidence(decoded))
    simulated = cvm_kinds.is_simulated(kind) or bool(latest and latest.simulated)
    checks.append(Check(
        "evidence", not problems, "; ".join(problems[:4]) or evidence_summary(kind, binding, len(indices), latest),
        simulated=simulated,
    ))
    if expect is not None and expect.cvm is not None:
        checks.extend(cvm_expectations(_time(decoded[indices[-1]]), latest, state, expect, now, simulated))
    return checks, latest.report if latest is not None else None


def binding_problems(genesis: dict[str, Any], expect: UserExpectations | None) -> list[str]:
    """The instance binding the provider declared, against what the user accepts."""
    binding = declared_binding(genesis)
    accepted = expect.cvm.instance_binding if expect is not None and expect.cvm is not None else None
    if binding == cvm_kinds.InstanceBinding.NONE and accepted != cvm_kinds.InstanceBinding.NONE:
        return [f"the provider ({genesis.get('provider')}) declares no instance binding: the evidence is bound to "
                "the SSH host key only; accept that explicitly with cvm.instance_binding: none"]
    if accepted is not None and accepted != binding:
        return [f"the CVM's instance binding is {binding}, expected {accepted}"]
    return []


def evidence_summary(kind: str | None, binding: str, count: int, latest: cvm_kinds.Verified | None) -> str:
    bound = "this instance's " + binding if binding != cvm_kinds.InstanceBinding.NONE else "no per-CVM value"
    return (f"{count} {cvm_kinds.label_of(kind)} reports verify, each bound to the pinned host key and {bound}"
            + _root_note(kind, latest) + _event_log_note(latest) + _ak_note(latest))


def _root_note(kind: str | None, latest: cvm_kinds.Verified | None) -> str:
    """A hardware kind whose newest report verified only under a root pinned instead of
    the vendor's (`cvm.snp_arks`, `cvm.tdx_roots`): the report says so, and that it proves
    no AMD (Intel) hardware."""
    if latest is None or not latest.simulated or cvm_kinds.is_simulated(kind):
        return ""
    if "tdx" in str(kind):
        return ("; SIMULATED: they chain to a pinned non-Intel DCAP root (cvm.tdx_roots) instead of Intel's, "
                "which proves no Intel hardware")
    return ("; SIMULATED: they chain to a pinned non-AMD SEV-SNP root (cvm.snp_arks) instead of AMD's ARKs, "
            "which proves no AMD hardware")


def _event_log_note(latest: cvm_kinds.Verified | None) -> str:
    """What the newest evidence's replayed event log names (TDX's CCEL, an Azure vTPM's
    TCG log), for the report."""
    log = getattr(latest.report, "event_log", None) if latest is not None else None
    if not isinstance(log, dict):
        return ""
    parts = [f"{log.get('events')} events"]
    kernel, cmdline = log.get("kernel"), log.get("cmdline")
    if isinstance(kernel, dict):
        parts.append(f"kernel {str(kernel.get('digest'))[:16]}…")
    if isinstance(cmdline, dict):
        parts.append(f"cmdline {cmdline.get('text')!r}" + ("" if cmdline.get("measured") else " (text not measured)"))
    registers = "PCRs" if "pcrs" in log else "RTMRs"
    return f"; the newest one's event log replays to its {registers} (" + ", ".join(parts) + ")"


def _ak_note(latest: cvm_kinds.Verified | None) -> str:
    """The newest Azure evidence's AK certificate: who it names, and whether it was judged."""
    ak = getattr(latest.report, "ak_certificate", None) if latest is not None else None
    if not isinstance(ak, dict) or ak.get("status") == "absent":
        return ""
    if ak.get("status") == "verified":
        return f"; its AK certificate {ak.get('subject')} chains to a pinned vTPM root ({ak.get('chain')})"
    return (f"; its AK certificate ({ak.get('subject')}, issued by {ak.get('issuer')}) is {ak.get('status')}: "
            "the AK is bound by the hardware report")


def _in_service_without_evidence(decoded: list[dict[str, Any]]) -> list[str]:
    out, since_mode_change = [], False
    for i, e in enumerate(decoded):
        t = e.get("type")
        if t == "evidence" and e.get("purpose") == EvidencePurpose.IN_SERVICE:
            since_mode_change = True
        elif t == "mode":
            if e.get("mode") == Mode.IN_SERVICE and not since_mode_change:
                out.append(f"entry {i}: entered in-service without fresh evidence")
            since_mode_change = False
    return out


def _cvm_expectations(
    decoded: list[dict[str, Any]], latest_index: int, latest: cvm_kinds.Verified | None, state: LogState,
    expect: UserExpectations, now: datetime, simulated: bool,
) -> list[Check]:
    return cvm_expectations(_time(decoded[latest_index]), latest, state, expect, now, simulated)


def cvm_expectations(
    latest_time: datetime, latest: cvm_kinds.Verified | None, state: LogState,
    expect: UserExpectations, now: datetime, simulated: bool,
) -> list[Check]:
    """`latest_time`: the time of the newest evidence entry (whether or not it verified)."""
    cvm = expect.cvm
    assert cvm is not None
    checks = []
    if cvm.tee is not None:
        # The kind of the newest evidence that verified, never the owner's label.
        found = latest.kind if latest is not None else None
        checks.append(Check("cvm_tee", cvm.tee == found,
                            (f"the newest evidence is {found}" if found else "the newest evidence did not verify")
                            + ("" if cvm.tee == found else f", expected {cvm.tee}")))
    if cvm.max_age is not None:
        age = now - latest_time
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
            failures = validate(latest.report, claims)
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
    user, tool = builtin_context(provisioned)
    bad += [
        f"entry {i}: builtin {e.get('action')} ran {e.get('command')!r}, not one of duet's templates"
        for i, e in enumerate(decoded)
        if e.get("type") == "command" and e.get("builtin")
        and builtin_template(e, user=user, report_tool=tool) is None
    ]
    n = sum(1 for e in decoded if e.get("type") == "command" and not e.get("builtin"))
    return [Check("history", not bad, ("commands outside the allowed patterns: " + "; ".join(bad[:5]))
                  if bad else f"all {n} owner commands match the allowed patterns; every builtin is duet's")]


def builtin_context(provisioned: dict[str, Any]) -> tuple[str | None, str | None]:
    """(SSH user, local report tool) of the first provisioned entry: what the builtin
    templates name."""
    launch = provisioned.get("launch")
    launch = launch if isinstance(launch, dict) else {}
    snp = launch.get("simulated_snp") or launch.get("simulated_tdx")
    snp = snp if isinstance(snp, dict) else {}
    user = provisioned.get("user") if isinstance(provisioned.get("user"), str) else None
    tool = snp.get("report_tool") if isinstance(snp.get("report_tool"), str) else None
    return user, tool


def lockdown_checks(decoded: list[dict[str, Any]], state: LogState, expect: UserExpectations | None) -> list[Check]:
    """The latest lockdown must pass every expected check twice: as the controller judged
    it, and as today's judges (`duet.ledger.lockdown`) judge the facts it logged. A log
    without facts (an older controller, an older and weaker judge) fails."""
    if expect is None or expect.lockdown is None:
        return []
    if not state.lockdown_indices:
        return [Check("lockdown", False, "the log holds no lockdown checks")]
    i = state.lockdown_indices[-1]
    return [judge_latest_lockdown(i, decoded[i], expect.lockdown)]


def judge_latest_lockdown(i: int, entry: dict[str, Any], expected: list[str]) -> Check:
    results = {c.get("name"): c for c in entry.get("checks", []) if isinstance(c, dict)}
    facts = entry.get("facts")
    problems = []
    for name in expected:
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
    return Check("lockdown", not problems, (f"latest lockdown (entry {i}): " + "; ".join(problems))
                 if problems else f"latest lockdown (entry {i}) passes {', '.join(expected)}")


def _fmt(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def control_plane_checks(decoded: list[dict[str, Any]]) -> list[Check]:
    """For a CVM of a cloud whose control plane duet judges (`duet.ledger.control_plane`):
    every entry into in-service inspected the cloud's model of the CVM, and the newest
    inspection passes when today's judges read its facts again."""
    provider = str(decoded[0].get("provider")) if decoded else ""
    if provider not in control_plane.JUDGES:
        return []
    seen = [i for i, e in enumerate(decoded) if e.get("type") == "control_plane"]
    if not seen:
        return [Check("control_plane", False, f"the {provider} control plane of this CVM was never inspected")]
    problems = []
    modes = [i for i, e in enumerate(decoded) if e.get("type") == "mode"]
    for i in modes:
        if decoded[i].get("mode") == Mode.IN_SERVICE:
            before = max((m for m in modes if m < i), default=0)
            if not any(before < c < i for c in seen):
                problems.append(f"entry {i}: in-service entered without inspecting the control plane")
    # A re-check that could not read the model (an error marked `model_read: false`)
    # leaves the newest state unknown: not a closed door.
    unread = [i for i, e in enumerate(decoded) if e.get("type") == "error" and e.get("code") == "control_plane_failed"
              and e.get("model_read") is False and i > seen[-1]]
    if unread:
        problems.append(f"entry {unread[-1]}: the control plane could not be read after the newest inspection "
                        f"(entry {seen[-1]}): {str(decoded[unread[-1]].get('message'))[:200]}")
    latest = decoded[seen[-1]]
    facts: dict[str, Any] = latest["facts"] if isinstance(latest.get("facts"), dict) else {}
    verdicts = control_plane.judge(facts)
    problems += [f"entry {seen[-1]}: {name}: {detail}" for name, ok, detail in verdicts if not ok]
    provisioned = next((e for e in decoded if e.get("type") == "provisioned"), {})
    mismatch = control_plane.launch_problem(facts, provisioned.get("launch"))
    if mismatch is not None:
        problems.append(f"entry {seen[-1]}: {mismatch}")
    return [Check("control_plane", not problems, "; ".join(problems[:5]) or
                  f"the {provider} model of the CVM (entry {seen[-1]}) passes every check: "
                  + ", ".join(name for name, _, _ in verdicts))]
