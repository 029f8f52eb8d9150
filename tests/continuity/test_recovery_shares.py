"""Recovery of the state key K from M-of-N shares, in process (controller/recovery.py,
controller/shamir.py, ledger/recovery.py, client/recovery.py).

Each test attacks one property: fewer than M shares give nothing; a tampered share fails
the K check and changes nothing; an enclave that is not an approved build gets no share
from a holder; a policy intent that is not the owner's, is replayed or is for another
controller changes nothing; the shares never reach the public log. The whole flow with
real processes and CVMs (a microcode update) is tests/continuity/test_recovery.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import secrets
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from duet.client.controller_log import controller_log_checks
from duet.client.errors import ClientError
from duet.client.expectations import UserExpectations
from duet.client.recovery import RecoveryRefused, check_session, transfer
from duet.controller import errors, recovery, shamir
from duet.controller.serve import SimulatedPlatform, build_controller
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.controller.statekey import CONTROLLER_KEY_LABEL, SEALED_META, StateKey, StateKeyError
from duet.ledger import entries, keys
from duet.ledger import recovery as rc
from duet.ledger.intent import sign_intent
from duet.tee.simulated import SimulatedTee

A, B = "aa" * 32, "bb" * 32


# ------------------------------------------------------------------------------ Shamir


def test_any_m_shares_rebuild_the_key_and_fewer_do_not_determine_it() -> None:
    k = secrets.token_bytes(32)
    for m, n in ((1, 1), (1, 3), (2, 3), (3, 5), (5, 5), (4, 16)):
        shares = shamir.split(k, m, n)
        assert [x for x, _ in shares] == list(range(1, n + 1))
        for combo in itertools.combinations(shares, m):
            assert shamir.combine(list(combo)) == k
        if m > 1:
            few = shares[: m - 1]
            assert shamir.combine(few) != k
            # M-1 genuine shares and any value at the M-th index: every candidate is a
            # different key (the map is a bijection), so M-1 shares pin nothing down.
            xm = shares[m - 1][0]
            candidates = {shamir.combine([*few, (xm, secrets.token_bytes(32))]) for _ in range(16)}
            assert len(candidates) == 16 and k not in candidates
    # Two splits of the same key share nothing (fresh random polynomials).
    assert shamir.split(k, 2, 3)[0] != shamir.split(k, 2, 3)[0]


def _times_x(value: bytes) -> bytes:
    """Multiply by x (the element 2) in GF(2^128) mod x^128 + x^7 + x^2 + x + 1, big-endian:
    the field pycryptodome's Shamir works in, computed here independently."""
    v = int.from_bytes(value, "big") << 1
    if v >> 128:
        v ^= (1 << 128) | 0x87
    return v.to_bytes(16, "big")


def test_known_vector_for_a_line_through_the_secret() -> None:
    """p(x) = c0 + c1·x: p(1) = c0 ⊕ c1, p(2) = c0 ⊕ c1·x. Interpolating the two points must
    give back c0, for each half of the 32-byte key."""
    c0 = bytes.fromhex("000102030405060708090a0b0c0d0e0f" "f0e0d0c0b0a090807060504030201000")
    c1 = bytes.fromhex("80000000000000000000000000000001" "0123456789abcdeffedcba9876543210")
    y1 = bytes(a ^ b for a, b in zip(c0, c1, strict=True))
    y2 = bytes(a ^ b for a, b in zip(c0, _times_x(c1[:16]) + _times_x(c1[16:]), strict=True))
    # The top bit of c1's first half overflows: the reduction by 0x87 is exercised.
    assert y2.hex() == "000102030405060708090a0b0c0d0e8a" "f2a65a0fa3f70b5f8dd92570dc887420"
    assert shamir.combine([(1, y1), (2, y2)]) == c0
    assert shamir.combine([(2, y2), (1, y1)]) == c0


def test_shamir_refuses_bad_input() -> None:
    k = bytes(32)
    for m, n in ((0, 3), (4, 3), (2, 17)):
        with pytest.raises(ValueError):
            shamir.split(k, m, n)
    with pytest.raises(ValueError):
        shamir.split(b"short", 1, 1)
    s = shamir.split(k, 2, 3)
    with pytest.raises(ValueError, match="duplicate"):
        shamir.combine([s[0], s[0]])


