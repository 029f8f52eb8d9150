"""Recovery of the state key K from M-of-N shares, and the rotation of K itself.

docs/continuity.md ("Recovery from shares") describes the design; in short:

* `controller.recovery` (owner op) sets the holders' X25519 keys and the threshold M. The
  controller splits K (controller/shamir.py), encrypts share i to holder i
  (ledger/recovery.py, HPKE), keeps the encrypted shares in its state and serves them to
  the owner only (`GET /v1/controller/recovery/shares`, an owner signature). The
  controller log gets the intent and a `recovery_policy` entry: the policy, the digest of
  each encrypted share and a commitment to K. Never a share.
* When the local seal does not open (another CPUSVN after a microcode update, a restored
  data dir on another host), `duet controller serve --recover` (under Gramine: on its own
  when the controller log has a recovery policy in force; argv is fixed) starts a
  *recovery session* instead of failing: a fresh X25519 key bound by a quote of this
  enclave, served with the controller's logged approvals. Each holder's CLI checks that
  quote against the owner-signed approvals, opens its share and re-encrypts it to that
  key (client/recovery.py). With M shares the enclave rebuilds K, checks it against the
  logged commitment and that it opens the controller's identity key, seals it here, and
  only then starts as usual; nothing is written before that check passes.
* It then logs `recovered` (the build, its key, the holders whose shares were used) and,
  because K was outside any enclave in pieces and the old TCB may have been exploited,
  replaces K (`state_key_rotated`, with both CPUSVNs when the seal shows a TCB change):
  every secret re-encrypted under a new K, a new seal, new shares for the same policy. Every
  CVM's SSH client key is then rotated before any intent is accepted (continuity.rotate_all,
  `key_rotated` in each CVM log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from duet.controller import errors, shamir
from duet.controller.continuity import ROTATION_META  # the CVM keys are rotated at start
from duet.controller.statekey import (
    CONTROLLER_KEY_LABEL,
    CONTROLLER_KEY_META,
    SEALED_META,
    StateKey,
    StateKeyError,
)
from duet.ledger import entries, keys
from duet.ledger import recovery as rc
from duet.ledger.backend import LogStore
from duet.ledger.intent import Intent
from duet.ledger.operations import Op
from duet.tee.base import TeeBackend
from duet.tee.seal import SealUnreadable, header_of

if TYPE_CHECKING:
    from duet.controller.service import Controller

log = logging.getLogger("duet.controller")

CONTROLLER_LOG = "controller"
#: State-file meta: the encrypted shares of the K in force (JSON), the controller's public
#: identity (plaintext: a recovering enclave names the controller before it holds K), a
#: finished recovery not yet logged, and a K rotation not yet logged.
SHARES_META = "recovery_shares"
IDENTITY_META = "recovery_identity"
PENDING_META = "recovery_pending"
ROTATION_PENDING_META = "state_key_rotation_pending"
MAX_SHARE_REQUEST = 16 * 1024


class RecoveryOff(errors.DuetError):
    """No recovery policy is in force (recovery is off unless the owner turns it on)."""

    code = "recovery_off"


class RecoveryFailed(errors.DuetError):
    """The shares received do not rebuild this controller's K: nothing was changed."""

    code = "recovery_failed"


class RecoveryImpossible(errors.ConfigError):
    """`--recover`, but this data dir cannot be recovered from shares (why is said)."""

    code = "recovery_impossible"


# ------------------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Policy:
    """The recovery policy in force and the generation of K its shares are of."""

    index: int
    threshold: int
    holders: tuple[str, ...]
    state_key_sha256: str
    shares_sha256: tuple[str, ...]


