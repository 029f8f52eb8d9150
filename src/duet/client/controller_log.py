"""The controller log as the user checks it: which owner keys were in force when, and
whether each CVM log points into it honestly.

The controller log (origin `duet/<controller-id>/controller`) holds the claim and every
owner-key change: an `owner.keys` intent, verbatim, followed by the `owner_keys` entry it
authorised. Its first entry may instead be a bare `owner_keys` entry: the key set the
operator gave at first start (`--owner-key`), or the keys of a data dir that predates the
controller log. Each CVM intent names the controller-log size in force when it was
accepted; the intent's signer must be an owner key of that prefix.

Other settings follow the same pattern (an intent, verbatim, then the entry it
authorised): `witnesses.set` -> `witnesses`, `controller.approve` -> `build_approved`,
`providers.set` -> `providers` (which may also stand alone: a development controller's
`--providers` file, counted apart), `credentials.set` -> `credentials` (digests only, never
the secret). An intent not followed by the entry it authorises is a problem.
The controller writes `handover`, `handover_refused`, `standby_joined`, `promote`,
`recovered` and `state_key_rotated` on its own (docs/continuity.md); a `promote` must name
a standby some `standby_joined` let in. `controller.recovery` -> `recovery_policy` (the
M-of-N recovery policy: holders' keys and share digests, never a share).
`heads` entries commit CVM heads for the
witnesses (docs/transparency.md, "Witnesses"); each CVM head there carries a consistency
proof from that CVM's previous head, so the heads of one CVM form one history, checked
here for every CVM, and a user's witness check needs only its own head's proof.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import rfc8785

from duet.client.audit import Check
from duet.client.expectations import UserExpectations
from duet.client.nonce_window import NonceWindow
from duet.ledger import entries, keys, merkle
from duet.ledger.errors import LedgerError
from duet.ledger.intent import Intent, parse_intent, verify_signature
from duet.ledger.operations import Op


def jws_digest(jws: str) -> str:
    return hashlib.sha256(jws.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ControllerLog:
    """What a CVM log's links are checked against, without the controller log's entries:
    its size, its owner-key changes, and a digest of each entry's signed intent."""

    size: int = 0
    #: (controller-log size once the change was appended, key ids, base64 keys).
    changes: list[tuple[int, list[str], list[str]]] = field(default_factory=list)
    #: Entry index -> SHA-256 (hex) of the JWS of each `owner.keys` intent (what a CVM
    #: log's copy of a key change is compared with).
    intents: dict[int, str] = field(default_factory=dict)
    #: Whether a root is the log's root at a size (a proof against the verified head,
    #: or a recomputation from the leaves).
    prefix_root: Callable[[int, bytes], bool] | None = None
    #: Per CVM: (controller-log index, size, base64 root) of the newest HEADS_KEPT heads
    #: `heads` entries committed, in log order (what witnesses' cosignatures cover:
    #: witness_check.py), and the size of the newest head no longer kept.
    heads: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    heads_dropped: dict[str, int] = field(default_factory=dict)
    #: (controller-log index, witnesses, quorum) of every `witnesses` entry.
    witnesses: list[tuple[int, list[dict[str, Any]], int]] = field(default_factory=list)
    #: Continuity entries (`build_approved`, `handover`, `handover_refused`,
    #: `standby_joined`, `promote`) with
    #: their index, for the build-history check (client/build_history.py).
    continuity: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    #: Index of each `providers` entry, of those no owner intent authorised (a development
    #: controller's --providers file), and of each `credentials` entry.
    providers: list[int] = field(default_factory=list)
    host_seeded: list[int] = field(default_factory=list)
    #: Index of each `providers` entry whose settings pin roots other than the hardware
    #: vendors' (`snp_arks`, `tdx_roots`): the controller then judged those providers'
    #: CVM evidence under them (refused under --tee gramine).
    root_pins: list[int] = field(default_factory=list)
    credentials: list[int] = field(default_factory=list)
    #: (index, threshold, number of holders) of every `recovery_policy` entry (0, 0: off).
    recovery: list[tuple[int, int, int]] = field(default_factory=list)

    def keys_at(self, size: int) -> list[str]:
        """Key ids in force in the prefix of `size` entries."""
        current: list[str] = []
        for at, ids, _ in self.changes:
            if at <= size:
                current = ids
        return current

    def intent_digest_at(self, index: int) -> str | None:
        return self.intents.get(index)

    def prefix_root_is(self, size: int, root_b64: Any) -> bool:
        if self.prefix_root is None or not isinstance(root_b64, str):
            return False
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        return self.prefix_root(size, root)