def test_a_share_opens_only_for_its_holder_controller_index_and_generation() -> None:
    holder = X25519PrivateKey.generate()
    other = X25519PrivateKey.generate()
    commit = rc.state_key_commitment(bytes(32))
    sealed = rc.seal(holder.public_key(), rc.encode_share(2, bytes(32)), rc.holder_info("c" * 64, 2, commit))
    assert rc.decode_share(rc.open_sealed(holder, sealed, rc.holder_info("c" * 64, 2, commit), "s"), 2) == bytes(32)
    for key, info in ((other, rc.holder_info("c" * 64, 2, commit)), (holder, rc.holder_info("d" * 64, 2, commit)),
                      (holder, rc.holder_info("c" * 64, 3, commit)),
                      (holder, rc.holder_info("c" * 64, 2, rc.state_key_commitment(b"\1" * 32)))):
        with pytest.raises(rc.RecoveryError):
            rc.open_sealed(key, sealed, info, "s")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(rc.RecoveryError):
        rc.open_sealed(holder, flipped, rc.holder_info("c" * 64, 2, commit), "s")


# ----------------------------------------------------------------- the controller's side


class Setup:
    def __init__(self, tmp_path: Path, *, m: int = 2, n: int = 3) -> None:
        os.chmod(tmp_path, 0o755)
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.owner = keys.Ed25519PrivateKey.generate()
        (tmp_path / "owner.pub").write_bytes(keys.public_pem(self.owner.public_key()))
        self.ctl: Controller = build_controller(self.data, owner_key=tmp_path / "owner.pub",
                                                simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
        self.cid = self.ctl.controller_id
        self.holders = [X25519PrivateKey.generate() for _ in range(n)]
        self.submit("controller.approve", {"mrenclave": A})
        self.answer = self.submit("controller.recovery",
                                  {"threshold": m, "holders": [rc.public_b64(h.public_key()) for h in self.holders]})
        assert self.ctl.state.cipher is not None
        self.k = self.ctl.state.cipher.raw()

    def submit(self, op: str, args: dict[str, Any], *, key: keys.Ed25519PrivateKey | None = None,
               aud: str | None = None) -> Any:
        jws = sign_intent(key or self.owner, op=op, aud=aud or self.cid, args=args, iat=int(time.time()))
        return asyncio.run(self.ctl.submit(jws))[1]

    def files(self, body: dict[str, Any] | None = None) -> list[rc.ShareFile]:
        b = body or self.answer
        return [rc.ShareFile(controller_id=b["controller_id"], controller_key=b["controller_key"],
                             owner_keys=tuple(b["owner_keys"]), index=s["index"], threshold=b["threshold"],
                             holder_key=s["holder_key"], state_key_sha256=b["state_key_sha256"],
                             sealed=base64.b64decode(s["sealed"])) for s in b["shares"]]

    def leaves(self) -> list[bytes]:
        size = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        return self.ctl.ledger.leaves(CONTROLLER_LOG, 0, size)


def _session_info(session: recovery.RecoverySession) -> dict[str, Any]:
    return dict(json.loads(json.dumps(session.info())))


def _hand(session: recovery.RecoverySession, share: rc.ShareFile, holder: X25519PrivateKey) -> dict[str, Any]:
    pub, _ = check_session(_session_info(session), share, trust_simulated=True)
    return session.submit({"index": share.index, "sealed": base64.b64encode(transfer(share, holder, pub)).decode()})


def _meta(data: Path, key: str) -> bytes | None:
    db = sqlite3.connect(data / "state.sqlite")
    try:
        row = db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def test_policy_is_logged_with_digests_only_and_the_shares_rebuild_k(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    try:
        log = [entries.decode(x) for x in s.leaves()]
        assert log[-2]["type"] == "intent" and log[-2]["op"] == "controller.recovery"
        pol = log[-1]
        assert pol["type"] == "recovery_policy" and pol["threshold"] == 2 and len(pol["holders"]) == 3
        assert pol["state_key_sha256"] == rc.state_key_commitment(s.k)
        assert pol["shares_sha256"] == [hashlib.sha256(f.sealed).hexdigest() for f in s.files()]
        # Never a share (nor its ciphertext) in the public log.
        blob = b"".join(s.leaves())
        assert all(base64.b64encode(f.sealed) not in blob for f in s.files())
        # Each holder opens its own share only; any two rebuild K, one does not.
        ys = []
        for f, h in zip(s.files(), s.holders, strict=True):
            ys.append((f.index, rc.decode_share(rc.open_sealed(
                h, f.sealed, rc.holder_info(s.cid, f.index, f.state_key_sha256), "share"), f.index)))
        with pytest.raises(rc.RecoveryError):
            rc.open_sealed(s.holders[1], s.files()[0].sealed,
                           rc.holder_info(s.cid, 1, s.files()[0].state_key_sha256), "share")
        assert all(shamir.combine(list(c)) == s.k for c in itertools.combinations(ys, 2))
        assert shamir.combine(ys[:1]) != s.k
        # The user's replay accepts it and knows the policy.
        checks, ctl_log = controller_log_checks(s.leaves(), controller_id=s.cid, expect=None)
        assert all(c.ok for c in checks), checks
        assert ctl_log.recovery == [(len(log) - 1, 2, 3)]
        # The owner-only fetch gives the same shares; turning recovery off drops them.
        assert recovery.shares_view(s.ctl)["shares"] == s.answer["shares"]
        off = s.submit("controller.recovery", {"threshold": 0, "holders": []})
        assert off["recovery"] == {"enabled": False, "threshold": 0, "holders": []}
        with pytest.raises(recovery.RecoveryOff):
            recovery.shares_view(s.ctl)
    finally:
        s.ctl.close()


def test_a_new_policy_replaces_k_so_former_holders_rebuild_nothing_in_use(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    try:
        old_files = s.files()
        ys = [(f.index, rc.decode_share(rc.open_sealed(h, f.sealed, rc.holder_info(s.cid, f.index,
                                                                                   f.state_key_sha256), "s"), f.index))
              for f, h in zip(old_files, s.holders, strict=True)]
        assert shamir.combine(ys[:2]) == s.k
        newcomer = X25519PrivateKey.generate()
        res = s.submit("controller.recovery", {"threshold": 1, "holders": [rc.public_b64(newcomer.public_key())]})
        log = [entries.decode(x) for x in s.leaves()]
        assert [e["type"] for e in log[-3:]] == ["intent", "recovery_policy", "state_key_rotated"]
        assert log[-1]["reason"] == "recovery_policy_changed"
        assert s.ctl.state.cipher is not None
        k2 = s.ctl.state.cipher.raw()
        assert k2 != s.k and log[-2]["state_key_sha256"] == rc.state_key_commitment(k2) == res["state_key_sha256"]
        # The former holders' K opens nothing in the state file any more.
        with pytest.raises(StateKeyError):
            StateKey(s.k).decrypt(CONTROLLER_KEY_LABEL, _state_meta(s.ctl, "controller_key"))
        # The new holder's share is of the new K; the user's replay accepts the sequence.
        f = s.files(res)[0]
        y = rc.decode_share(rc.open_sealed(newcomer, f.sealed, rc.holder_info(s.cid, 1, f.state_key_sha256), "s"), 1)
        assert y == k2
        checks, ctl_log = controller_log_checks(s.leaves(), controller_id=s.cid, expect=None)
        assert all(c.ok for c in checks), checks
        assert [(m, n) for _, m, n in ctl_log.recovery] == [(2, 3), (1, 1)]
        assert recovery.policy_in_force(s.ctl.ledger).state_key_sha256 == rc.state_key_commitment(k2)  # type: ignore[union-attr]
    finally:
        s.ctl.close()


def test_shares_of_another_generation_restored_to_the_state_file_are_not_served(tmp_path: Path) -> None:
    """The host restores the state file's record of the shares from before a new policy
    (the former holders' shares of the former K): they are not the ones the controller
    log names now, and the owner is never handed them as current."""
    s = Setup(tmp_path)
    try:
        former = s.ctl.state.get_meta(recovery.SHARES_META)
        assert former is not None
        s.submit("controller.recovery", {"threshold": 1, "holders": [rc.public_b64(s.holders[0].public_key())]})
        assert recovery.shares_view(s.ctl)["threshold"] == 1
        s.ctl.state.set_meta(recovery.SHARES_META, former)
        with pytest.raises(recovery.RecoveryOff) as info:
            recovery.shares_view(s.ctl)
        assert "not the ones the controller log names" in info.value.message
        s.ctl.state.delete_meta(recovery.SHARES_META)
        with pytest.raises(recovery.RecoveryOff):
            recovery.shares_view(s.ctl)
    finally:
        s.ctl.close()


def test_shares_are_served_to_an_owner_only(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    try:
        owner_keys = s.ctl._owner_keys()
        now = int(time.time())
        assert rc.check_shares_proof(rc.shares_proof(s.owner, s.cid, now), s.cid, owner_keys, now)
        stranger = keys.Ed25519PrivateKey.generate()
        for header, code in ((rc.shares_proof(stranger, s.cid, now), "unknown_key"),
                             (rc.shares_proof(s.owner, "d" * 64, now), "bad_signature"),
                             (rc.shares_proof(s.owner, s.cid, now - 3600), "stale_intent"),
                             ("garbage", "bad_signature")):
            with pytest.raises(Exception) as info:
                rc.check_shares_proof(header, s.cid, owner_keys, now)
            assert getattr(info.value, "code", None) == code
    finally:
        s.ctl.close()


def test_a_host_that_sets_its_clock_back_cannot_replay_an_owner_proof(tmp_path: Path) -> None:
    """The SGX host captured an owner's Duet-Owner-Proof and, an hour on, sets its clock
    back to when the proof was made. The controller has since verified a later signed time
    (collateral, a witness cosignature): its trusted clock does not go back, the proof
    stays stale, and the encrypted shares are not served."""
    s = Setup(tmp_path)
    try:
        made = int(time.time())
        captured = rc.shares_proof(s.owner, s.cid, made)
        assert recovery.shares_for_owner(s.ctl, captured)["shares"]
        s.ctl.clock.observe(datetime.fromtimestamp(made + 3600, UTC), "test: an authenticated time")
        s.ctl.clock._host = lambda: datetime.fromtimestamp(made, UTC)  # the host's clock, set back
        with pytest.raises(Exception) as info:
            recovery.shares_for_owner(s.ctl, captured)
        assert getattr(info.value, "code", None) == "stale_intent"
        # A proof made at the trusted time is served; no proof at all is a typed refusal.
        assert recovery.shares_for_owner(s.ctl, rc.shares_proof(s.owner, s.cid, made + 3600))["shares"]
        with pytest.raises(errors.InvalidRequest):
            recovery.shares_for_owner(s.ctl, None)
    finally:
        s.ctl.close()


def test_policy_intents_not_from_the_owner_change_nothing(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    try:
        size = s.ctl.ledger.tree_head(CONTROLLER_LOG).size
        stored = s.ctl.state.get_meta(recovery.SHARES_META)
        evil = [rc.public_b64(X25519PrivateKey.generate().public_key())]
        args = {"threshold": 1, "holders": evil}
        # A key that is not an owner key.
        with pytest.raises(Exception) as info:
            s.submit("controller.recovery", args, key=keys.Ed25519PrivateKey.generate())
        assert getattr(info.value, "code", None) == "unknown_key"
        # An owner intent for another controller.
        with pytest.raises(Exception) as info:
            s.submit("controller.recovery", args, aud="e" * 64)
        assert getattr(info.value, "code", None) == "wrong_audience"
        # A replay of the owner's own earlier intent (the policy it set, once more).
        first = next(entries.decode(x) for x in s.leaves()
                     if entries.decode(x).get("op") == "controller.recovery")
        with pytest.raises(errors.ReplayedIntent):
            asyncio.run(s.ctl.submit(str(first["jws"])))
        # Malformed policies are refused before anything happens.
        for bad in ({"threshold": 2, "holders": evil}, {"threshold": 0, "holders": evil},
                    {"threshold": 1, "holders": [*evil, *evil]}, {"threshold": 1, "holders": ["AAAA"]}):
            with pytest.raises(Exception) as info:
                s.submit("controller.recovery", bad)
            assert getattr(info.value, "code", None) == "malformed_intent"
        assert s.ctl.ledger.tree_head(CONTROLLER_LOG).size == size
        assert s.ctl.state.get_meta(recovery.SHARES_META) == stored
        assert recovery.policy_in_force(s.ctl.ledger) is not None
        assert recovery.policy_in_force(s.ctl.ledger).threshold == 2  # type: ignore[union-attr]
    finally:
        s.ctl.close()


def test_recovery_after_a_microcode_update(tmp_path: Path) -> None:
    """Fewer than M shares: nothing; a tampered share: the K check fails closed and nothing
    changes; with M good shares K is rebuilt, logged, and then replaced."""
    s = Setup(tmp_path)
    s.ctl.close()
    sealed_before = _meta(s.data, SEALED_META)
    tee2 = SimulatedTee(s.data / "tee", mrenclave=bytes.fromhex(A), cpusvn=2)
    why = recovery.needs_recovery(s.data, tee2)
    assert why is not None and "CPUSVN 1" in why and "CPUSVN 2" in why
    session = recovery.RecoverySession(s.data, tee2)
    f = s.files()

    # One share of two: nothing rebuilt, nothing written.
    assert _hand(session, f[0], s.holders[0]) == {"recovered": False, "received": [1], "needed": 1}
    assert not session.done.is_set() and _meta(s.data, SEALED_META) == sealed_before

    # A share altered in transit does not open (HPKE): refused, not kept.
    pub = base64.b64decode(_session_info(session)["public_key"])
    good = transfer(f[1], s.holders[1], pub)
    with pytest.raises(rc.RecoveryError):
        session.submit({"index": 2, "sealed": base64.b64encode(good[:-1] + bytes([good[-1] ^ 1])).decode()})
    # A holder that lies (a well-encrypted wrong share): the rebuilt key fails the
    # commitment, recovery stops with nothing changed.
    y = rc.decode_share(rc.open_sealed(s.holders[1], f[1].sealed,
                                       rc.holder_info(s.cid, 2, f[1].state_key_sha256), "s"), 2)
    session_key = rc.public_from_b64(base64.b64encode(pub).decode())
    # Anyone can encrypt to the session key; only holder 2 can send share 2 (HPKE auth).
    for forger in (None, s.holders[2], X25519PrivateKey.generate()):
        forged = rc.seal(session_key, rc.encode_share(2, y), rc.transfer_info(s.cid, 2, pub), sender=forger)
        with pytest.raises(rc.RecoveryError):
            session.submit({"index": 2, "sealed": base64.b64encode(forged).decode()})
    assert _session_info(session)["received"] == [1]
    lie = rc.seal(session_key, rc.encode_share(2, bytes([y[0] ^ 1]) + y[1:]), rc.transfer_info(s.cid, 2, pub),
                  sender=s.holders[1])
    with pytest.raises(recovery.RecoveryFailed):
        session.submit({"index": 2, "sealed": base64.b64encode(lie).decode()})
    assert not session.done.is_set()
    assert _meta(s.data, SEALED_META) == sealed_before and _meta(s.data, recovery.PENDING_META) is None
    # A share re-encrypted to another enclave's key does not open here.
    other = X25519PrivateKey.generate().public_key()
    with pytest.raises(rc.RecoveryError):
        session.submit({"index": 3, "sealed": base64.b64encode(
            rc.seal(other, rc.encode_share(3, y), rc.transfer_info(s.cid, 3, pub), sender=s.holders[2])).decode()})

    # The third holder: shares 1 and 3 rebuild K (the lie at 2 is left out).
    assert _hand(session, f[2], s.holders[2])["recovered"] is True
    assert session.done.is_set() and _meta(s.data, SEALED_META) != sealed_before
    assert StateKey(tee2.unseal(_meta(s.data, SEALED_META) or b"")).raw() == s.k

    # The controller starts at the new CPUSVN, logs the recovery and replaces K.
    ctl = build_controller(s.data, simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A), cpusvn=2))
    try:
        asyncio.run(_start(ctl))
        log = [entries.decode(x) for x in ctl.ledger.leaves(CONTROLLER_LOG, 0, ctl.ledger.tree_head(
            CONTROLLER_LOG).size)]
        rec, rot = log[-2], log[-1]
        assert rec["type"] == "recovered" and rec["mrenclave"] == A and rec["from_mrenclave"] == A
        assert rec["holders"] == [f[0].holder_key, f[2].holder_key]
        assert rec["state_key_sha256"] == rc.state_key_commitment(s.k)
        assert rot == {**rot, "type": "state_key_rotated", "reason": "tcb_recovery", "from_cpusvn": 1, "to_cpusvn": 2,
                       "previous_state_key_sha256": rc.state_key_commitment(s.k)}
        assert ctl.state.cipher is not None
        k2 = ctl.state.cipher.raw()
        assert k2 != s.k and rot["state_key_sha256"] == rc.state_key_commitment(k2)
        # Every secret is under the new K: the old K opens nothing in the state file now.
        blob = _state_meta(ctl, "controller_key")
        assert StateKey(k2).decrypt(CONTROLLER_KEY_LABEL, blob)
        with pytest.raises(StateKeyError):
            StateKey(s.k).decrypt(CONTROLLER_KEY_LABEL, blob)
        # New shares, of the new K, for the same holders: the old ones are of another generation.
        new = recovery.shares_view(ctl)
        assert new["state_key_sha256"] == rot["state_key_sha256"] and rot["shares_sha256"] == [
            hashlib.sha256(base64.b64decode(x["sealed"])).hexdigest() for x in new["shares"]]
        checks, _ = controller_log_checks(
            ctl.ledger.leaves(CONTROLLER_LOG, 0, len(log)), controller_id=s.cid, expect=None)
        assert all(c.ok for c in checks), checks
        # The CVM keys (none here) are marked for rotation at this start; it is done.
        assert ctl.state.get_meta("rotation_pending") is None
    finally:
        ctl.close()


async def _start(ctl: Controller) -> None:
    await ctl.startup()
    await ctl.shutdown()


def _state_meta(ctl: Controller, key: str) -> bytes:
    value = ctl.state.get_meta(key)
    assert value is not None
    return value


def test_holder_refuses_an_enclave_that_is_not_an_approved_build(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.ctl.close()
    f = s.files()
    # Build B was never approved: the holder does not open its share.
    session = recovery.RecoverySession(s.data, SimulatedTee(tmp_path / "host2", mrenclave=bytes.fromhex(B)))
    info = _session_info(session)
    with pytest.raises(RecoveryRefused, match="not approved"):
        check_session(info, f[0], trust_simulated=True)
    # The host adds an approval of B of its own making: not signed by the owner, not counted.
    stranger = keys.Ed25519PrivateKey.generate()
    forged = sign_intent(stranger, op="controller.approve", aud=s.cid, args={"mrenclave": B}, iat=int(time.time()))
    with pytest.raises(RecoveryRefused, match="not approved"):
        check_session({**info, "approvals": [*info["approvals"], forged]}, f[0], trust_simulated=True)
    # An owner's approval of B for another controller does not count either.
    elsewhere = sign_intent(s.owner, op="controller.approve", aud="f" * 64, args={"mrenclave": B},
                            iat=int(time.time()))
    with pytest.raises(RecoveryRefused, match="not approved"):
        check_session({**info, "approvals": [elsewhere]}, f[0], trust_simulated=True)
    # A SIMULATED enclave without --trust-simulated; a quote over another key; another controller.
    ok = recovery.RecoverySession(s.data, SimulatedTee(tmp_path / "host3", mrenclave=bytes.fromhex(A)))
    good = _session_info(ok)
    with pytest.raises(RecoveryRefused, match="SIMULATED"):
        check_session(good, f[0], trust_simulated=False)
    swapped = {**good, "public_key": base64.b64encode(secrets.token_bytes(32)).decode()}
    with pytest.raises(RecoveryRefused, match="does not bind"):
        check_session(swapped, f[0], trust_simulated=True)
    with pytest.raises(RecoveryRefused, match="this share is for"):
        check_session({**good, "controller_id": "0" * 64}, f[0], trust_simulated=True)
    # The approved build A: accepted; and the share is bound to this holder's key.
    pub, report = check_session(good, f[0], trust_simulated=True)
    assert report.mrenclave == A
    with pytest.raises(ClientError):
        transfer(f[0], s.holders[1], pub)


def test_recover_refuses_a_data_dir_without_a_policy(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.submit("controller.recovery", {"threshold": 0, "holders": []})
    s.ctl.close()
    with pytest.raises(recovery.RecoveryImpossible, match="no recovery policy"):
        recovery.RecoverySession(s.data, SimulatedTee(s.data / "tee", mrenclave=bytes.fromhex(A), cpusvn=2))


# ---------------------------------------------------------------------- the user's side


def _expect(value: Any) -> UserExpectations:
    return UserExpectations.model_validate({"controller": {"recovery": value}})


def test_expectations_judge_every_policy_ever_in_force(tmp_path: Path) -> None:
    from duet.client.build_history import build_history_checks

    s = Setup(tmp_path, m=2, n=3)
    try:
        s.submit("controller.recovery", {"threshold": 1, "holders": [s.answer["shares"][0]["holder_key"]]})
        s.submit("controller.recovery", {"threshold": 0, "holders": []})
        _, ctl_log = controller_log_checks(s.leaves(), controller_id=s.cid, expect=None)

        def verdict(value: Any) -> tuple[bool, str]:
            got = [c for c in build_history_checks(ctl_log, _expect(value), A) if c.name == "controller_recovery"]
            assert len(got) == 1
            return got[0].ok, got[0].detail

        # Off now, but it was on: `none` fails; a minimum of 2 fails (it was 1 for a while).
        ok, detail = verdict("none")
        assert not ok and "2 of 3" in detail and "1 of 1" in detail
        assert verdict({"min_threshold": 2})[0] is False
        assert verdict({"min_threshold": 1})[0] is True
        with pytest.raises(ValueError):
            _expect("sometimes")
        with pytest.raises(ValueError):
            _expect({"min_threshold": 0})
    finally:
        s.ctl.close()
    # A controller whose log never had a policy passes `none`.
    fresh = Setup.__new__(Setup)
    os.chmod(tmp_path, 0o755)
    ctl = build_controller(tmp_path / "other", simulated=SimulatedPlatform(mrenclave=bytes.fromhex(A)))
    try:
        fresh.ctl = ctl
        size = ctl.ledger.tree_head(CONTROLLER_LOG).size
        _, plain = controller_log_checks(ctl.ledger.leaves(CONTROLLER_LOG, 0, size), controller_id=ctl.controller_id,
                                         expect=None)
        got = [c for c in build_history_checks(plain, _expect("none"), A) if c.name == "controller_recovery"]
        assert got and got[0].ok
    finally:
        ctl.close()


def test_replay_refuses_a_policy_entry_without_its_intent_and_a_recovery_without_a_policy(tmp_path: Path) -> None:
    from duet.client.controller_log import ControllerLogReplay

    s = Setup(tmp_path)
    try:
        leaves = s.leaves()
        # The recovery_policy entry without the intent before it.
        cut = leaves[:-2] + leaves[-1:]
        checks, _ = controller_log_checks(cut, controller_id=s.cid, expect=None)
        assert not checks[0].ok and "without the controller.recovery intent" in checks[0].detail
        # An intent asking for another threshold than the entry says.
        e = entries.decode(leaves[-1])
        forged = entries.encode({**e, "threshold": 1})
        checks, _ = controller_log_checks([*leaves[:-1], forged], controller_id=s.cid, expect=None)
        assert not checks[0].ok and "differs from what the preceding intent asked" in checks[0].detail
        # A `recovered` entry in a log that never enabled recovery.
        rec = entries.RecoveredEntry(mrenclave=A, mrsigner=B, from_mrenclave=A, key_sha256="0" * 64,
                                     holders=(), state_key_sha256="0" * 64, policy_index=0).encode()
        checks, _ = controller_log_checks([leaves[0], rec], controller_id=s.cid, expect=None)
        assert not checks[0].ok and "no recovery policy was in force" in checks[0].detail
        # The incremental verifier saves and resumes the replay with the policy in it.
        replay = ControllerLogReplay(s.cid)
        for leaf in leaves:
            replay.feed(leaf)
        again = ControllerLogReplay(s.cid)
        again.load(json.loads(json.dumps(replay.dump())))
        assert again.log.recovery == replay.log.recovery and again.log.recovery
    finally:
        s.ctl.close()


def test_build_history_includes_a_recovering_build() -> None:
    from duet.client.build_history import build_history, build_history_checks
    from duet.client.controller_log import ControllerLog

    ctl = ControllerLog(size=10, recovery=[(2, 2, 3)], continuity=[
        (5, {"type": "recovered", "mrenclave": B, "from_mrenclave": A, "holders": ["x", "y"]})])
    history = build_history(ctl, B)
    assert [h["mrenclave"] for h in history] == [A, B]
    only_a = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}]}})
    both = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}, {"mrenclave": B}]}})
    failed = {c.name for c in build_history_checks(ctl, only_a, B) if not c.ok}
    assert failed == {"controller_builds"}
    assert all(c.ok for c in build_history_checks(ctl, both, B))
    # A recovery whose predecessor is not known (its seal was gone): an unknown build held
    # K, which no list of builds can vouch for.
    unknown = ControllerLog(size=10, recovery=[(2, 2, 3)], continuity=[
        (5, {"type": "recovered", "mrenclave": B, "from_mrenclave": "", "holders": ["x", "y"]})])
    assert {c.name for c in build_history_checks(unknown, both, B) if not c.ok} == {"controller_builds"}