def _controller_log(ledger: LogStore) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every controller-log entry with its index, read in pages (the log of a long-lived
    controller holds a `heads` entry every few seconds)."""
    size = ledger.tree_head(CONTROLLER_LOG).size if ledger.has_log(CONTROLLER_LOG) else 0
    for pos in range(0, size, 512):
        for i, leaf in enumerate(ledger.leaves(CONTROLLER_LOG, pos, min(size, pos + 512)), start=pos):
            yield i, entries.decode(leaf)


def policy_in_force(ledger: LogStore) -> Policy | None:
    """From the controller log: the last `recovery_policy` (None if off), brought up to
    date by each later `state_key_rotated` (new K, new shares for the same holders)."""
    policy: Policy | None = None
    for i, e in _controller_log(ledger):
        if e["type"] == "recovery_policy":
            holders = tuple(str(h) for h in e["holders"])
            policy = Policy(i, int(e["threshold"]), holders, str(e["state_key_sha256"]),
                            tuple(str(s) for s in e["shares_sha256"])) if holders else None
        elif e["type"] == "state_key_rotated" and policy is not None:
            policy = Policy(policy.index, policy.threshold, policy.holders, str(e["state_key_sha256"]),
                            tuple(str(s) for s in e["shares_sha256"]))
    return policy


def approval_intents(ledger: LogStore) -> list[str]:
    """The JWS of every `controller.approve` intent the controller log accepted: what a
    holder checks a recovering enclave's build against (signed by the owner, so the host
    that serves them cannot make one up)."""
    out: list[str] = []
    prev: dict[str, Any] | None = None
    for _, e in _controller_log(ledger):
        if e["type"] == "build_approved" and prev is not None and prev["type"] == "intent" \
                and prev["op"] == Op.CONTROLLER_APPROVE:
            out.append(str(prev["jws"]))
        prev = e
    return out


def make_shares(k: bytes, threshold: int, holders: Sequence[str], controller_id: str) -> list[dict[str, Any]]:
    commitment = rc.state_key_commitment(k)
    out = []
    for x, y in shamir.split(k, threshold, len(holders)):
        holder = holders[x - 1]
        sealed = rc.seal(rc.public_from_b64(holder), rc.encode_share(x, y),
                         rc.holder_info(controller_id, x, commitment))
        out.append({"index": x, "holder_key": holder, "sealed": base64.b64encode(sealed).decode(),
                    "sha256": hashlib.sha256(sealed).hexdigest()})
    return out


def _store_shares(threshold: int, commitment: str, shares: list[dict[str, Any]]) -> bytes:
    return json.dumps({"threshold": threshold, "state_key_sha256": commitment, "shares": shares}).encode()


def _identity(ctl: Controller) -> bytes:
    return json.dumps({"controller_id": ctl.controller_id,
                       "controller_key": keys.public_b64(ctl.public_key)}).encode()


def _require_embedded(ctl: Controller) -> None:
    from duet.controller.replicated import ReplicatedState

    if isinstance(ctl.state, ReplicatedState):
        raise errors.InvalidRequest("recovery shares are built for the embedded store only so far; with "
                                    "--store etcd:// a standby holds K (docs/continuity.md)")


async def set_recovery(ctl: Controller, intent: Intent) -> dict[str, Any]:
    """`controller.recovery`: split K to the holders (or turn recovery off), keep the
    encrypted shares, log the policy and the digests. The shares are returned to the owner
    here and by `GET /v1/controller/recovery/shares`, never logged."""
    _require_embedded(ctl)
    threshold = int(intent.args["threshold"])
    holders = [str(h) for h in intent.args["holders"]]
    old = ctl.state.cipher
    assert old is not None
    # Shares once handed out rebuild K for ever: replacing or ending a policy replaces K
    # (and, below, every CVM key, which an old copy of the state file holds under the old
    # K), so the former holders' shares open nothing that is still in use.
    replaced = policy_in_force(ctl.ledger) is not None
    k = StateKey.generate() if replaced else old
    commitment = rc.state_key_commitment(k.raw()) if holders else ""
    shares = make_shares(k.raw(), threshold, holders, ctl.controller_id) if holders else []
    items: list[entries.Entry] = [entries.RecoveryPolicyEntry(
        threshold=threshold, holders=tuple(holders), shares_sha256=tuple(s["sha256"] for s in shares),
        state_key_sha256=commitment)]
    if replaced:
        items.append(entries.StateKeyRotatedEntry(
            reason="recovery_policy_changed", from_cpusvn=None, to_cpusvn=None,
            previous_state_key_sha256=rc.state_key_commitment(old.raw()),
            state_key_sha256=rc.state_key_commitment(k.raw()), shares_sha256=tuple(s["sha256"] for s in shares)))
    ctl._still_authorised(intent)
    ctl._logging(intent)
    # Kept before the log says so (no await in between). A crash in between leaves shares
    # no log entry names, which are never served (the digests must match the policy in
    # force), and, after a replacement, a K the log's commitment does not name: recovery
    # is then impossible until the owner sends a policy again. It fails closed.
    meta = {SHARES_META: _store_shares(threshold, commitment, shares), IDENTITY_META: _identity(ctl)}
    if replaced:
        meta[SEALED_META] = ctl.tee.seal(k.raw())
        meta[ROTATION_META] = b"recovery_policy_changed"
        ctl.state.rekey(k, meta)
    else:
        for name, value in meta.items():
            ctl.state.set_meta(name, value)
    size = ctl.ledger.tree_head(CONTROLLER_LOG).size
    first = ctl._append_controller([
        entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size), *items])
    log.warning("recovery policy set: %s (controller log entry %d)%s",
                f"{threshold} of {len(holders)} holders" if holders else "off", first + 1,
                "; the state key was replaced" if replaced else "")
    if replaced:
        from duet.controller.continuity import rotate_all

        await rotate_all(ctl, "recovery_policy_changed")
    return {"recovery": show(ctl), "controller_log_index": first + 1, **shares_view(ctl, required=False)}


def show(ctl: Controller) -> dict[str, Any]:
    policy = policy_in_force(ctl.ledger)
    if policy is None:
        return {"enabled": False, "threshold": 0, "holders": []}
    return {"enabled": True, "threshold": policy.threshold, "holders": list(policy.holders),
            "shares_sha256": list(policy.shares_sha256), "state_key_sha256": policy.state_key_sha256,
            "policy_index": policy.index}


def shares_view(ctl: Controller, *, required: bool = True) -> dict[str, Any]:
    """The encrypted shares of the K in force, only if they are the ones the controller
    log names (a state file restored alone could hold shares of another generation)."""
    policy = policy_in_force(ctl.ledger)
    if policy is None:
        if required:
            raise RecoveryOff("recovery is off for this controller: there are no shares")
        return {}
    raw = ctl.state.get_meta(SHARES_META)
    stored = json.loads(raw) if raw is not None else {}
    shares = stored.get("shares", [])
    if stored.get("state_key_sha256") != policy.state_key_sha256 \
            or [s.get("sha256") for s in shares] != list(policy.shares_sha256):
        raise RecoveryOff("the stored shares are not the ones the controller log names (restored state file?)")
    return {"controller_id": ctl.controller_id, "controller_key": keys.public_b64(ctl.public_key),
            "owner_keys": sorted(ctl._keys_of(ctl._key_changes).values()), "threshold": policy.threshold,
            "state_key_sha256": policy.state_key_sha256,
            "shares": [{k: s[k] for k in ("index", "holder_key", "sealed")} for s in shares]}


def shares_for_owner(ctl: Controller, proof: str | None) -> dict[str, Any]:
    """`GET /v1/controller/recovery/shares`: the shares, to the holder of an owner key
    (`Duet-Owner-Proof`). The proof's time is judged by the controller's trusted clock,
    never earlier than the newest authenticated time it has seen: a host that sets its
    clock back does not make a proof it captured current again."""
    if not proof:
        raise errors.InvalidRequest("the encrypted shares are served to an owner only: send Duet-Owner-Proof")
    rc.check_shares_proof(proof, ctl.controller_id, ctl._owner_keys(), int(ctl.clock.now().timestamp()))
    return shares_view(ctl)


# ------------------------------------------------------------------------- K rotation


async def rotate_state_key(ctl: Controller, reason: str, *, from_cpusvn: int | None = None,
                           to_cpusvn: int | None = None) -> int:
    """Replace K: a new random key; the controller key and every CVM client key
    re-encrypted under it, the new seal and the new shares in one transaction of the
    state file; then `state_key_rotated` in the controller log (finished at the next
    start if a crash comes in between). Returns the entry's index."""
    _require_embedded(ctl)
    old = ctl.state.cipher
    assert old is not None
    new = StateKey.generate()
    policy = policy_in_force(ctl.ledger)
    commitment = rc.state_key_commitment(new.raw())
    shares = make_shares(new.raw(), policy.threshold, policy.holders, ctl.controller_id) if policy else []
    entry = entries.StateKeyRotatedEntry(
        reason=reason, from_cpusvn=from_cpusvn, to_cpusvn=to_cpusvn,
        previous_state_key_sha256=rc.state_key_commitment(old.raw()), state_key_sha256=commitment,
        shares_sha256=tuple(s["sha256"] for s in shares))
    meta = {SEALED_META: ctl.tee.seal(new.raw()), ROTATION_PENDING_META: json.dumps(entry.to_dict()).encode(),
            IDENTITY_META: _identity(ctl)}
    if policy is not None:
        meta[SHARES_META] = _store_shares(policy.threshold, commitment, shares)
    ctl.state.rekey(new, meta)
    return _log_rotation(ctl)


