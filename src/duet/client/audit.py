"""Pure checks of a CVM log's contents: what a service user relies on, given the leaves.

No I/O here: `verify.py` fetches and checks signatures and proofs, then hands the
leaves to `audit_log`, which replays the log as a state machine (owner keys, policy,
mode) and reports every rule the history breaks. Each finding names the entry index.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duet.client.nonce_window import NonceWindow
from duet.ledger import entries, evidence_nonce, keys
from duet.ledger.builtins import ALL_SNAPSHOT_COMMANDS
from duet.ledger.entries import Mode
from duet.ledger.errors import LedgerError
from duet.ledger.intent import Intent, parse_intent, verify_signature
from duet.ledger.operations import Op
from duet.ledger.policy import BUILTINS, Policy, parse_policy


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    simulated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "simulated": self.simulated}


@dataclass
class LogState:
    """What the log says about the CVM, after replaying it."""

    mode: str = Mode.PROVISIONING
    epoch: int = 0
    deleted: bool = False
    host_key: str | None = None
    host_data: str | None = None
    tee: str | None = None
    #: The kind of the newest evidence that verified (set by the evidence checks).
    evidence_kind: str | None = None
    commands: int = 0
    rejected: int = 0
    interrupted: int = 0
    last_in_service_index: int | None = None
    evidence_indices: list[int] = field(default_factory=list)
    lockdown_indices: list[int] = field(default_factory=list)


@dataclass
class Audit:
    checks: list[Check]
    state: LogState
    decoded: list[dict[str, Any]]


def audit_log(leaves: Sequence[bytes], *, controller_id: str, controller_key_b64: str, cvm_id: str) -> Audit:
    checks: list[Check] = []
    decoded: list[dict[str, Any]] = []
    bad: list[str] = []
    for i, leaf in enumerate(leaves):
        # Through the typed model: every field a check below relies on is validated
        # here, and a mismatch names the field.
        try:
            decoded.append(entries.parse(leaf).to_dict())
        except LedgerError as exc:
            bad.append(f"entry {i}: {exc}")
            decoded.append({"type": "undecodable"})
    checks.append(
        Check("entries_wellformed", not bad, "; ".join(bad[:3])
              or f"all {len(leaves)} entries are canonical JSON and match their schema")
    )
    state = LogState()
    checks.append(_check_genesis(decoded, controller_id, controller_key_b64, cvm_id, state))
    if not checks[-1].ok:
        return Audit(checks, state, decoded)
    checks.extend(_replay(decoded, controller_id, cvm_id, state))
    return Audit(checks, state, decoded)


def _check_genesis(d: list[dict[str, Any]], cid: str, ckey: str, cvm_id: str, state: LogState) -> Check:
    if not d or d[0].get("type") != "genesis":
        return Check("genesis", False, "the log does not start with a genesis entry")
    g = d[0]
    problems = []
    if g.get("controller_id") != cid:
        problems.append("names another controller id")
    if g.get("controller_key") != ckey:
        problems.append("names another controller key than the attested one")
    if g.get("cvm_id") != cvm_id:
        problems.append(f"is for CVM {g.get('cvm_id')!r}, not {cvm_id!r}")
    if g.get("origin") != f"duet/{cid}/{cvm_id}":
        problems.append("has the wrong checkpoint origin")
    state.host_data = g.get("host_data")
    state.tee = g.get("tee")
    if problems:
        return Check("genesis", False, "genesis " + ", ".join(problems))
    what = f"tee {g.get('tee')}, provider {g.get('provider')}"
    return Check("genesis", True, f"genesis names this controller and CVM ({what})")


def _replay(d: list[dict[str, Any]], cid: str, cvm_id: str, state: LogState) -> list[Check]:
    g = d[0]
    owner_keys = _keyset(g.get("owner_keys", []))
    try:
        policy: Policy = parse_policy(str(g.get("policy", "")))
    except LedgerError as exc:
        return [Check("policy", False, f"the genesis policy does not parse: {exc}")]
    intent_problems: list[str] = []
    cmd_problems: list[str] = []
    mode_problems: list[str] = []
    nonces = NonceWindow()
    intents: dict[int, Intent] = {}
    open_commands: dict[int, dict[str, Any]] = {}
    streamed: dict[int, StreamedOutput] = {}
    entry_problems: list[str] = []
    used_intents: dict[int, int] = {}
    #: The entry into in-service in progress: its intent's index and what it has shown.
    transition: dict[str, Any] | None = None

    def check_jws(i: int, e: dict[str, Any]) -> Intent | None:
        try:
            it = parse_intent(str(e.get("jws")))
            verify_signature(it, owner_keys)
        except LedgerError as exc:
            intent_problems.append(f"entry {i}: {exc}")
            return None
        if it.payload["aud"] != cid:
            intent_problems.append(f"entry {i}: intent addressed to another controller")
        if it.cvm is not None and it.cvm != cvm_id:
            intent_problems.append(f"entry {i}: intent is for CVM {it.cvm}, logged in {cvm_id}")
        intent_problems.extend(nonce_problems(nonces, i, e, it))
        return it

    for i, e in enumerate(d[1:], start=1):
        t = e.get("type")
        if state.deleted:
            mode_problems.append(f"entry {i}: {t} after the CVM was deleted")
        if t == "intent":
            it = check_jws(i, e)
            transition = None
            if it is not None:
                intents[i] = it
                if i == 1 and it.op != Op.CREATE:
                    intent_problems.append("entry 1 is not the cvm.create intent")
                if it.op == Op.MODE and it.args.get("mode") == Mode.IN_SERVICE:
                    transition = {"intent": i, "lockdown": False, "evidence": False, "snapshot": False}
        elif t == "rejected":
            state.rejected += 1
            if e.get("jws") is not None:
                check_jws(i, e)
        elif t == "owner_keys":
            prev = intents.get(i - 1)
            authorised = prev is not None and prev.op == Op.OWNER_KEYS and sorted(
                prev.args.get("keys", [])) == sorted(e.get("keys", []))
            if not authorised:
                intent_problems.append(f"entry {i}: owner key change not authorised by the preceding intent")
            else:
                owner_keys = _keyset(e.get("keys", []))
        elif t == "policy":
            prev = intents.get(i - 1)
            if prev is None or prev.op != Op.POLICY_SET or prev.args.get("policy") != e.get("policy"):
                intent_problems.append(f"entry {i}: policy change not authorised by the preceding intent")
            if state.mode != Mode.IN_UPDATE:
                mode_problems.append(f"entry {i}: policy changed while {state.mode}")
            try:
                policy = parse_policy(str(e.get("policy", "")))
            except LedgerError as exc:
                mode_problems.append(f"entry {i}: policy does not parse: {exc}")
        elif t == "provisioned":
            state.host_key = e.get("host_key")
        elif t == "lockdown":
            state.lockdown_indices.append(i)
            if transition is not None and e.get("ok") is True:
                transition["lockdown"] = True
        elif t == "evidence":
            state.evidence_indices.append(i)
            if transition is not None and evidence_nonce.intent_of(e.get("nonce")) == transition["intent"]:
                transition["evidence"] = True
        elif t == "mode":
            new = e.get("mode")
            if e.get("previous") != state.mode:
                mode_problems.append(
                    f"entry {i}: mode entry says previous {e.get('previous')}, log says {state.mode}")
            if state.mode != Mode.PROVISIONING:
                it = _nearest_intent(intents, i)
                if it is None or it.op != Op.MODE or it.args.get("mode") != new:
                    intent_problems.append(f"entry {i}: mode change to {new} without an owner intent")
            if new == Mode.IN_SERVICE:
                state.epoch += 1
                state.last_in_service_index = i
                entry_problems.extend(_earned(i, transition))
            transition = None
            state.mode = str(new)
        elif t == "command":
            state.commands += 1
            if len(open_commands) >= MAX_OPEN_COMMANDS:
                cmd_problems.append(too_many_open(i))
            else:
                open_commands[i] = e
            _check_command(i, e, intents, state, policy, cmd_problems, mode_problems)
            _check_one_use(i, e, intents, used_intents, cmd_problems)
            if transition is not None and e.get("builtin") is True and e.get("action") == "snapshot" \
                    and e.get("intent_index") == transition["intent"]:
                transition["snapshot"] = True
        elif t == "output":
            ci = e.get("command_index")
            if not isinstance(ci, int) or ci not in open_commands:
                cmd_problems.append(f"entry {i}: output for index {ci}, which is not an open command")
            else:
                cmd_problems.extend(streamed.setdefault(ci, StreamedOutput()).add(i, e, streamed_bytes(streamed)))
        elif t in ("result", "interrupted"):
            ci = e.get("command_index")
            if not isinstance(ci, int) or ci not in open_commands:
                cmd_problems.append(f"entry {i}: {t} for index {ci}, which is not an open command")
            else:
                del open_commands[ci]
                pieces = streamed.pop(ci, None)
                if pieces is not None and t == "result":
                    cmd_problems.extend(pieces.matches(i, e))
            if t == "interrupted":
                state.interrupted += 1
        elif t == "deleted":
            state.deleted = True
            state.mode = Mode.DELETED
    for ci in sorted(open_commands):
        cmd_problems.append(f"entry {ci}: command has no result (still running, or lost)")
    return [
        Check("intents", not intent_problems, "; ".join(intent_problems[:5])
              or f"{len(intents)} owner intents, each signed by an owner key in force"),
        Check("commands_closed", not cmd_problems, "; ".join(cmd_problems[:5])
              or f"{state.commands} commands, each authorised and with a result or interrupted entry"),
        Check("mode_discipline", not mode_problems, "; ".join(mode_problems[:5])
              or "nothing ran that the mode and policy in force forbade"),
        Check("in_service_entry", not entry_problems, "; ".join(entry_problems[:5])
              or f"each of the {state.epoch} entries into in-service was earned: a passing lockdown, "
                 "fresh evidence and a snapshot under its own intent"),
    ]


#: Commands open at once (logged, no result yet): an honest controller runs one command
#: at a time per CVM, under its lock, and closes what a restart interrupted. A log that
#: opens more is judged without the extra ones (each is a problem), so that what a
#: verifier holds does not grow with such a log.
MAX_OPEN_COMMANDS = 8
#: Streamed output held for the open commands, all streams together (compared with their
#: result entries). An honest controller caps each stream at 1 MiB and runs one command
#: at a time; pieces beyond this are a problem and are not held.
MAX_STREAMED_BYTES = 64 << 20


def too_many_open(i: int) -> str:
    return f"entry {i}: more than {MAX_OPEN_COMMANDS} commands open at once"


def streamed_bytes(streamed: dict[int, StreamedOutput]) -> int:
    return sum(s.size for s in streamed.values())


def nonce_problems(nonces: NonceWindow, i: int, e: dict[str, Any], it: Intent) -> list[str]:
    """The nonce and logging-time rules of the intent (or refused intent) at entry `i`.
    An owner-key change in a CVM log is a copy from the controller log (made when the CVM
    is next used), judged there for its time; here only for a repeated nonce."""
    if it.op == Op.OWNER_KEYS:
        return nonces.check_copy(i, it.nonce)
    try:
        when = datetime.fromisoformat(str(e.get("time")).replace("Z", "+00:00"))
    except ValueError:
        return [f"entry {i}: the entry has no valid time to judge its intent's iat by"]
    return nonces.check(i, it.nonce, it.iat, when)


def _stdin_problem(e: dict[str, Any], it: Intent) -> str | None:
    """The stdin logged with a command is exactly what the owner signed (its digest in
    the intent), and a command the owner gave no stdin logs none."""
    signed = it.args.get("stdin_sha256")
    if e.get("stdin") is None and e.get("stdin_sha256") is None:
        return None if signed is None else "the owner signed a stdin that the command entry does not log"
    if signed is None:
        return "the command entry logs a stdin that the owner did not sign"
    try:
        data = entries.CommandEntry.from_dict(e).stdin_content()
    except (LedgerError, ValueError) as exc:
        return f"the logged stdin does not decode: {exc}"
    if hashlib.sha256(data).hexdigest() != signed or e.get("stdin_sha256") != signed \
            or e.get("stdin_bytes") != len(data):
        return "the logged stdin differs from the one the owner signed"
    return None


class StreamedOutput:
    """The `output` pieces of one streamed command: contiguous per stream from offset 0,
    and together exactly the stream content its result entry logs."""

    def __init__(self) -> None:
        self.data = {"stdout": bytearray(), "stderr": bytearray()}

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.data.values())

    def add(self, i: int, e: dict[str, Any], held: int = 0) -> list[str]:
        """`held`: the bytes all open commands' pieces hold already (MAX_STREAMED_BYTES)."""
        stream, offset = e.get("stream"), e.get("offset")
        if stream not in self.data:
            return [f"entry {i}: output for an unknown stream {stream!r}"]
        buf = self.data[str(stream)]
        if offset != len(buf):
            return [f"entry {i}: output at offset {offset} of {stream}, but {len(buf)} bytes were logged before"]
        try:
            piece = entries.OutputEntry.from_dict(e).content()
        except (LedgerError, ValueError) as exc:
            return [f"entry {i}: output does not decode: {exc}"]
        if held + len(piece) > MAX_STREAMED_BYTES:
            return [f"entry {i}: the open commands' streamed output exceeds {MAX_STREAMED_BYTES >> 20} MiB"]
        buf += piece
        return []

    def dump(self) -> dict[str, str]:
        return {k: base64.b64encode(bytes(v)).decode() for k, v in self.data.items()}

    @classmethod
    def load(cls, data: dict[str, Any]) -> StreamedOutput:
        """From :meth:`dump` (a verification cache: raises ValueError on anything else)."""
        out = cls()
        if set(data) != set(out.data):
            raise ValueError("malformed streamed output")
        for k in out.data:
            out.data[k] = bytearray(base64.b64decode(str(data[k]), validate=True))
        return out

    def matches(self, i: int, e: dict[str, Any]) -> list[str]:
        try:
            result = entries.ResultEntry.from_dict(e)
        except LedgerError as exc:
            return [f"entry {i}: result does not parse: {exc}"]
        problems = []
        for name in ("stdout", "stderr"):
            logged: entries.StreamOutput = getattr(result, name)
            if bytes(self.data[name]) != logged.content():
                problems.append(f"entry {i}: the streamed {name} differs from the {name} of the result")
        return problems


