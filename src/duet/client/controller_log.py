"""The controller log as the user checks it: which owner keys were in force when, and
whether each CVM log points into it honestly.

The controller log (origin `duet/<controller-id>/controller`) holds the claim and every
owner-key change: an `owner.keys` intent, verbatim, followed by the `owner_keys` entry it
authorised. Its first entry may instead be a bare `owner_keys` entry: the key set the
operator gave at first start (`--owner-key`), or the keys of a data dir that predates the
controller log. Each CVM intent names the controller-log size in force when it was
accepted; the intent's signer must be an owner key of that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from duet.client.audit import Check
from duet.client.expectations import UserExpectations
from duet.ledger import entries, keys, merkle
from duet.ledger.errors import LedgerError
from duet.ledger.intent import parse_intent, verify_signature
from duet.ledger.operations import Op


@dataclass
class ControllerLog:
    decoded: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    #: (controller-log size once the change was appended, key ids, base64 keys).
    changes: list[tuple[int, list[str], list[str]]] = field(default_factory=list)
    #: Continuity entries (`build_approved`, `handover`, `handover_refused`) with
    #: their index, for the build-history check (client/build_history.py).
    continuity: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def keys_at(self, size: int) -> list[str]:
        """Key ids in force in the prefix of `size` entries."""
        current: list[str] = []
        for at, ids, _ in self.changes:
            if at <= size:
                current = ids
        return current


def _ids(b64s: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for b in b64s:
        pub = keys.public_from_b64(str(b))
        out[keys.key_id(pub)] = pub
    return out


def controller_log_checks(leaves: Sequence[bytes], *, controller_id: str,
                          expect: UserExpectations | None) -> tuple[list[Check], ControllerLog]:
    ctl = ControllerLog(hashes=[merkle.leaf_hash(leaf) for leaf in leaves])
    problems: list[str] = []
    in_force: dict[str, Any] = {}
    nonces: set[str] = set()
    for i, leaf in enumerate(leaves):
        try:
            e: dict[str, Any] = entries.parse(leaf).to_dict()
        except LedgerError as exc:
            problems.append(f"entry {i}: {exc}")
            ctl.decoded.append({"type": "undecodable"})
            continue
        ctl.decoded.append(e)
        t = e.get("type")
        if t == "intent":
            continue  # judged with the entry it must be followed by
        if t in CONTROLLER_WRITTEN:
            ctl.continuity.append((i, e))
            continue
        if t == "build_approved":
            problem = _approval_problem(e, ctl.decoded[i - 1] if i > 0 else None, in_force, controller_id, nonces)
            if problem:
                problems.append(f"entry {i}: {problem}")
            else:
                ctl.continuity.append((i, e))
            continue
        if t != "owner_keys":
            problems.append(f"entry {i}: a {t} entry has no place in the controller log")
            continue
        try:
            new = _ids(list(e.get("keys") or []))
        except (LedgerError, ValueError, TypeError) as exc:
            problems.append(f"entry {i}: malformed owner key: {exc}")
            continue
        prev = ctl.decoded[i - 1] if i > 0 else None
        if prev is None or prev.get("type") != "intent":
            if i != 0:
                problems.append(f"entry {i}: owner key change without an owner.keys intent")
                continue
        else:
            try:
                it = parse_intent(str(prev.get("jws")))
                # A claim (no keys in force yet) is signed by one of the keys it names.
                verify_signature(it, in_force or new)
            except LedgerError as exc:
                problems.append(f"entry {i - 1}: {exc}")
                continue
            if it.op != Op.OWNER_KEYS or sorted(it.args.get("keys", [])) != sorted(e.get("keys") or []):
                problems.append(f"entry {i}: the keys differ from what the preceding intent asked")
                continue
            if it.payload.get("aud") != controller_id:
                problems.append(f"entry {i - 1}: intent addressed to another controller")
                continue
            if it.nonce in nonces:
                problems.append(f"entry {i - 1}: intent nonce reused (replay)")
                continue
            nonces.add(it.nonce)
        in_force = new
        ctl.changes.append((i + 1, sorted(new), sorted(str(k) for k in e.get("keys") or [])))
    checks = [Check("controller_log_entries", not problems, "; ".join(problems[:5])
                    or f"{len(ctl.changes)} owner key set(s), each authorised by an owner key in force")]
    if expect is not None and expect.owner is not None:
        allowed = expect.owner.key_ids
        outside = sorted({k for _, ids, _ in ctl.changes for k in ids if k not in allowed})
        checks.append(Check(
            "controller_log_owner_keys", not outside and bool(ctl.changes),
            f"the controller log puts owner key(s) {', '.join(k[:16] + '…' for k in outside)} outside the "
            "expected set in force" if outside else ("the controller log names no owner keys" if not ctl.changes
                                                     else "every owner key the controller log put in force "
                                                          "is expected")))
    return checks, ctl


#: Continuity entries the controller writes on its own (no intent before them).
CONTROLLER_WRITTEN = ("handover", "handover_refused")


def _approval_problem(e: dict[str, Any], prev: dict[str, Any] | None, in_force: dict[str, Any],
                      controller_id: str, nonces: set[str]) -> str | None:
    """A `build_approved` entry must follow the `controller.approve` intent that asked for
    exactly it, signed by an owner key in force."""
    if prev is None or prev.get("type") != "intent" or prev.get("op") != Op.CONTROLLER_APPROVE:
        return "build approval without a controller.approve intent"
    try:
        it = parse_intent(str(prev.get("jws")))
        verify_signature(it, in_force)
    except LedgerError as exc:
        return f"the approval's intent: {exc}"
    if it.payload.get("aud") != controller_id:
        return "approval intent addressed to another controller"
    asked = {k: v for k, v in it.args.items() if v is not None}
    got = {k: e.get(k) for k in ("mrenclave", "mrsigner", "isv_prod_id", "min_isv_svn") if e.get(k) is not None}
    if asked != got:
        return "the approved build differs from what the intent asked"
    if it.nonce in nonces:
        return "approval intent nonce reused (replay)"
    nonces.add(it.nonce)
    return None


def cvm_link_checks(decoded: Sequence[dict[str, Any]], ctl: ControllerLog) -> list[Check]:
    """Each CVM intent's signer is an owner key in force at the controller-log size it
    names; genesis names a real controller-log head and the keys of that head."""
    problems: list[str] = []
    size = len(ctl.hashes)
    linked = 0
    for i, e in enumerate(decoded):
        at = e.get("controller_log_size")
        if not isinstance(at, int):
            continue
        linked += 1
        if at > size:
            problems.append(f"entry {i}: names controller-log size {at}, the log has {size}")
            continue
        if e.get("type") == "genesis":
            root = e.get("controller_log_root")
            if root is None or root != _b64(merkle.root(ctl.hashes[:at])):
                problems.append(f"entry {i}: the controller-log head it names is not the log's at size {at}")
            try:
                ids = sorted(_ids(list(e.get("owner_keys") or [])))
            except (LedgerError, ValueError, TypeError):
                ids = []
            if ids != ctl.keys_at(at):
                problems.append(f"entry {i}: genesis owner keys differ from the controller log's at size {at}")
        elif e.get("type") == "intent":
            if e.get("op") == Op.OWNER_KEYS:
                # A copy of a controller-log change: the same intent, just before `at`.
                if at < 2 or ctl.decoded[at - 2].get("jws") != e.get("jws"):
                    problems.append(f"entry {i}: owner key change not found in the controller log at size {at}")
            elif _signer(e.get("jws")) not in ctl.keys_at(at):
                problems.append(f"entry {i}: signed by a key not in force in the controller log at size {at}")
    return [Check("controller_log_link", not problems, "; ".join(problems[:5])
                  or f"{linked} entries name a controller-log size; each signer was an owner key in force there")]


def _signer(jws: Any) -> str | None:
    try:
        return parse_intent(str(jws)).kid
    except LedgerError:
        return None


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()