def _logged(ctl: Controller, kind: str, field: str, value: str) -> bool:
    return any(e["type"] == kind and e.get(field) == value for _, e in _controller_log(ctl.ledger))


def _log_rotation(ctl: Controller) -> int:
    raw = ctl.state.get_meta(ROTATION_PENDING_META)
    assert raw is not None
    fields = json.loads(raw)
    fields.pop("time", None)
    entry = entries.StateKeyRotatedEntry.from_dict({**fields, "time": entries.now_rfc3339()})
    index = -1
    if not _logged(ctl, "state_key_rotated", "state_key_sha256", entry.state_key_sha256):
        index = ctl._append_controller([entry])
    ctl.state.delete_meta(ROTATION_PENDING_META)
    log.warning("state key rotated (%s), controller log entry %d", entry.reason, index)
    return index


async def resume(ctl: Controller) -> None:
    """At start: log a finished recovery and replace K (its pieces were outside any
    enclave, and after a TCB change the old state may have been read), then mark every
    CVM key for rotation; finish a K rotation a crash interrupted."""
    pending = ctl.state.get_meta(PENDING_META)
    if pending is not None:
        got = json.loads(pending)
        assert ctl.state.cipher is not None
        entry = entries.RecoveredEntry(
            mrenclave=got["mrenclave"], mrsigner=got["mrsigner"], from_mrenclave=got["from_mrenclave"],
            key_sha256=got["key_sha256"], holders=tuple(got["holders"]), state_key_sha256=got["state_key_sha256"],
            policy_index=int(got["policy_index"]))
        # The CVM keys are rotated at this start whatever happens next (marked first).
        ctl.state.set_meta(ROTATION_META, b"recovery")
        if ctl.state.get_meta(ROTATION_PENDING_META) is None:
            # A crash after the entry and before the rotation: the entry is not logged twice.
            if not _logged(ctl, "recovered", "key_sha256", entry.key_sha256):
                index = ctl._append_controller([entry])
                log.warning("state key recovered from %d share(s) by build %s (controller log entry %d)",
                            len(entry.holders), entry.mrenclave[:16], index)
            tcb = got.get("tcb_change")
            await rotate_state_key(ctl, "tcb_recovery" if tcb else "recovery",
                                   from_cpusvn=got.get("from_cpusvn") if tcb else None,
                                   to_cpusvn=got.get("to_cpusvn") if tcb else None)
        ctl.state.delete_meta(PENDING_META)
    if ctl.state.get_meta(ROTATION_PENDING_META) is not None:
        _log_rotation(ctl)