def _earned(i: int, transition: dict[str, Any] | None) -> list[str]:
    """In-service is earned within its own transition (after the owner's cvm.mode intent,
    before the mode entry): a passing lockdown, evidence whose nonce commits to that
    intent (ledger/evidence_nonce.py: re-logging an old report proves nothing about now)
    and a snapshot. Without them the mode entry describes a state nobody looked at."""
    if transition is None:
        return [f"entry {i}: in-service entered without its own cvm.mode intent before it"]
    missing = [what for what, shown in (("a passing lockdown", transition["lockdown"]),
                                         ("fresh evidence", transition["evidence"]),
                                         ("a snapshot", transition["snapshot"])) if not shown]
    if missing:
        return [f"entry {i}: in-service entered without {', '.join(missing)} after intent {transition['intent']}"]
    return []


def _check_one_use(
    i: int, e: dict[str, Any], intents: dict[int, Intent], used: dict[int, int], problems: list[str],
) -> None:
    """A command runs under the newest intent (the controller appends the intent and its
    commands together, under the CVM's lock), and an owner command or run action under an
    intent of its own: one signed `cvm.run` authorises one execution, never a later replay
    of it. (Builtins and on-enter actions may share the intent that started them.)"""
    ii = e.get("intent_index")
    if not isinstance(ii, int) or ii not in intents:
        return
    newest = max((k for k in intents if k < i), default=None)
    if newest != ii:
        problems.append(f"entry {i}: command runs under intent {ii}, but intent {newest} came after it")
    if e.get("builtin") is True:
        return
    if intents[ii].op in (Op.RUN, Op.ACTION):
        if ii in used:
            problems.append(f"entry {i}: intent {ii} already authorised the command at entry {used[ii]}")
        used.setdefault(ii, i)