def _ids(b64s: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for b in b64s:
        pub = keys.public_from_b64(str(b))
        out[keys.key_id(pub)] = pub
    return out


#: Heads kept per CVM: a user's CVM head is covered by one of the newest (its log's size
#: when verified); an older one is not found, and the witness check fails, never passes.
HEADS_KEPT = 64


class ControllerLogReplay:
    """The controller log's rules, entry by entry (it grows for ever too). Its state does
    not grow with the log: the key changes and settings (what owners did), the newest
    heads of each CVM, the digests of the `owner.keys` intents, the nonces of the intents
    whose iat is recent (nonce_window.py), the entry before the current one, the time of
    the last entry (times never go back) and the first few problems."""

    def __init__(self, controller_id: str) -> None:
        self.controller_id = controller_id
        self.log = ControllerLog()
        self.problems: list[str] = []
        self.problem_count = 0
        self.in_force: list[str] = []
        self.nonces = NonceWindow()
        self.prev: dict[str, Any] | None = None
        self.time_prev: str | None = None

    @property
    def size(self) -> int:
        return self.log.size

    def _problem(self, msg: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 5:
            self.problems.append(msg)

    def feed(self, leaf: bytes) -> None:
        i = self.log.size
        self.log.size += 1
        prev, self.prev = self.prev, None
        try:
            e: dict[str, Any] = entries.parse(leaf).to_dict()
        except LedgerError as exc:
            self._problem(f"entry {i}: {exc}")
            self.prev = {"type": "undecodable"}
            return
        t = e.get("type")
        self._time(i, e)
        if prev is not None and prev.get("type") == "intent" and _AUTHORISES.get(str(prev.get("op"))) != t:
            self._problem(f"entry {i - 1}: a {prev.get('op')} intent not followed by the entry it authorises")
        self.prev = {"type": t, "jws": e.get("jws"), "op": e.get("op"), "time": e.get("time")} if t == "intent" \
            else {"type": t}
        if isinstance(e.get("jws"), str) and e.get("op") == Op.OWNER_KEYS:
            self.log.intents[i] = jws_digest(e["jws"])
        if t == "intent":
            return  # judged with the entry it must be followed by
        if t == "heads":
            self._heads(i, e)
            return
        if t == "witnesses":
            if self._authorised(i, e, prev, Op.WITNESSES_SET, ("witnesses", "quorum")):
                self.log.witnesses.append((i, list(e.get("witnesses") or []), int(e.get("quorum") or 0)))
            return
        if t in CONTROLLER_WRITTEN:
            if t == "promote":
                self._promote(i, e)
            if t == "recovered" and not (self.log.recovery and self.log.recovery[-1][2]):
                self._problem(f"entry {i}: a recovery from shares while no recovery policy was in force")
            self.log.continuity.append((i, e))
            return
        if t == "recovery_policy":
            self._recovery_policy(i, e, prev)
            return
        if t in ("providers", "credentials"):
            self._setting(i, e, prev)
            return
        if t == "build_approved":
            if self._authorised(i, e, prev, Op.CONTROLLER_APPROVE,
                                ("mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn")):
                self.log.continuity.append((i, e))
            return
        if t != "owner_keys":
            self._problem(f"entry {i}: a {t} entry has no place in the controller log")
            return
        try:
            new = _ids(list(e.get("keys") or []))
        except (LedgerError, ValueError, TypeError) as exc:
            self._problem(f"entry {i}: malformed owner key: {exc}")
            return
        if prev is None or prev.get("type") != "intent":
            if i != 0:
                self._problem(f"entry {i}: owner key change without an owner.keys intent")
                return
        else:
            try:
                it = parse_intent(str(prev.get("jws")))
                # A claim (no keys in force yet) is signed by one of the keys it names.
                verify_signature(it, _ids(self.in_force) or new)
            except LedgerError as exc:
                self._problem(f"entry {i - 1}: {exc}")
                return
            if it.op != Op.OWNER_KEYS or sorted(it.args.get("keys", [])) != sorted(e.get("keys") or []):
                self._problem(f"entry {i}: the keys differ from what the preceding intent asked")
                return
            if it.payload.get("aud") != self.controller_id:
                self._problem(f"entry {i - 1}: intent addressed to another controller")
                return
            if not self._fresh(i - 1, it, prev):
                return
        self.in_force = sorted(str(k) for k in e.get("keys") or [])
        self.log.changes.append((i + 1, sorted(new), sorted(str(k) for k in e.get("keys") or [])))

    def _authorised(self, i: int, e: dict[str, Any], prev: dict[str, Any] | None, op: Op,
                    fields: Sequence[str]) -> bool:
        """Whether entry `i` follows the intent of `op` that asked for exactly its
        `fields`, signed by an owner key in force, for this controller, never replayed."""
        if prev is None or prev.get("type") != "intent":
            self._problem(f"entry {i}: a {e.get('type')} entry without the {op} intent that authorises it")
            return False
        try:
            it = parse_intent(str(prev.get("jws")))
            verify_signature(it, _ids(self.in_force))
        except LedgerError as exc:
            self._problem(f"entry {i - 1}: the intent before a {e.get('type')} entry: {exc}")
            return False
        if it.op != op or any(it.args.get(f) != e.get(f) for f in fields):
            self._problem(f"entry {i}: the {e.get('type')} entry differs from what the preceding intent asked")
            return False
        if it.payload.get("aud") != self.controller_id:
            self._problem(f"entry {i - 1}: intent addressed to another controller")
            return False
        return self._fresh(i - 1, it, prev)

    def _fresh(self, i: int, it: Intent, entry: dict[str, Any]) -> bool:
        """The intent logged at entry `i` was logged within its time window and its nonce
        was not used before (nonce_window.py)."""
        try:
            when = datetime.fromisoformat(str(entry.get("time")).replace("Z", "+00:00"))
        except ValueError:
            self._problem(f"entry {i}: the entry has no valid time to judge its intent's iat by")
            return False
        problems = self.nonces.check(i, it.nonce, it.iat, when)
        for p in problems:
            self._problem(p)
        return not problems

    def _time(self, i: int, e: dict[str, Any]) -> None:
        """Entry times never go back (what lets the nonce window forget old nonces). A
        decoded entry's time has one fixed width (entries.now_rfc3339): times compare as
        strings, nothing to parse."""
        t = str(e["time"])
        if self.time_prev is not None and t < self.time_prev:
            self._problem(f"entry {i} is dated {t}, before entry {i - 1}")
        self.time_prev = t

    def _promote(self, i: int, e: dict[str, Any]) -> None:
        """A standby may act only with the K it was given: its `promote` must name the
        build and handshake key of a `standby_joined` the primary logged before (the
        primary logs it before K leaves, and only for an approved build)."""
        joined = any(c.get("type") == "standby_joined" and c.get("to_key_sha256") == e.get("key_sha256")
                     and c.get("to_mrenclave") == e.get("mrenclave") for _, c in self.log.continuity)
        if not joined:
            self._problem(f"entry {i}: a promote by build {str(e.get('mrenclave'))[:16]}… that never received the "
                          "state key as a standby (no standby_joined names its build and key)")

    def _recovery_policy(self, i: int, e: dict[str, Any], prev: dict[str, Any] | None) -> None:
        """`recovery_policy`: authorised by the `controller.recovery` intent just before it,
        with one share digest per holder and a commitment to K exactly when it is on."""
        holders = list(e.get("holders") or [])
        if len(list(e.get("shares_sha256") or [])) != len(holders) or bool(holders) != bool(e.get("state_key_sha256")):
            self._problem(f"entry {i}: a recovery_policy entry whose shares do not match its holders")
            return
        if self._authorised(i, e, prev, Op.CONTROLLER_RECOVERY, ("threshold", "holders")):
            self.log.recovery.append((i, int(e.get("threshold") or 0), len(holders)))

    def _setting(self, i: int, e: dict[str, Any], prev: dict[str, Any] | None) -> None:
        """A `providers` or `credentials` entry: authorised by the intent just before it (a
        `providers` entry may stand alone: a development controller's --providers file)."""
        t = e["type"]
        if t == "providers" and hashlib.sha256(rfc8785.dumps(e.get("providers"))).hexdigest() \
                != e.get("providers_sha256"):
            self._problem(f"entry {i}: providers_sha256 is not the digest of the settings")
            return
        if t == "providers" and (prev is None or prev.get("type") != "intent"):
            self.log.providers.append(i)
            self.log.host_seeded.append(i)
            self._root_pins(i, e)
            return
        if t == "providers":
            if self._authorised(i, e, prev, Op.PROVIDERS_SET, ("providers", "control_plane_recheck_s")):
                self.log.providers.append(i)
                self._root_pins(i, e)
        elif self._authorised(i, e, prev, Op.CREDENTIALS_SET, ("provider", "ciphertext_sha256", "recipient_key_id")):
            self.log.credentials.append(i)

    def _root_pins(self, i: int, e: dict[str, Any]) -> None:
        settings = e.get("providers")
        if isinstance(settings, dict) and any(
                isinstance(v, dict) and ("snp_arks" in v or "tdx_roots" in v) for v in settings.values()):
            self.log.root_pins.append(i)

    def _heads(self, i: int, e: dict[str, Any]) -> None:
        """Each CVM head must extend the previous head of the same CVM (its consistency
        proof): the controller log then holds one history per CVM, and a second view of a
        CVM log cannot be committed beside the first."""
        for h in e.get("heads") or []:
            cvm, size, root = str(h["cvm"]), int(h["size"]), str(h["root"])
            seen = self.log.heads.setdefault(cvm, [])
            if seen:
                _, old_size, old_root = seen[-1]
                try:
                    merkle.verify_consistency(old_size, size, [base64.b64decode(p, validate=True)
                                                               for p in h.get("consistency") or []],
                                              base64.b64decode(old_root, validate=True),
                                              base64.b64decode(root, validate=True))
                except (LedgerError, ValueError, binascii.Error) as exc:
                    self._problem(f"entry {i}: the head of CVM {cvm} (size {size}) does not extend its previous "
                                  f"head (size {old_size}): {exc}")
                    continue
            seen.append((i, size, root))
            if len(seen) > HEADS_KEPT:
                self.log.heads_dropped[cvm] = seen.pop(0)[1]

    def checks(self, expect: UserExpectations | None) -> list[Check]:
        ctl = self.log
        problems = list(self.problems)
        if self.prev is not None and self.prev.get("type") == "intent":
            problems.append(f"entry {ctl.size - 1}: a {self.prev.get('op')} intent not followed by the entry it "
                            "authorises")
        seeded = (f"; {len(ctl.host_seeded)} set by the host's --providers (outside an enclave, development)"
                  if ctl.host_seeded else "")
        if ctl.root_pins:
            seeded += (f"; SIMULATED: provider settings at entr{'y' if len(ctl.root_pins) == 1 else 'ies'} "
                       f"{', '.join(map(str, ctl.root_pins[:5]))} pin SEV-SNP / DCAP roots other than AMD's and "
                       "Intel's (snp_arks / tdx_roots), under which the controller judged those providers' CVMs")
        checks = [Check("controller_log_entries", not problems, "; ".join(problems[:5])
                        or f"{len(ctl.changes)} owner key set(s), {len(ctl.providers)} provider setting(s) and "
                           f"{len(ctl.credentials)} credentials change(s), each authorised by an owner key in force"
                           + seeded)]
        if expect is not None and expect.owner is not None:
            allowed = expect.owner.key_ids
            outside = sorted({k for _, ids, _ in ctl.changes for k in ids if k not in allowed})
            checks.append(Check(
                "controller_log_owner_keys", not outside and bool(ctl.changes),
                f"the controller log puts owner key(s) {', '.join(k[:16] + '…' for k in outside)} outside the "
                "expected set in force" if outside else ("the controller log names no owner keys" if not ctl.changes
                                                         else "every owner key the controller log put in force "
                                                              "is expected")))
        return checks

    def dump(self) -> dict[str, Any]:
        return {"size": self.log.size, "changes": [list(c) for c in self.log.changes],
                "intents": [[k, v] for k, v in sorted(self.log.intents.items())], "problems": self.problems,
                "problem_count": self.problem_count, "in_force": self.in_force, "nonces": self.nonces.dump(),
                "prev": self.prev, "time_prev": self.time_prev,
                "heads": {k: [list(h) for h in v] for k, v in sorted(self.log.heads.items())},
                "heads_dropped": self.log.heads_dropped,
                "witnesses": [list(w) for w in self.log.witnesses],
                "continuity": [[i, e] for i, e in self.log.continuity], "providers": self.log.providers,
                "host_seeded": self.log.host_seeded, "root_pins": self.log.root_pins,
                "credentials": self.log.credentials,
                "recovery": [list(r) for r in self.log.recovery]}

    def load(self, data: dict[str, Any]) -> None:
        """Resume from :meth:`dump`; raises ValueError, KeyError or TypeError on anything
        malformed (the caller then starts over)."""
        self.log = ControllerLog(
            size=int(data["size"]),
            changes=[(int(at), [str(k) for k in ids], [str(k) for k in b64]) for at, ids, b64 in data["changes"]],
            intents={int(k): str(v) for k, v in data["intents"]},
            heads={str(c): [(int(i), int(n), str(r)) for i, n, r in v] for c, v in data["heads"].items()},
            heads_dropped={str(c): int(n) for c, n in data["heads_dropped"].items()},
            witnesses=[(int(i), [dict(w) for w in ws], int(q)) for i, ws, q in data["witnesses"]],
            continuity=[(int(i), dict(e)) for i, e in data["continuity"]],
            providers=[int(i) for i in data["providers"]], host_seeded=[int(i) for i in data["host_seeded"]],
            root_pins=[int(i) for i in data["root_pins"]],
            credentials=[int(i) for i in data["credentials"]],
            recovery=[(int(i), int(m), int(n)) for i, m, n in data["recovery"]])
        self.problems = [str(p) for p in data["problems"]][:5]
        self.problem_count = int(data["problem_count"])
        self.in_force = [str(k) for k in data["in_force"]]
        self.nonces = NonceWindow.load(data["nonces"])
        time_prev = data["time_prev"]
        if time_prev is not None and not entries.is_entry_time(time_prev):  # as _time compares it
            raise ValueError("malformed previous entry time")
        self.time_prev = time_prev
        prev = data["prev"]
        if prev is not None and not isinstance(prev, dict):
            raise ValueError("malformed previous entry")
        self.prev = prev


def controller_log_checks(leaves: Sequence[bytes], *, controller_id: str,
                          expect: UserExpectations | None) -> tuple[list[Check], ControllerLog]:
    replay = ControllerLogReplay(controller_id)
    for leaf in leaves:
        replay.feed(leaf)
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    replay.log.prefix_root = lambda size, root: 0 <= size <= len(hashes) and merkle.root(hashes[:size]) == root
    return replay.checks(expect), replay.log


def link_problems(i: int, e: dict[str, Any], ctl: ControllerLog) -> tuple[bool, list[str]]:
    """(whether entry `i` names a controller-log size, what is wrong with that link)."""
    at = e.get("controller_log_size")
    if not isinstance(at, int):
        return False, []
    if at > ctl.size:
        return True, [f"entry {i}: names controller-log size {at}, the log has {ctl.size}"]
    problems = []
    if e.get("type") == "genesis":
        root = e.get("controller_log_root")
        if root is None or not ctl.prefix_root_is(at, root):
            problems.append(f"entry {i}: the controller-log head it names is not the log's at size {at}")
        try:
            ids = sorted(_ids(list(e.get("owner_keys") or [])))
        except (LedgerError, ValueError, TypeError):
            ids = []
        if ids != ctl.keys_at(at):
            problems.append(f"entry {i}: genesis owner keys differ from the controller log's at size {at}")
    elif e.get("type") == "intent":
        jws = e.get("jws")
        if e.get("op") == Op.OWNER_KEYS:
            # A copy of a controller-log change: the same intent, just before `at`.
            if at < 2 or not isinstance(jws, str) or ctl.intent_digest_at(at - 2) != jws_digest(jws):
                problems.append(f"entry {i}: owner key change not found in the controller log at size {at}")
        elif _signer(jws) not in ctl.keys_at(at):
            problems.append(f"entry {i}: signed by a key not in force in the controller log at size {at}")
    return True, problems


#: Continuity entries the controller writes on its own (no intent before them).
CONTROLLER_WRITTEN = ("handover", "handover_refused", "standby_joined", "promote", "recovered", "state_key_rotated")

#: The entry each controller-log intent must be followed by.
_AUTHORISES: dict[str, str] = {Op.OWNER_KEYS.value: "owner_keys", Op.WITNESSES_SET.value: "witnesses",
                               Op.CONTROLLER_APPROVE.value: "build_approved", Op.PROVIDERS_SET.value: "providers",
                               Op.CREDENTIALS_SET.value: "credentials",
                               Op.CONTROLLER_RECOVERY.value: "recovery_policy"}


def cvm_link_checks(decoded: Sequence[dict[str, Any]], ctl: ControllerLog) -> list[Check]:
    """Each CVM intent's signer is an owner key in force at the controller-log size it
    names; genesis names a real controller-log head and the keys of that head."""
    problems: list[str] = []
    linked = 0
    for i, e in enumerate(decoded):
        named, found = link_problems(i, e, ctl)
        linked += named
        problems += found
    return [link_check(linked, problems)]


def link_check(linked: int, problems: list[str]) -> Check:
    return Check("controller_log_link", not problems, "; ".join(problems[:5])
                 or f"{linked} entries name a controller-log size; each signer was an owner key in force there")


def _signer(jws: Any) -> str | None:
    try:
        return parse_intent(str(jws)).kid
    except LedgerError:
        return None