# --------------------------------------------------------------- the recovery session


def needs_recovery(data_dir: Path, tee: TeeBackend) -> str | None:
    """Why this data dir's K must come from shares (None: the seal opens, or there is no
    controller here yet)."""
    from duet.controller.state import StateStore

    path = data_dir / "state.sqlite"
    if not path.exists():
        return None
    # The store's own connection (exclusive locking before WAL, as Gramine's encrypted
    # files need); this process holds the data dir's lock already.
    state = StateStore(path)
    try:
        sealed, identity = state.get_meta(SEALED_META), state.get_meta(CONTROLLER_KEY_META)
    finally:
        state.close()
    if identity is None:
        return None
    if sealed is None:
        return "the state file holds no sealed state key"
    try:
        tee.unseal(sealed)
    except SealUnreadable as exc:
        return exc.message
    return None


class RecoverySession:
    """A fresh enclave waiting for M shares. Its X25519 key lives only in this process."""

    def __init__(self, data_dir: Path, tee: TeeBackend) -> None:
        from duet.controller.state import StateStore
        from duet.ledger.store import LedgerStore

        self.data_dir = data_dir
        self.tee = tee
        with LedgerStore(data_dir / "ledger.sqlite", verify_on_open=True) as ledger:
            self.policy = policy_in_force(ledger)
            self.approvals = approval_intents(ledger)
            self.last_holder = _last_holder(ledger)
        if self.policy is None:
            raise RecoveryImpossible("the controller log has no recovery policy in force (recovery is off): the "
                                     "state key can come only from an instance that holds it (--join)")
        state = StateStore(data_dir / "state.sqlite")
        try:
            ident = state.get_meta(IDENTITY_META)
            self._sealed = state.get_meta(SEALED_META)
            self._controller_key_blob = state.get_meta(CONTROLLER_KEY_META)
        finally:
            state.close()
        if ident is None or self._controller_key_blob is None:
            raise RecoveryImpossible("the state file does not name the controller's identity (no recovery policy "
                                     "was ever set with it)")
        got = json.loads(ident)
        self.controller_id = str(got["controller_id"])
        self.controller_key = str(got["controller_key"])
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes_raw()
        self._quote = tee.quote(rc.report_data(self.public, self.controller_id))
        self._shares: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.done = threading.Event()

    def info(self) -> dict[str, Any]:
        assert self.policy is not None
        q = self._quote
        return {
            "recovering": True, "controller_id": self.controller_id, "controller_key": self.controller_key,
            "public_key": base64.b64encode(self.public).decode(),
            "quote": {"quote": base64.b64encode(q.quote).decode(), "collateral": q.collateral,
                      "simulated_root_ca": (base64.b64encode(q.simulated_root_ca).decode()
                                            if q.simulated_root_ca is not None else None)},
            "measurement": self.tee.measurement(),
            "threshold": self.policy.threshold, "holders": list(self.policy.holders),
            "state_key_sha256": self.policy.state_key_sha256, "received": sorted(self._shares),
            "approvals": self.approvals,
        }

    def submit(self, body: Any) -> dict[str, Any]:
        """One holder's share, re-encrypted to this enclave's key."""
        assert self.policy is not None
        try:
            index = int(body["index"])
            sealed = base64.b64decode(str(body["sealed"]), validate=True)
        except (KeyError, ValueError, TypeError):
            raise errors.InvalidRequest("a share is {index, sealed: base64}") from None
        if not 1 <= index <= len(self.policy.holders):
            raise errors.InvalidRequest(f"share index {index} is not one of the policy's 1..{len(self.policy.holders)}")
        # Auth mode: only the holder the logged policy names at this index can send it.
        y = rc.decode_share(rc.open_sealed(self._key, sealed, rc.transfer_info(self.controller_id, index, self.public),
                                           f"share {index}",
                                           sender=rc.public_from_b64(self.policy.holders[index - 1])), index)
        with self._lock:
            if self.done.is_set():
                return {"recovered": True, "received": sorted(self._shares)}
            if index in self._shares and not hmac.compare_digest(self._shares[index], y):
                raise errors.InvalidRequest(f"share {index} was already received (another value)")
            self._shares[index] = y
            if len(self._shares) < self.policy.threshold:
                return {"recovered": False, "received": sorted(self._shares),
                        "needed": self.policy.threshold - len(self._shares)}
            k = self._reconstruct()
            if k is None:
                raise RecoveryFailed(
                    f"the {len(self._shares)} share(s) received do not rebuild this controller's state key (a share "
                    "is wrong or was tampered with); nothing was changed. More shares may still rebuild it.")
            self._finish(k)
        return {"recovered": True, "received": sorted(self._shares)}

    def _reconstruct(self) -> tuple[StateKey, list[int]] | None:
        assert self.policy is not None
        for combo in itertools.combinations(sorted(self._shares), self.policy.threshold):
            raw = shamir.combine([(x, self._shares[x]) for x in combo])
            if not hmac.compare_digest(rc.state_key_commitment(raw), self.policy.state_key_sha256):
                continue
            k = StateKey(raw)
            try:
                pem = k.decrypt(CONTROLLER_KEY_LABEL, self._controller_key_blob or b"")
                key = keys.load_private_pem(pem, source="the controller key")
            except (StateKeyError, ValueError) as exc:
                log.error("recovery: the rebuilt key matches the log but does not open the state: %s", exc)
                return None
            if keys.key_id(key.public_key()) != self.controller_id:
                return None
            return k, list(combo)
        return None

    def _finish(self, got: tuple[StateKey, list[int]]) -> None:
        """Seal K here and note what the start must log, in one transaction."""
        assert self.policy is not None
        k, used = got
        me = self.tee.measurement()
        tcb_change, from_svn, sealed_build = False, None, ""
        if self._sealed is not None:
            try:
                from_svn, sealed_mr = header_of(self._sealed)
                sealed_build = sealed_mr.hex()
                tcb_change = sealed_build == me.get("mrenclave")
            except SealUnreadable:
                pass
        pending = {
            "mrenclave": me.get("mrenclave", ""), "mrsigner": me.get("mrsigner", ""),
            "from_mrenclave": self.last_holder or (sealed_build if tcb_change else ""),
            "key_sha256": hashlib.sha256(self.public).hexdigest(),
            "holders": [self.policy.holders[x - 1] for x in used], "state_key_sha256": self.policy.state_key_sha256,
            "policy_index": self.policy.index, "tcb_change": tcb_change, "from_cpusvn": from_svn,
            "to_cpusvn": getattr(self.tee, "cpusvn", None),
        }
        from duet.controller.state import StateStore

        state = StateStore(self.data_dir / "state.sqlite")
        try:
            state.set_metas({SEALED_META: self.tee.seal(k.raw()), PENDING_META: json.dumps(pending).encode()})
        finally:
            state.close()
        log.warning("recovery: the state key was rebuilt from shares %s and sealed here", used)
        self.done.set()


def _last_holder(ledger: LogStore) -> str:
    """The build the controller log last names as holding K (a handover's successor or a
    recovering build), or '' when it names none (the first build is not logged)."""
    last = ""
    for _, e in _controller_log(ledger):
        if e["type"] == "handover":
            last = str(e["to_mrenclave"])
        elif e["type"] == "recovered":
            last = str(e["mrenclave"])
    return last