def _check_command(
    i: int, e: dict[str, Any], intents: dict[int, Intent], state: LogState, policy: Policy,
    cmd_problems: list[str], mode_problems: list[str],
) -> None:
    action = e.get("action")
    ii = e.get("intent_index")
    it = intents.get(ii) if isinstance(ii, int) and ii < i else None
    if it is None:
        cmd_problems.append(f"entry {i}: command does not point to an owner intent")
        return
    if e.get("builtin") is True:
        _check_builtin(i, e, it, policy, cmd_problems)
        return
    if action is None:
        if it.op != Op.RUN or it.args.get("command") != e.get("command"):
            cmd_problems.append(f"entry {i}: command differs from what the owner's intent asked")
        elif (problem := _stdin_problem(e, it)) is not None:
            cmd_problems.append(f"entry {i}: {problem}")
        if not policy.command_allowed(state.mode, str(e.get("command"))):
            mode_problems.append(f"entry {i}: command ran while {state.mode}, which the policy forbids")
        return
    act = policy.actions.get(str(action))
    if act is None:
        mode_problems.append(f"entry {i}: action {action!r} is not in the policy in force")
        return
    if act.run is not None and act.run != e.get("command"):
        cmd_problems.append(f"entry {i}: action {action!r} ran {e.get('command')!r}, the policy says {act.run!r}")
    if it.op == Op.ACTION:
        if it.args.get("name") != action:
            cmd_problems.append(f"entry {i}: action differs from what the owner's intent asked")
        if not policy.action_allowed(state.mode, str(action)):
            mode_problems.append(f"entry {i}: action {action!r} ran while {state.mode}, which the policy forbids")
    elif it.op == Op.MODE:
        target = str(it.args.get("mode"))
        if action not in policy.on_enter.get(target, ()):
            cmd_problems.append(f"entry {i}: action {action!r} is not an on-enter action of {target}")
    else:
        cmd_problems.append(f"entry {i}: action ran under a {it.op} intent")


