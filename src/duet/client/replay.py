"""The CVM log replayed entry by entry: every check of `duet verify` as a state machine
that keeps only what the rules need, never the log.

`audit.py` and `cvm_checks.py` state the rules over a whole decoded log (`duet log`,
`expect init`, the HTML report and the audit vectors use them). :class:`CvmReplay` runs
the same rules while the entries stream past, so that a full verification's memory does
not grow with the log, and so that its state can be saved after a verification and
resumed on the next one (`verify_cache.py`): a later run then feeds only the new entries.

What it keeps: the genesis entry, the owner keys and policy in force, the newest
intents (a window), the open commands (at most MAX_OPEN_COMMANDS, with their streamed
output, at most MAX_STREAMED_BYTES), recent attest commands, the newest evidence and
lockdown entries, counters, the first few problems of each check, the digests of the
intent nonces whose iat is within LOG_DELAY_S of the newest intent entry time
(nonce_window.py: an older one replayed fails the logging-time rule instead), those of
the owner-key changes copied from the controller log, and the digests of the evidence
nonces of the intents that recent attest commands ran under (an evidence nonce commits
to its intent: ledger/evidence_nonce.py). None of it grows with the log's length.

Where a rule looks back further than the replay keeps, the replay fails, never passes:
a command under an intent that has left the window (such a command was already a
violation: commands run under the newest intent), evidence naming an attest command
that has left the window or logged before the host key was pinned, a builtin logged
before the CVM was provisioned, and a host key that changes after evidence was verified
against it. An honest controller's log never does any of these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duet.attestation import AttestationError, cvm_kinds
from duet.client.audit import (
    MAX_OPEN_COMMANDS,
    Check,
    LogState,
    StreamedOutput,
    _check_command,
    _check_genesis,
    _earned,
    _keyset,
    nonce_problems,
    streamed_bytes,
    too_many_open,
)
from duet.client.controller_log import ControllerLog, link_check, link_problems
from duet.client.cvm_checks import (
    MAX_CLOCK_SKEW,
    _fmt,
    _time,
    binding_problems,
    builtin_context,
    check_command_link,
    cvm_expectations,
    declared_binding,
    declared_kind,
    evidence_nonce_problem,
    evidence_summary,
    judge_latest_lockdown,
    user_trust,
)
from duet.client.expectations import UserExpectations
from duet.client.nonce_window import NonceWindow
from duet.client.owner_check import OwnerResult, _key_ids
from duet.ledger import control_plane, entries, evidence_nonce
from duet.ledger.builtins import builtin_template
from duet.ledger.entries import EvidencePurpose, Mode
from duet.ledger.errors import LedgerError
from duet.ledger.intent import Intent, parse_intent, verify_signature
from duet.ledger.operations import Op
from duet.ledger.policy import Policy, parse_policy
from duet.ledger.regex import compile_linear

#: Bump when a rule changes: a saved state of another version is never resumed.
REPLAY_VERSION = 3
#: Intents kept by index (a command must run under the newest; older ones only explain
#: a violation in more words).
INTENT_WINDOW = 32
#: Attest commands kept for the evidence that must follow them.
ATTEST_WINDOW = 32

__all__ = ["REPLAY_VERSION", "CvmReplay", "Finished", "Problems"]


class Problems:
    """How many problems a check found, and the first few (all a detail shows)."""

    __slots__ = ("count", "items", "keep")

    def __init__(self, keep: int = 5, count: int = 0, items: list[str] | None = None) -> None:
        self.keep = keep
        self.count = count
        self.items = list(items or [])

    def add(self, msg: str) -> None:
        self.count += 1
        if len(self.items) < self.keep:
            self.items.append(msg)

    def extend(self, msgs: list[str]) -> None:
        for m in msgs:
            self.add(m)

    def __bool__(self) -> bool:
        return self.count > 0

    def dump(self) -> list[Any]:
        return [self.count, self.items]

    @classmethod
    def load(cls, data: Any, keep: int = 5) -> Problems:
        count, items = data
        if not isinstance(count, int) or not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("malformed problem list")
        return cls(keep, count, items)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def _dump_set(s: set[bytes]) -> str:
    return base64.b64encode(b"".join(sorted(s))).decode()


def _load_set(text: Any) -> set[bytes]:
    raw = base64.b64decode(str(text), validate=True)
    if len(raw) % 16:
        raise ValueError("malformed digest set")
    return {raw[k:k + 16] for k in range(0, len(raw), 16)}


@dataclass
class Finished:
    checks: list[Check]
    state: LogState
    owner: OwnerResult


@dataclass
class CvmReplay:
    controller_id: str
    controller_key_b64: str
    cvm_id: str
    expect: UserExpectations | None = None
    trust_simulated: bool = False
    snp_arks: tuple[bytes, ...] | None = None
    #: DCAP roots to trust instead of Intel's (private roots, tests), as `snp_arks`.
    tdx_roots: tuple[bytes, ...] | None = None
    #: The clock entries are judged by (set by each run before it feeds entries).
    now: datetime | None = None
    #: The controller log the entries' links are checked against (None: not checked,
    #: and the state is then not worth saving).
    ctl: ControllerLog | None = None

    size: int = 0
    state: LogState = field(default_factory=LogState)
    genesis: dict[str, Any] | None = None
    genesis_check: Check | None = None
    policy_check: Check | None = None
    unlinked: bool = False

    wellformed: Problems = field(default_factory=lambda: Problems(3))
    intent_p: Problems = field(default_factory=Problems)
    cmd_p: Problems = field(default_factory=Problems)
    mode_p: Problems = field(default_factory=Problems)
    entry_p: Problems = field(default_factory=Problems)
    owner_keys_b64: list[Any] = field(default_factory=list)
    policy_text: str = ""
    intents_n: int = 0
    intents_jws: dict[int, str] = field(default_factory=dict)
    evicted_intent: int = -1
    used: dict[int, int] = field(default_factory=dict)
    open_commands: set[int] = field(default_factory=set)
    #: The `output` pieces of each open streamed command (MAX_STREAMED_BYTES in all).
    streamed: dict[int, StreamedOutput] = field(default_factory=dict)
    nonces: NonceWindow = field(default_factory=NonceWindow)
    transition: dict[str, Any] | None = None

    time_p: Problems = field(default_factory=Problems)
    time_prev: str | None = None
    timed: int = 0
    clamped: int = 0

    ev_p: Problems = field(default_factory=lambda: Problems(4))
    #: Evidence nonce digests by the intent their attest command ran under, for the
    #: intents of the attest commands kept (at most MAX_EVIDENCE_PER_INTENT each).
    ev_nonces: dict[int, set[bytes]] = field(default_factory=dict)
    ev_count: int = 0
    ev_first: int | None = None
    ev_latest_leaf: str | None = None
    ev_latest_ok: bool = False
    ev_host_key: str | None = None
    first_mode: int | None = None
    isv_p: Problems = field(default_factory=lambda: Problems(4))
    isv_since: bool = False
    attest: dict[int, list[Any]] = field(default_factory=dict)
    provisioned: dict[str, Any] | None = None

    hist_owner_p: Problems = field(default_factory=Problems)
    hist_builtin_p: Problems = field(default_factory=Problems)
    hist_owner_n: int = 0

    lockdown_last: list[Any] | None = None

    provider: str = ""
    cp_seen: int = 0
    cp_last: list[Any] | None = None
    cp_since: bool = False
    cp_p: Problems = field(default_factory=Problems)

    owner_changes: int = 0
    owner_last: list[str] = field(default_factory=list)
    owner_p: Problems = field(default_factory=Problems)

    link_n: int = 0
    link_p: Problems = field(default_factory=Problems)

    def __post_init__(self) -> None:
        self._keys: dict[str, Any] = {}
        self._policy: Policy | None = None
        self._intents: dict[int, Intent] = {}
        self._latest: cvm_kinds.Verified | None = None
        self._patterns: list[Any] | None = None
        self._tprev: datetime | None = None
        # Once per replay: building it parses and checks every pinned certificate.
        self._trust = user_trust(self.expect, simulated=self.trust_simulated, snp_arks=self.snp_arks,
                                 tdx_roots=self.tdx_roots)
        if self.expect is not None and self.expect.history is not None \
                and self.expect.history.allowed_commands is not None:
            self._patterns = [compile_linear(p) for p in self.expect.history.allowed_commands]

    # ------------------------------------------------------------------ feeding

    def feed(self, leaf: bytes) -> None:
        i = self.size
        self.size += 1
        try:
            e: dict[str, Any] = entries.parse(leaf).to_dict()
        except LedgerError as exc:
            self.wellformed.add(f"entry {i}: {exc}")
            e = {"type": "undecodable"}
        if i == 0:
            self._genesis(e)
        self._times(i, e)
        self._other(i, e)
        if self.genesis_check is not None and self.genesis_check.ok and self.policy_check is None and i > 0:
            self._replay(i, e, leaf)

    def _genesis(self, e: dict[str, Any]) -> None:
        self.genesis = e
        self.provider = str(e.get("provider"))
        self.genesis_check = _check_genesis([e], self.controller_id, self.controller_key_b64, self.cvm_id,
                                            self.state)
        if not self.genesis_check.ok:
            return
        self.owner_keys_b64 = list(e.get("owner_keys", [])) if isinstance(e.get("owner_keys"), list) else []
        self._keys = _keyset(self.owner_keys_b64)
        try:
            self._policy = parse_policy(str(e.get("policy", "")))
            self.policy_text = self._policy.text
        except LedgerError as exc:
            self.policy_check = Check("policy", False, f"the genesis policy does not parse: {exc}")

    def _times(self, i: int, e: dict[str, Any]) -> None:
        if "time" not in e:
            return
        t = _time(e)
        if self.now is not None and t > self.now + MAX_CLOCK_SKEW:
            self.time_p.add(f"entry {i} is dated {e['time']}, after our clock plus {_fmt(MAX_CLOCK_SKEW)}")
        if self.time_prev is not None:
            if self._tprev is None:
                self._tprev = _time({"time": self.time_prev})
            if t < self._tprev:
                self.time_p.add(f"entry {i} is dated {e['time']}, before entry {i - 1}")
        self.time_prev = str(e["time"])
        self._tprev = t
        self.timed += 1
        self.clamped += "host_time" in e

    def _other(self, i: int, e: dict[str, Any]) -> None:
        """The rules that read the whole log whatever genesis says."""
        t = e.get("type")
        if t == "mode":
            if self.first_mode is None:
                self.first_mode = i
            if e.get("mode") == Mode.IN_SERVICE:
                if not self.isv_since:
                    self.isv_p.add(f"entry {i}: entered in-service without fresh evidence")
                if not self.cp_since:
                    self.cp_p.add(f"entry {i}: in-service entered without inspecting the control plane")
            self.isv_since = False
            self.cp_since = False
        elif t == "evidence" and e.get("purpose") == EvidencePurpose.IN_SERVICE:
            self.isv_since = True
        elif t == "control_plane":
            self.cp_seen += 1
            self.cp_since = True
            facts = e.get("facts")
            self.cp_last = [i, facts if isinstance(facts, dict) else {}]
        elif t == "provisioned" and self.provisioned is None:
            self.provisioned = {k: e.get(k) for k in ("instance_id", "user", "launch")}
        elif t == "command":
            self._history(i, e)
            if e.get("builtin") is True and e.get("action") == "attest":
                ii = e.get("intent_index")
                self.attest[i] = [str(e.get("command")), False, ii if _int(ii) else None]
                if len(self.attest) > ATTEST_WINDOW:
                    del self.attest[min(self.attest)]
                    # Evidence under an intent no kept attest command ran under cannot
                    # link (it fails), so its nonces are not needed any more.
                    live = {a[2] for a in self.attest.values()}
                    self.ev_nonces = {k: v for k, v in self.ev_nonces.items() if k in live}
        elif t == "result":
            ci = e.get("command_index")
            if isinstance(ci, int) and ci in self.attest:
                self.attest[ci][1] = True
        if (i == 0 and t == "genesis") or (i > 0 and t == "owner_keys"):
            self._owner_change(i, e.get("owner_keys" if i == 0 else "keys"))
        if self.ctl is None:
            self.unlinked = True
        else:
            self._link(i, e, self.ctl)

    def _history(self, i: int, e: dict[str, Any]) -> None:
        if not e.get("builtin"):
            self.hist_owner_n += 1
        if self._patterns is None:
            return
        if not e.get("builtin"):
            if not any(p.search(str(e.get("command"))) for p in self._patterns):
                self.hist_owner_p.add(f"entry {i}: {e.get('command')!r}")
            return
        if self.provisioned is None:
            # The templates name the provisioned user and tool; an honest controller
            # runs no builtin before the CVM is provisioned.
            self.hist_builtin_p.add(f"entry {i}: builtin {e.get('action')} ran before the CVM was provisioned")
            return
        user, tool = builtin_context(self.provisioned)
        if builtin_template(e, user=user, report_tool=tool) is None:
            self.hist_builtin_p.add(
                f"entry {i}: builtin {e.get('action')} ran {e.get('command')!r}, not one of duet's templates")

    def _owner_change(self, i: int, b64s: Any) -> None:
        ids, bad = _key_ids(b64s)
        self.owner_changes += 1
        self.owner_last = sorted(ids)
        if self.expect is None or self.expect.owner is None:
            return
        allowed = self.expect.owner.key_ids
        outside = [k for k in ids if k not in allowed]
        what = "genesis" if i == 0 else f"entry {i} (owner key change)"
        if outside:
            self.owner_p.add(f"{what} names owner key(s) {', '.join(k[:16] + '…' for k in outside)} "
                             "outside the expected set")
        if bad:
            self.owner_p.add(f"{what} names malformed owner key(s)")
        if not ids:
            self.owner_p.add(f"{what} names no owner key")

    def _link(self, i: int, e: dict[str, Any], ctl: ControllerLog) -> None:
        named, problems = link_problems(i, e, ctl)
        self.link_n += named
        self.link_p.extend(problems)

    # ------------------------------------------------------------------ the replay proper

    def _newest(self) -> int | None:
        return max(self._intents) if self._intents else None

    def _check_jws(self, i: int, e: dict[str, Any]) -> Intent | None:
        try:
            it = parse_intent(str(e.get("jws")))
            verify_signature(it, self._keys)
        except LedgerError as exc:
            self.intent_p.add(f"entry {i}: {exc}")
            return None
        if it.payload["aud"] != self.controller_id:
            self.intent_p.add(f"entry {i}: intent addressed to another controller")
        if it.cvm is not None and it.cvm != self.cvm_id:
            self.intent_p.add(f"entry {i}: intent is for CVM {it.cvm}, logged in {self.cvm_id}")
        self.intent_p.extend(nonce_problems(self.nonces, i, e, it))
        return it

    def _remember_intent(self, i: int, it: Intent, jws: str) -> None:
        self._intents[i] = it
        self.intents_jws[i] = jws
        self.intents_n += 1
        while len(self._intents) > INTENT_WINDOW:
            old = min(self._intents)
            del self._intents[old]
            del self.intents_jws[old]
            self.used.pop(old, None)
            self.evicted_intent = max(self.evicted_intent, old)

    def _replay(self, i: int, e: dict[str, Any], leaf: bytes) -> None:
        state = self.state
        t = e.get("type")
        if state.deleted:
            self.mode_p.add(f"entry {i}: {t} after the CVM was deleted")
        if t == "intent":
            it = self._check_jws(i, e)
            self.transition = None
            if it is not None:
                self._remember_intent(i, it, str(e.get("jws")))
                if i == 1 and it.op != Op.CREATE:
                    self.intent_p.add("entry 1 is not the cvm.create intent")
                if it.op == Op.MODE and it.args.get("mode") == Mode.IN_SERVICE:
                    self.transition = {"intent": i, "lockdown": False, "evidence": False, "snapshot": False}
        elif t == "rejected":
            state.rejected += 1
            if e.get("jws") is not None:
                self._check_jws(i, e)
        elif t == "owner_keys":
            prev = self._intents.get(i - 1)
            authorised = prev is not None and prev.op == Op.OWNER_KEYS and sorted(
                prev.args.get("keys", [])) == sorted(e.get("keys", []))
            if not authorised:
                self.intent_p.add(f"entry {i}: owner key change not authorised by the preceding intent")
            else:
                self.owner_keys_b64 = list(e.get("keys", []))
                self._keys = _keyset(self.owner_keys_b64)
        elif t == "policy":
            prev = self._intents.get(i - 1)
            if prev is None or prev.op != Op.POLICY_SET or prev.args.get("policy") != e.get("policy"):
                self.intent_p.add(f"entry {i}: policy change not authorised by the preceding intent")
            if state.mode != Mode.IN_UPDATE:
                self.mode_p.add(f"entry {i}: policy changed while {state.mode}")
            try:
                self._policy = parse_policy(str(e.get("policy", "")))
                self.policy_text = self._policy.text
            except LedgerError as exc:
                self.mode_p.add(f"entry {i}: policy does not parse: {exc}")
        elif t == "provisioned":
            if self.ev_host_key is not None and e.get("host_key") != self.ev_host_key:
                self.ev_p.add(f"entry {i}: the pinned host key changes after evidence was verified against it")
            state.host_key = e.get("host_key")
        elif t == "lockdown":
            self.lockdown_last = [i, e]
            if self.transition is not None and e.get("ok") is True:
                self.transition["lockdown"] = True
        elif t == "evidence":
            if self.transition is not None and evidence_nonce.intent_of(e.get("nonce")) == self.transition["intent"]:
                self.transition["evidence"] = True
            self._evidence(i, e, leaf)
        elif t == "mode":
            new = e.get("mode")
            if e.get("previous") != state.mode:
                self.mode_p.add(f"entry {i}: mode entry says previous {e.get('previous')}, log says {state.mode}")
            if state.mode != Mode.PROVISIONING:
                newest = self._newest()
                it = self._intents[newest] if newest is not None else None
                if it is None or it.op != Op.MODE or it.args.get("mode") != new:
                    self.intent_p.add(f"entry {i}: mode change to {new} without an owner intent")
            if new == Mode.IN_SERVICE:
                state.epoch += 1
                state.last_in_service_index = i
                self.entry_p.extend(_earned(i, self.transition))
            self.transition = None
            state.mode = str(new)
        elif t == "command":
            state.commands += 1
            if len(self.open_commands) >= MAX_OPEN_COMMANDS:
                self.cmd_p.add(too_many_open(i))
            else:
                self.open_commands.add(i)
            self._command(i, e)
            tr = self.transition
            if tr is not None and e.get("builtin") is True and e.get("action") == "snapshot" \
                    and e.get("intent_index") == tr["intent"]:
                tr["snapshot"] = True
        elif t == "output":
            ci = e.get("command_index")
            if not isinstance(ci, int) or ci not in self.open_commands:
                self.cmd_p.add(f"entry {i}: output for index {ci}, which is not an open command")
            else:
                held = streamed_bytes(self.streamed)
                for p in self.streamed.setdefault(ci, StreamedOutput()).add(i, e, held):
                    self.cmd_p.add(p)
        elif t in ("result", "interrupted"):
            ci = e.get("command_index")
            if not isinstance(ci, int) or ci not in self.open_commands:
                self.cmd_p.add(f"entry {i}: {t} for index {ci}, which is not an open command")
            else:
                self.open_commands.discard(ci)
                pieces = self.streamed.pop(ci, None)
                if pieces is not None and t == "result":
                    for p in pieces.matches(i, e):
                        self.cmd_p.add(p)
            if t == "interrupted":
                state.interrupted += 1
        elif t == "deleted":
            state.deleted = True
            state.mode = Mode.DELETED

    def _command(self, i: int, e: dict[str, Any]) -> None:
        ii = e.get("intent_index")
        newest = self._newest()
        if isinstance(ii, int) and ii not in self._intents and ii <= self.evicted_intent:
            # An intent older than the window (or no intent at all): never the newest.
            self.cmd_p.add(f"entry {i}: command runs under intent {ii}, but intent {newest} came after it")
            return
        cmd_problems: list[str] = []
        mode_problems: list[str] = []
        assert self._policy is not None
        _check_command(i, e, self._intents, self.state, self._policy, cmd_problems, mode_problems)
        if isinstance(ii, int) and ii in self._intents:
            if newest != ii:
                cmd_problems.append(f"entry {i}: command runs under intent {ii}, but intent {newest} came after it")
            if e.get("builtin") is not True and self._intents[ii].op in (Op.RUN, Op.ACTION):
                if ii in self.used:
                    cmd_problems.append(f"entry {i}: intent {ii} already authorised the command at entry "
                                        f"{self.used[ii]}")
                self.used.setdefault(ii, i)
        self.cmd_p.extend(cmd_problems)
        self.mode_p.extend(mode_problems)

    def _evidence(self, i: int, e: dict[str, Any], leaf: bytes) -> None:
        assert self.genesis is not None
        self.ev_count += 1
        if self.ev_first is None:
            self.ev_first = i
        self.ev_latest_leaf = base64.b64encode(leaf).decode()
        self.ev_latest_ok = False
        self._latest = None
        kind = declared_kind(self.genesis)
        if e.get("kind") != kind and e.get("kind") != cvm_kinds.CvmKind.NONE:
            self.ev_p.add(f"entry {i}: evidence kind {e.get('kind')} is not the kind declared at create ({kind})")
            return
        ci = e.get("command_index")
        cmd = self.attest.get(ci) if isinstance(ci, int) and not isinstance(ci, bool) and 0 <= ci < i else None
        if cmd is not None:  # else the link check below fails
            problem = evidence_nonce_problem(e.get("nonce"), cmd[2], self.ev_nonces)
            if problem is not None:
                self.ev_p.add(f"entry {i}: {problem}")
                return
            seen = self.ev_nonces.setdefault(cmd[2], set())
            d = _digest(str(e.get("nonce")))
            if d in seen:
                self.ev_p.add(f"entry {i}: evidence nonce reused (not fresh)")
                return
            seen.add(d)
        host_key = self.state.host_key
        if host_key is None:
            self.ev_p.add(f"entry {i}: evidence logged before the CVM's host key was pinned")
            return
        try:
            latest = self._verify_evidence(e, host_key)

            def attest(ci: int) -> tuple[dict[str, Any] | None, bool]:
                known = self.attest.get(ci)
                if known is None:
                    return None, False
                return {"type": "command", "action": "attest", "builtin": True, "command": known[0]}, bool(known[1])

            check_command_link(e, i, attest)
        except (ValueError, AttestationError) as exc:
            self.ev_p.add(f"entry {i}: {exc}")
            return
        self.ev_host_key = host_key
        self._latest = latest
        self.ev_latest_ok = True
        allow_debug = self.expect is not None and self.expect.cvm is not None and self.expect.cvm.allow_debug
        if getattr(latest.report, "debug", False) is not False and not allow_debug:
            self.ev_p.add(f"entry {i}: the CVM runs with DEBUG enabled (the host can read and change its "
                          "memory); accept that explicitly with cvm.allow_debug: true")

    def _verify_evidence(self, e: dict[str, Any], host_key: str) -> cvm_kinds.Verified:
        assert self.genesis is not None
        instance_id = (self.provisioned or {}).get("instance_id")
        return cvm_kinds.verify_evidence(
            e, host_key=host_key, now=_time(e),
            trust=self._trust, binding=declared_binding(self.genesis), host_data=self.state.host_data,
            instance_id=str(instance_id) if instance_id else None)

    # ------------------------------------------------------------------ results

    def finish(self, now: datetime) -> Finished:
        """The checks as `duet verify` reports them (the state itself is left as it is,
        so that it can be saved and fed further)."""
        checks = [Check("entries_wellformed", not self.wellformed, "; ".join(self.wellformed.items)
                        or f"all {self.size} entries are canonical JSON and match their schema")]
        checks.append(self.genesis_check or Check("genesis", False, "the log does not start with a genesis entry"))
        state = LogState(**{k: getattr(self.state, k) for k in (
            "mode", "epoch", "deleted", "host_key", "host_data", "tee", "commands", "rejected", "interrupted",
            "last_in_service_index")})
        if checks[-1].ok:
            if self.policy_check is not None:
                checks.append(self.policy_check)
            else:
                checks.extend(self._replay_checks())
        checks.extend(self._time_checks())
        checks.extend(self._evidence_checks(state, now))
        checks.extend(self._history_checks())
        checks.extend(self._lockdown_checks())
        checks.extend(self._control_plane_checks())
        owner = OwnerResult(in_force=list(self.owner_last) if self.owner_changes else [])
        if self.expect is not None and self.expect.owner is not None:
            items = list(self.owner_p.items)
            if not self.owner_changes:
                items.append("the log names no owner keys")
            owner.checks.append(Check(
                "owner_keys", not items, "; ".join(items[:5]) or
                f"every owner key the log ever put in force is expected ({self.owner_changes} key set(s); in force: "
                f"{', '.join(k[:16] + '…' for k in owner.in_force)})"))
        return Finished(checks, state, owner)

    def link_checks(self) -> list[Check]:
        check = link_check(self.link_n, self.link_p.items)
        check.ok = not self.link_p
        return [check]

    def _replay_checks(self) -> list[Check]:
        cmd = list(self.cmd_p.items)
        cmd += [f"entry {ci}: command has no result (still running, or lost)" for ci in sorted(self.open_commands)[:5]]
        cmd_bad = bool(self.cmd_p) or bool(self.open_commands)
        return [
            Check("intents", not self.intent_p, "; ".join(self.intent_p.items)
                  or f"{self.intents_n} owner intents, each signed by an owner key in force"),
            Check("commands_closed", not cmd_bad, "; ".join(cmd[:5])
                  or f"{self.state.commands} commands, each authorised and with a result or interrupted entry"),
            Check("mode_discipline", not self.mode_p, "; ".join(self.mode_p.items)
                  or "nothing ran that the mode and policy in force forbade"),
            Check("in_service_entry", not self.entry_p, "; ".join(self.entry_p.items)
                  or f"each of the {self.state.epoch} entries into in-service was earned: a passing lockdown, "
                     "fresh evidence and a snapshot under its own intent"),
        ]

    def _time_checks(self) -> list[Check]:
        if self.time_p:
            return [Check("entry_times", False, "; ".join(self.time_p.items))]
        note = f" ({self.clamped} written while the host clock was behind)" if self.clamped else ""
        return [Check("entry_times", True, f"{self.size} entry times never go back nor run ahead of ours{note}")]

    def _evidence_checks(self, state: LogState, now: datetime) -> list[Check]:
        if state.host_key is None:
            return [Check("evidence", False, "the log has no provisioned entry with a pinned host key")]
        if not self.ev_count or self.genesis is None:
            return [Check("evidence", False, "the log holds no hardware evidence for this CVM")]
        genesis = self.genesis
        kind, binding = declared_kind(genesis), declared_binding(genesis)
        latest = self._latest
        problems = binding_problems(genesis, self.expect) + list(self.ev_p.items)
        bad = bool(problems) or bool(self.ev_p)
        state.evidence_kind = latest.kind if latest is not None else None
        first_mode = self.first_mode if self.first_mode is not None else self.size
        if self.ev_first is not None and self.ev_first > first_mode:
            problems.append("no evidence before the CVM was first made usable")
            bad = True
        problems += self.isv_p.items
        bad = bad or bool(self.isv_p)
        simulated = cvm_kinds.is_simulated(kind) or bool(latest and latest.simulated)
        checks = [Check("evidence", not bad,
                        "; ".join(problems[:4]) or evidence_summary(kind, binding, self.ev_count, latest),
                        simulated=simulated)]
        if self.expect is not None and self.expect.cvm is not None:
            assert self.ev_latest_leaf is not None
            latest_time = _time(entries.decode(base64.b64decode(self.ev_latest_leaf)))
            checks.extend(cvm_expectations(latest_time, latest, state, self.expect, now, simulated))
        return checks

    def _history_checks(self) -> list[Check]:
        if self._patterns is None:
            return []
        bad = self.hist_owner_p.items + self.hist_builtin_p.items
        failed = bool(self.hist_owner_p) or bool(self.hist_builtin_p)
        return [Check("history", not failed, ("commands outside the allowed patterns: " + "; ".join(bad[:5]))
                      if failed else f"all {self.hist_owner_n} owner commands match the allowed patterns; "
                                     "every builtin is duet's")]

    def _lockdown_checks(self) -> list[Check]:
        if self.expect is None or self.expect.lockdown is None:
            return []
        if self.lockdown_last is None:
            return [Check("lockdown", False, "the log holds no lockdown checks")]
        i, entry = self.lockdown_last
        return [judge_latest_lockdown(int(i), entry, self.expect.lockdown)]

    def _control_plane_checks(self) -> list[Check]:
        provider = self.provider if self.size else ""
        if provider not in control_plane.JUDGES:
            return []
        if not self.cp_seen or self.cp_last is None:
            return [Check("control_plane", False, f"the {provider} control plane of this CVM was never inspected")]
        i, facts = self.cp_last
        verdicts = control_plane.judge(facts)
        problems = list(self.cp_p.items) + [f"entry {i}: {name}: {detail}" for name, ok, detail in verdicts if not ok]
        mismatch = control_plane.launch_problem(facts, (self.provisioned or {}).get("launch"))
        if mismatch is not None:
            problems.append(f"entry {i}: {mismatch}")
        return [Check("control_plane", not problems, "; ".join(problems[:5]) or
                      f"the {provider} model of the CVM (entry {i}) passes every check: "
                      + ", ".join(name for name, _, _ in verdicts))]

    # ------------------------------------------------------------------ saving and resuming

    _PROBLEMS = ("wellformed", "intent_p", "cmd_p", "mode_p", "entry_p", "time_p", "ev_p", "isv_p",
                 "hist_owner_p", "hist_builtin_p", "cp_p", "owner_p", "link_p")
    _PLAIN = ("size", "genesis", "owner_keys_b64", "policy_text", "intents_n", "evicted_intent", "transition",
              "time_prev", "timed", "clamped", "ev_count", "ev_first", "ev_latest_leaf", "ev_latest_ok",
              "ev_host_key", "first_mode", "isv_since", "provisioned", "hist_owner_n", "lockdown_last", "provider",
              "cp_seen", "cp_last", "cp_since", "owner_changes", "owner_last", "link_n")

    def dump(self) -> dict[str, Any]:
        """The state as JSON (checks that ran once, such as genesis's, as their result)."""
        if self.unlinked:
            raise ValueError("a replay whose links were not checked is not saved")
        out: dict[str, Any] = {k: getattr(self, k) for k in self._PLAIN}
        out.update({k: getattr(self, k).dump() for k in self._PROBLEMS})
        out["nonces"] = self.nonces.dump()
        out["ev_nonces"] = [[k, _dump_set(v)] for k, v in sorted(self.ev_nonces.items())]
        out["log_state"] = {k: getattr(self.state, k) for k in (
            "mode", "epoch", "deleted", "host_key", "host_data", "tee", "commands", "rejected", "interrupted",
            "last_in_service_index")}
        out["genesis_check"] = None if self.genesis_check is None else self.genesis_check.to_json()
        out["policy_check"] = None if self.policy_check is None else self.policy_check.to_json()
        out["intents_jws"] = [[k, v] for k, v in sorted(self.intents_jws.items())]
        out["used"] = [[k, v] for k, v in sorted(self.used.items())]
        out["open_commands"] = sorted(self.open_commands)
        out["streamed"] = [[k, v.dump()] for k, v in sorted(self.streamed.items())]
        out["attest"] = [[k, v[0], v[1], v[2]] for k, v in sorted(self.attest.items())]
        return out

    def load(self, data: dict[str, Any]) -> None:
        """Resume from :meth:`dump` output. Raises ValueError (or KeyError, TypeError)
        on anything malformed; the caller then starts over from the first entry."""
        for k in self._PLAIN:
            if not _TYPES[k](data[k]):
                raise ValueError(f"malformed {k}")
            setattr(self, k, data[k])
        for k in self._PROBLEMS:
            setattr(self, k, Problems.load(data[k], getattr(self, k).keep))
        self.nonces = NonceWindow.load(data["nonces"])
        self.ev_nonces = {int(k): _load_set(v) for k, v in data["ev_nonces"]}
        self.state = LogState(**data["log_state"])
        self.genesis_check = None if data["genesis_check"] is None else Check(**data["genesis_check"])
        self.policy_check = None if data["policy_check"] is None else Check(**data["policy_check"])
        self.intents_jws = {int(k): str(v) for k, v in data["intents_jws"]}
        self.used = {int(k): int(v) for k, v in data["used"]}
        self.open_commands = {int(k) for k in data["open_commands"]}
        self.streamed = {int(k): StreamedOutput.load(v) for k, v in data["streamed"]}
        self.attest = {int(k): [str(c), bool(d), n if _int(n) else None] for k, c, d, n in data["attest"]}
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError("malformed size")
        self._keys = _keyset(self.owner_keys_b64)
        self._policy = None
        if self.genesis_check is not None and self.genesis_check.ok and self.policy_check is None:
            self._policy = parse_policy(self.policy_text)
        try:
            self._intents = {k: parse_intent(v) for k, v in self.intents_jws.items()}
        except LedgerError as exc:
            raise ValueError(f"a remembered intent does not parse: {exc}") from None
        self._latest = None
        self._tprev = None
        if self.ev_latest_ok:
            if self.ev_latest_leaf is None or self.ev_host_key is None:
                raise ValueError("the newest evidence is missing")
            try:
                leaf = base64.b64decode(self.ev_latest_leaf, validate=True)
                self._latest = self._verify_evidence(entries.parse(leaf).to_dict(), self.ev_host_key)
            except (binascii.Error, LedgerError, AttestationError) as exc:
                raise ValueError(f"the newest evidence no longer verifies: {exc}") from None


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _opt(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _is(*types: type) -> Any:
    return lambda v: isinstance(v, types)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _indexed(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and _int(v[0]) and isinstance(v[1], dict)


#: The type of each plain field of a saved replay (checked before it is used).
_TYPES: dict[str, Any] = {
    "size": _int, "genesis": _opt(_is(dict)), "owner_keys_b64": _is(list), "policy_text": _is(str),
    "intents_n": _int, "evicted_intent": _int, "transition": _opt(_is(dict)), "time_prev": _opt(entries.is_entry_time),
    "timed": _int, "clamped": _int, "ev_count": _int, "ev_first": _opt(_int), "ev_latest_leaf": _opt(_is(str)),
    "ev_latest_ok": _is(bool), "ev_host_key": _opt(_is(str)), "first_mode": _opt(_int), "isv_since": _is(bool),
    "provisioned": _opt(_is(dict)), "hist_owner_n": _int, "lockdown_last": _opt(_indexed), "provider": _is(str),
    "cp_seen": _int, "cp_last": _opt(_indexed), "cp_since": _is(bool), "owner_changes": _int,
    "owner_last": _str_list, "link_n": _int,
}
