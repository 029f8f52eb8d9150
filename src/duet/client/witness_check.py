"""The user's check that a CVM head is witnessed (`duet verify --witness`, expectations
`witnesses:`; docs/transparency.md, "Witnesses").

A controller that shows two users two different CVM logs, each validly signed, is caught
here without the users comparing notes: the CVM head a user verified must be committed by
a `heads` entry of the controller log, inside a controller-log checkpoint that a quorum of
the user's own witnesses cosigned. Witnesses cosign only checkpoints that extend what they
cosigned before, so there is one controller-log history; and every `heads` entry for this
CVM in it, up to the first that reaches the user's size, must agree with the user's log.
Two views that both pass are therefore one a prefix of the other.

The rule, for a user who verified the CVM log at size N with root R_N:

1. the cosigned checkpoint is the controller's (attested key), carries `quorum` valid
   cosignatures from the listed keys, none older than `max_age`;
2. it is a prefix of the controller log the user verified (a consistency proof to the
   verified head);
3. the covering entry is the *first* `heads` entry for this CVM in that prefix whose size
   M is >= N, and it extends R_N (RFC 9162 consistency proof N -> M, or the same root
   when M = N). Every head of this CVM in the controller log extends the one before it
   (the controller-log replay checks each head's proof: controller_log.py), so the
   earlier heads are prefixes of the covering one, hence of the user's log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from duet.client.api import ReadClient
from duet.client.audit import Check
from duet.client.controller_log import HEADS_KEPT, ControllerLog
from duet.client.errors import ClientError, LimitExceeded
from duet.client.expectations import UserExpectations
from duet.ledger import merkle
from duet.ledger.checkpoint import Checkpoint, open_checkpoint
from duet.ledger.cosignature import CosignatureVerifier, verified_cosignatures
from duet.ledger.errors import LedgerError
from duet.ledger.note import Verifier

CHECK = "witness_cosigned"


@dataclass(frozen=True)
class WitnessPolicy:
    """The witnesses this user trusts, how many must have cosigned, and how old their
    cosignatures may be (None: any age)."""

    keys: tuple[CosignatureVerifier, ...]
    quorum: int
    max_age: timedelta | None = None

    @classmethod
    def parse(cls, vkeys: Sequence[str], quorum: int | None, max_age: timedelta | None = None) -> WitnessPolicy:
        verifiers = []
        for v in vkeys:
            try:
                verifiers.append(CosignatureVerifier.from_vkey(v))
            except (LedgerError, ValueError) as exc:
                raise ClientError("invalid_expectations", f"witness key {v[:60]!r}: {exc}") from None
        names = [w.name for w in verifiers]
        if not verifiers or len(set(names)) != len(names):
            raise ClientError("invalid_expectations", "name at least one witness key, each with its own name")
        q = len(verifiers) if quorum is None else quorum
        if not 1 <= q <= len(verifiers):
            raise ClientError("invalid_expectations",
                              f"witness quorum must be between 1 and {len(verifiers)} (the keys named), not {q}")
        return cls(tuple(verifiers), q, max_age)


def policy_of(expect: UserExpectations | None) -> WitnessPolicy | None:
    """The expectations file's `witnesses:` section as a policy (None when absent)."""
    if expect is None or expect.witnesses is None:
        return None
    w = expect.witnesses
    return WitnessPolicy.parse(w.keys, w.quorum, w.age)


def fetch_witnessed(api: ReadClient, cvm: str, size: int) -> dict[str, Any] | str:
    """The controller's proof for the CVM head of `size`, or why there is none."""
    try:
        return api.witnessed(cvm, size)
    except LimitExceeded:
        raise
    except ClientError as exc:
        return f"the controller serves no witnessed proof: [{exc.code}] {exc.message}"


def fetch_controller_witnessed(api: ReadClient) -> dict[str, Any] | str:
    """The newest witness-cosigned controller-log checkpoint, or why there is none."""
    try:
        return api.controller_witnessed()
    except LimitExceeded:
        raise
    except ClientError as exc:
        return f"the controller serves none: [{exc.code}] {exc.message}"


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    return base64.b64decode(text, validate=True)