def _check_builtin(i: int, e: dict[str, Any], it: Intent, policy: Policy, problems: list[str]) -> None:
    """Builtins run duet's own fixed commands: evidence (`attest`) and `snapshot`, at
    provisioning, on entering in-service, or when the owner runs a builtin action."""
    action = e.get("action")
    if action not in BUILTINS:
        problems.append(f"entry {i}: unknown builtin {action!r}")
        return
    if action == "snapshot" and e.get("command") not in ALL_SNAPSHOT_COMMANDS:
        problems.append(f"entry {i}: snapshot ran a command that is not one of duet's snapshot commands")
    if it.op == Op.ACTION:
        act = policy.actions.get(str(it.args.get("name")))
        if act is None or act.builtin != action:
            problems.append(f"entry {i}: builtin {action} ran under an action intent that does not name it")
    elif it.op == Op.MODE:
        if it.args.get("mode") != Mode.IN_SERVICE:
            problems.append(f"entry {i}: builtin {action} ran while entering {it.args.get('mode')}")
    elif not (it.op == Op.CREATE and action in ("attest", "lockdown")):
        problems.append(f"entry {i}: builtin {action} ran under a {it.op} intent")


def _nearest_intent(intents: dict[int, Intent], i: int) -> Intent | None:
    before = [k for k in intents if k < i]
    return intents[max(before)] if before else None


def _keyset(b64s: Any) -> dict[str, Any]:
    out = {}
    for b in b64s if isinstance(b64s, list) else []:
        try:
            pub = keys.public_from_b64(str(b))
        except LedgerError:
            continue
        out[keys.key_id(pub)] = pub
    return out