@pytest.mark.parametrize("crash", ["before_rotation", "before_rotation_logged"])
def test_a_crash_during_the_finish_is_completed_once_at_the_next_start(tmp_path: Path, crash: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Setup(tmp_path)
    s.ctl.close()
    at2 = SimulatedPlatform(mrenclave=bytes.fromhex(A), cpusvn=2)
    session = recovery.RecoverySession(s.data, SimulatedTee(s.data / "tee", mrenclave=bytes.fromhex(A), cpusvn=2))
    f = s.files()
    _hand(session, f[0], s.holders[0])
    assert _hand(session, f[1], s.holders[1])["recovered"] is True

    class Crash(Exception):
        pass

    def boom(*_: Any, **__: Any) -> Any:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(recovery, "rotate_state_key" if crash == "before_rotation" else "_log_rotation", boom)
        ctl = build_controller(s.data, simulated=at2)
        try:
            with pytest.raises(Crash):
                asyncio.run(recovery.resume(ctl))
        finally:
            ctl.close()
    ctl = build_controller(s.data, simulated=at2)
    try:
        asyncio.run(_start(ctl))
        types = [entries.decode(x)["type"] for x in ctl.ledger.leaves(
            CONTROLLER_LOG, 0, ctl.ledger.tree_head(CONTROLLER_LOG).size)]
        assert types.count("recovered") == 1 and types.count("state_key_rotated") == 1
        assert ctl.state.cipher is not None and ctl.state.cipher.raw() != s.k
        assert ctl.state.get_meta(recovery.PENDING_META) is None
        assert ctl.state.get_meta(recovery.ROTATION_PENDING_META) is None
    finally:
        ctl.close()


def test_holder_cli_gives_nothing_to_an_unapproved_build(tmp_path: Path) -> None:
    """`duet controller recover` against a recovering enclave of build B, which the owner
    never approved: refused, one line, and the enclave received nothing."""
    import subprocess
    import sys
    import threading

    import httpx

    from duet.controller.recovery_api import run_session
    from duet.controller.serve import bind
    from helpers import free_port

    s = Setup(tmp_path)
    s.ctl.close()
    f = s.files()
    for i, (sf, h) in enumerate(zip(f, s.holders, strict=True)):
        (tmp_path / f"share{i}.json").write_text(sf.to_json())
        (tmp_path / f"holder{i}.key").write_bytes(rc.private_pem(h))
    session = recovery.RecoverySession(s.data, SimulatedTee(tmp_path / "rogue-tee", mrenclave=bytes.fromhex(B)))
    port = free_port()
    sock = bind("127.0.0.1", port)
    thread = threading.Thread(target=run_session, args=(session, sock), kwargs={"tls": False, "data_dir": s.data},
                              daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        res = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "recover", "--controller", url,
                              "--share", str(tmp_path / "share0.json"), "--holder-key", str(tmp_path / "holder0.key"),
                              "--trust-simulated"], capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and "error [recovery_refused]" in res.stderr and "not approved" in res.stderr
        assert "Traceback" not in res.stderr
        assert httpx.get(url + "/v1/controller/recovery/session").json()["received"] == []
    finally:
        # End the session: two shares sent without any check (what a careless holder would do).
        pub = base64.b64decode(_session_info(session)["public_key"])
        for sf, h in list(zip(f, s.holders, strict=True))[:2]:
            httpx.post(url + "/v1/controller/recovery/session/share",
                       json={"index": sf.index, "sealed": base64.b64encode(transfer(sf, h, pub)).decode()})
        thread.join(timeout=30)
    assert not thread.is_alive()