def witness_check(
    proof: dict[str, Any] | str, *, cvm: str, controller_id: str, controller_key: Ed25519PublicKey,
    size: int, root: bytes, ctl: ControllerLog, policy: WitnessPolicy, now: datetime,
) -> Check:
    """Judge the proof for the user's verified CVM log of `size` entries."""
    if isinstance(proof, str):
        return Check(CHECK, False, f"no witnessed controller-log checkpoint covers this CVM head: {proof}")
    try:
        return _judge(proof, cvm, controller_id, controller_key, size, root, ctl, policy, now)
    except (LedgerError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        return Check(CHECK, False, f"the witnessed proof does not verify: {exc}")


def _cosigned(proof: dict[str, Any], cid: str, controller_key: Ed25519PublicKey, ctl: ControllerLog,
              policy: WitnessPolicy, now: datetime) -> tuple[Checkpoint, str] | Check:
    """The controller-log checkpoint the proof carries, when it is the controller's, a
    quorum of the user's witnesses cosigned it recently enough, and it is a prefix of the
    controller log verified: (the checkpoint, who signed); else the failing check."""
    note = proof["controller_checkpoint"]
    if not isinstance(note, str):
        raise ValueError("controller_checkpoint is not a note")
    cp = open_checkpoint(note, Verifier(f"duet/{cid}", controller_key), expected_origin=f"duet/{cid}/controller")
    signed = verified_cosignatures(note, policy.keys)
    now_s = int(now.timestamp())
    fresh, stale = {}, {}
    for name, ts in sorted(signed.items()):
        age = now_s - ts
        if policy.max_age is not None and age > policy.max_age.total_seconds():
            stale[name] = age
        else:
            fresh[name] = age
    who = ", ".join(f"{k} ({_age(max(0, a))} ago)" for k, a in fresh.items()) or "no listed witness"
    if stale:
        who += "; too old: " + ", ".join(f"{k} ({_age(a)} ago)" for k, a in stale.items())
    missing = sorted(w.name for w in policy.keys if w.name not in signed)
    if missing:
        who += "; not signed by " + ", ".join(missing)
    if len(fresh) < policy.quorum:
        return Check(CHECK, False, f"the controller-log checkpoint of size {cp.size} has {len(fresh)} valid "
                                   f"cosignature(s), the quorum is {policy.quorum}: signed by {who}")
    # The cosigned checkpoint must be a prefix of the controller log this user verified.
    if cp.size > ctl.size:
        return Check(CHECK, False, f"the cosigned controller-log checkpoint (size {cp.size}) is beyond the "
                                   f"controller log verified ({ctl.size} entries)")
    if not ctl.prefix_root_is(cp.size, base64.b64encode(cp.root_hash).decode()):
        return Check(CHECK, False, f"fork: the cosigned controller-log checkpoint of size {cp.size} is not a "
                                   "prefix of the controller log served")
    return cp, who


def controller_log_witness_check(
    proof: dict[str, Any] | str, *, controller_id: str, controller_key: Ed25519PublicKey, ctl: ControllerLog,
    policy: WitnessPolicy, now: datetime,
) -> Check:
    """`duet verify --controller-log` with witnesses: the controller log verified must
    extend a checkpoint of it that a quorum of the user's witnesses cosigned (one history
    of the controller log, the same for every user)."""
    if isinstance(proof, str):
        return Check(CHECK, False, f"no witness-cosigned controller-log checkpoint: {proof}")
    try:
        got = _cosigned(proof, controller_id, controller_key, ctl, policy, now)
    except (LedgerError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        return Check(CHECK, False, f"the witnessed controller-log checkpoint does not verify: {exc}")
    if isinstance(got, Check):
        return got
    cp, who = got
    behind = "" if cp.size == ctl.size else f" (the newest {ctl.size - cp.size} entries are not cosigned yet)"
    return Check(CHECK, True, f"the controller log verified ({ctl.size} entries) extends its checkpoint of size "
                              f"{cp.size}, cosigned by {who} (quorum {policy.quorum}){behind}")


def _judge(proof: dict[str, Any], cvm: str, cid: str, controller_key: Ed25519PublicKey, n: int, root_n: bytes,
           ctl: ControllerLog, policy: WitnessPolicy, now: datetime) -> Check:
    got = _cosigned(proof, cid, controller_key, ctl, policy, now)
    if isinstance(got, Check):
        return got
    cp, who = got
    dropped = ctl.heads_dropped.get(cvm)
    if dropped is not None and dropped >= n:
        # The first head covering n is older than the heads a replay keeps (HEADS_KEPT):
        # which one it is cannot be told here, so the head is not counted as witnessed.
        return Check(CHECK, False, f"this CVM's size {n} is covered only by a heads entry older than the newest "
                                   f"{HEADS_KEPT} this verifier keeps for it; verify the CVM at its current size")
    heads = [(i, size, root) for i, size, root in ctl.heads.get(cvm, []) if i < cp.size]
    covering = next(((i, size, root) for i, size, root in heads if size >= n), None)
    if covering is None:
        newest = f"; its newest head of this CVM has size {heads[-1][1]}" if heads else ""
        return Check(CHECK, False, f"no heads entry in the cosigned controller log (size {cp.size}) reaches this "
                                   f"CVM's size {n}{newest}: the head verified is not witnessed")
    index, m, root_m = covering
    if proof.get("heads_index") != index:
        return Check(CHECK, False, f"the controller names heads entry {proof.get('heads_index')}, but the first "
                                   f"that covers size {n} is entry {index}")
    if m == n:
        if _b64(root_m) != root_n:
            return Check(CHECK, False, f"fork: heads entry {index} commits size {n} with another root than the "
                                       "log served to you")
    else:
        cons = [_b64(h) for h in proof.get("consistency") or []]
        try:
            merkle.verify_consistency(n, m, cons, root_n, _b64(root_m))
        except LedgerError as exc:
            return Check(CHECK, False, f"fork: the witnessed head (size {m}, heads entry {index}) does not extend "
                                       f"the log served to you (size {n}): {exc}")
    covered = "this head" if m == n else f"a head of size {m} that extends it"
    return Check(CHECK, True, f"size {n} is covered: heads entry {index} commits {covered}, in the controller-log "
                              f"checkpoint of size {cp.size} cosigned by {who} (quorum {policy.quorum})")
