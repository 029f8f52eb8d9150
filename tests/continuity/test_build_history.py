"""The user's side of continuity: approvals in the controller log must be authorised, and
the build history is judged against `controller.builds` (client/build_history.py)."""

from __future__ import annotations

import secrets
import time

from duet.client.build_history import build_history, build_history_checks
from duet.client.controller_log import controller_log_checks
from duet.client.expectations import UserExpectations
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
OWNER = keys.Ed25519PrivateKey.generate()
CID = "ab" * 32


def _intent(op: str, args: dict[str, object], key: keys.Ed25519PrivateKey = OWNER) -> entries.IntentEntry:
    jws = sign_intent(key, op=op, args=args, aud=CID, nonce=secrets.token_hex(16), iat=int(time.time()))
    return entries.IntentEntry(jws=jws, op=op, kid=keys.key_id(key.public_key()), controller_log_size=1)


def _log(*items: entries.Entry) -> list[bytes]:
    # Dated before the items (made first, as arguments): entry times never go back.
    first = entries.OwnerKeysEntry(keys=(keys.public_b64(OWNER.public_key()),), time="2026-01-01T00:00:00.000000Z")
    return [e.encode() for e in (first, *items)]


def _handover(frm: str, to: str) -> entries.HandoverEntry:
    return entries.HandoverEntry(from_mrenclave=frm, from_mrsigner="11" * 32, to_mrenclave=to,
                                 to_mrsigner="11" * 32, to_key_sha256="00" * 32)


def _exp(*builds: str, signer: bool = False) -> UserExpectations:
    return UserExpectations.model_validate(
        {"controller": {"builds": [{"mrenclave": b} for b in builds], "allow_mrsigner_approval": signer}})


def test_history_and_expected_builds() -> None:
    leaves = _log(_intent("controller.approve", {"mrenclave": B}), entries.BuildApprovedEntry(mrenclave=B),
                  _handover(A, B))
    checks, ctl = controller_log_checks(leaves, controller_id=CID, expect=None)
    assert all(c.ok for c in checks), checks
    assert [h["mrenclave"] for h in build_history(ctl, B)] == [A, B]
    assert all(c.ok for c in build_history_checks(ctl, _exp(A, B), B))
    failed = [c for c in build_history_checks(ctl, _exp(B), B) if not c.ok]
    assert [c.name for c in failed] == ["controller_builds"] and A[:16] in failed[0].detail
    # The quoted build must be the log's last holder.
    assert not all(c.ok for c in build_history_checks(ctl, None, C))


def test_a_holder_without_a_handover_to_it_fails() -> None:
    _, ctl = controller_log_checks(_log(_handover(A, B), _handover(C, A)), controller_id=CID, expect=None)
    bad = [c for c in build_history_checks(ctl, None, A) if not c.ok]
    assert [c.name for c in bad] == ["controller_build_history"] and C[:16] in bad[0].detail


def test_approval_without_its_intent_or_by_a_stranger_is_refused() -> None:
    stranger = keys.Ed25519PrivateKey.generate()
    for items in (
        (entries.BuildApprovedEntry(mrenclave=B),),
        (_intent("controller.approve", {"mrenclave": C}), entries.BuildApprovedEntry(mrenclave=B)),
        (_intent("controller.approve", {"mrenclave": B}, stranger), entries.BuildApprovedEntry(mrenclave=B)),
    ):
        checks, ctl = controller_log_checks(_log(*items), controller_id=CID, expect=None)
        assert not checks[0].ok and "approv" in checks[0].detail
        assert not ctl.continuity


def test_mrsigner_approval_needs_the_users_consent() -> None:
    signer = {"mrsigner": "11" * 32, "isv_prod_id": 1, "min_isv_svn": 2}
    leaves = _log(_intent("controller.approve", signer), entries.BuildApprovedEntry(**signer))  # type: ignore[arg-type]
    checks, ctl = controller_log_checks(leaves, controller_id=CID, expect=None)
    assert all(c.ok for c in checks)
    bad = [c for c in build_history_checks(ctl, _exp(A), A) if not c.ok]
    assert [c.name for c in bad] == ["controller_approvals"]
    assert all(c.ok for c in build_history_checks(ctl, _exp(A, signer=True), A))


def _joined(frm: str, to: str, key: str = "01" * 32) -> entries.StandbyJoinedEntry:
    return entries.StandbyJoinedEntry(from_mrenclave=frm, from_mrsigner="11" * 32, to_mrenclave=to,
                                      to_mrsigner="11" * 32, to_key_sha256=key)


def _promote(build: str, key: str = "01" * 32) -> entries.PromoteEntry:
    return entries.PromoteEntry(mrenclave=build, mrsigner="11" * 32, key_sha256=key, reason="lease expired")


def test_a_standby_is_in_the_history_promoted_or_not() -> None:
    """A standby held K from its standby_joined on: a user whose builds leave it out fails,
    even while the primary still acts (and after the promotion, when it answers)."""
    approve = (_intent("controller.approve", {"mrenclave": B}), entries.BuildApprovedEntry(mrenclave=B))
    checks, ctl = controller_log_checks(_log(*approve, _joined(A, B)), controller_id=CID, expect=None)
    assert all(c.ok for c in checks), checks
    assert [h["mrenclave"] for h in build_history(ctl, A)] == [A, B]
    assert all(c.ok for c in build_history_checks(ctl, _exp(A, B), A))  # the primary still answers
    failed = [c for c in build_history_checks(ctl, _exp(A), A) if not c.ok]
    assert [c.name for c in failed] == ["controller_builds"] and B[:16] in failed[0].detail
    # Promoted: the standby answers now; the primary's quote would be the mismatch.
    checks, ctl = controller_log_checks(_log(*approve, _joined(A, B), _promote(B)), controller_id=CID, expect=None)
    assert all(c.ok for c in checks), checks
    assert all(c.ok for c in build_history_checks(ctl, _exp(A, B), B))
    assert [c.name for c in build_history_checks(ctl, None, A) if not c.ok] == ["controller_build_history"]
    failed = [c for c in build_history_checks(ctl, _exp(A), B) if not c.ok]
    assert [c.name for c in failed] == ["controller_builds"]


def test_a_promote_by_a_build_that_never_joined_is_a_problem() -> None:
    """A `promote` naming a build (or a handshake key) no `standby_joined` let in: that build
    acted with a K the log never gave it."""
    for items in ((_promote(C),), (_joined(A, B), _promote(C)), (_joined(A, B), _promote(B, key="02" * 32))):
        checks, ctl = controller_log_checks(_log(*items), controller_id=CID, expect=None)
        assert not checks[0].ok and "never received the state key" in checks[0].detail, checks[0]
    checks, ctl = controller_log_checks(_log(_promote(C)), controller_id=CID, expect=None)
    bad = [c for c in build_history_checks(ctl, None, C) if not c.ok]
    assert [c.name for c in bad] == ["controller_build_history"] and C[:16] in bad[0].detail


def test_the_incremental_replay_keeps_what_promote_is_judged_by() -> None:
    """dump/load between the standby_joined and the promote (the incremental verifier)."""
    from duet.client.controller_log import ControllerLogReplay

    first = ControllerLogReplay(CID)
    for leaf in _log(_joined(A, B)):
        first.feed(leaf)
    resumed = ControllerLogReplay(CID)
    resumed.load(first.dump())
    resumed.feed(_promote(B).encode())
    assert resumed.problem_count == 0, resumed.problems
    resumed.feed(_promote(C).encode())
    assert resumed.problem_count == 1
