"""What a verification holds does not grow with the log (issue 16), and nothing it forgets
opens a hole: an intent replayed long after its nonce was forgotten fails the logging-time
rule, one replayed within the window fails the nonce rule, a log whose times go back fails,
and old evidence logged again fails however far back it lies. The streaming replay and the
whole-log audit judge each of these logs alike."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from duet.attestation import SimulatedSnp
from duet.client.audit import MAX_OPEN_COMMANDS
from duet.client.controller_log import controller_log_checks
from duet.client.replay import ATTEST_WINDOW, CvmReplay
from duet.ledger import entries, keys
from duet.ledger.intent import LOG_DELAY_S, sign_intent
from logbuilder import CVM_ID, LogBuilder, all_checks

MINUTE = 60.0


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("snp"))


def _health(log: LogBuilder) -> int:
    log.advance(MINUTE)
    it = log.intent("cvm.action", {"name": "health"})
    log.command("uptime; df -h . | tail -n 1", it, action="health")
    return it


def _life(snp: SimulatedSnp, minutes: int) -> LogBuilder:
    """An honest life, then a health action every minute, all of it in the past."""
    log = LogBuilder(snp, offset=-(minutes + 240) * MINUTE)
    log.honest_life()
    for _ in range(minutes):
        _health(log)
    return log


def _relog(log: LogBuilder, index: int) -> int:
    return log.add("intent", **{k: v for k, v in log.entries[index].items() if k not in ("v", "type", "time")})


def _replayed(log: LogBuilder) -> tuple[CvmReplay, dict[str, tuple[bool, str]]]:
    """The streaming replay fed the log, and its verdict, which must be the audit's."""
    now = datetime.now(UTC)
    replay = CvmReplay(log.controller_id, log.controller_key, CVM_ID, trust_simulated=True, now=now)
    for leaf in log.leaves():
        replay.feed(leaf)
    streamed = {c.name: (c.ok, c.detail) for c in replay.finish(now).checks}
    whole = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key, now=now)
    assert {n: (c.ok, c.detail) for n, c in whole.items()} == {n: streamed[n] for n in whole}
    return replay, streamed


def _failed(verdict: dict[str, tuple[bool, str]]) -> dict[str, str]:
    return {n: d for n, (ok, d) in verdict.items() if not ok}


def test_an_intent_replayed_far_in_the_history_is_caught_by_its_iat(snp: SimulatedSnp) -> None:
    """Attack: the first health intent, signed by the owner, logged again verbatim (its
    command with it) five hours of log time later. The replay no longer remembers its
    nonce (it keeps only the last LOG_DELAY_S of intents), and still fails it."""
    log = _life(snp, 300)
    first = next(i for i, e in enumerate(log.entries) if e["type"] == "intent" and e["op"] == "cvm.action")
    log.advance(MINUTE)
    again = _relog(log, first)
    log.command("uptime; df -h . | tail -n 1", again, action="health")
    replay, verdict = _replayed(log)
    assert set(_failed(verdict)) == {"intents"}, _failed(verdict)
    assert f"entry {again}: intent logged" in verdict["intents"][1] and "after its iat" in verdict["intents"][1]
    # What the replay remembers is the window's intents, not the log's 300.
    assert len(replay.nonces.seen) <= 2 * LOG_DELAY_S / MINUTE + 64 < 300


def test_an_intent_replayed_within_the_window_is_caught_by_its_nonce(snp: SimulatedSnp) -> None:
    log = _life(snp, 100)
    last = _health(log)
    log.advance(MINUTE)
    again = _relog(log, last)
    log.command("uptime; df -h . | tail -n 1", again, action="health")
    _, verdict = _replayed(log)
    assert _failed(verdict) == {"intents": f"entry {again}: intent nonce reused (replay)"}


def test_a_log_whose_entry_times_go_back_fails(snp: SimulatedSnp) -> None:
    """The window rule leans on entry times never going back: a log where they do fails
    `entry_times`. Here the attack that needs it: an intent replayed an hour later, its
    entry dated back to the original's time, so that its iat passes the window while its
    nonce is no longer remembered. Only `entry_times` catches it, and that is enough."""
    log = _life(snp, 60)
    first = next(i for i, e in enumerate(log.entries) if e["type"] == "intent" and e["op"] == "cvm.action")
    log.advance(-60 * MINUTE)
    log.command("uptime; df -h . | tail -n 1", _relog(log, first), action="health")
    _, verdict = _replayed(log)
    assert set(_failed(verdict)) == {"entry_times"}, _failed(verdict)
    assert "before entry" in verdict["entry_times"][1]


def test_old_evidence_logged_again_far_in_the_history_is_caught(snp: SimulatedSnp) -> None:
    """Attack: the provisioning report logged again as fresh evidence after more attest
    commands than the replay keeps. Its nonce commits to the create intent, not to the
    intent the new attest command runs under."""
    log = _life(snp, 10)
    for _ in range(ATTEST_WINDOW + 3):
        log.advance(MINUTE)
        log.evidence("attest", log.intent("cvm.action", {"name": "attest"}))
    old = next(e for e in log.entries if e["type"] == "evidence")
    log.advance(MINUTE)
    it = log.intent("cvm.action", {"name": "attest"})
    ci = log.command(f"collect-evidence {old['nonce']}", it, action="attest", builtin=True)
    index = log.add("evidence", **{**{k: v for k, v in old.items() if k not in ("v", "type", "time")},
                                   "purpose": "attest", "command_index": ci})
    replay, verdict = _replayed(log)
    assert set(_failed(verdict)) == {"evidence"}, _failed(verdict)
    assert f"entry {index}: evidence nonce names intent 1, but its attest command runs under {it}" \
        in verdict["evidence"][1]
    assert len(replay.ev_nonces) <= ATTEST_WINDOW


def test_a_log_that_keeps_commands_open_is_judged_without_holding_them(snp: SimulatedSnp) -> None:
    log = _life(snp, 1)
    opened = [log.command("sleep 1", log.intent("cvm.run", {"command": "sleep 1"}), result=False)
              for _ in range(MAX_OPEN_COMMANDS + 2)]
    replay, verdict = _replayed(log)
    assert f"entry {opened[MAX_OPEN_COMMANDS]}: more than {MAX_OPEN_COMMANDS} commands open at once" \
        in verdict["commands_closed"][1]
    assert len(replay.open_commands) == MAX_OPEN_COMMANDS


def test_the_saved_state_does_not_grow_with_the_log(snp: SimulatedSnp) -> None:
    """The replay's saved state (what the verification cache holds, and a fair picture of
    its memory) after 100 and after 1,000 minutes of health actions: about the same size
    (the nonce window is pruned when it doubles, so it varies by a few KiB), where one
    digest per intent would add 900 of them."""
    sizes = []
    for minutes in (100, 1000):
        replay, verdict = _replayed(_life(snp, minutes))
        assert not _failed(verdict), _failed(verdict)
        replay.unlinked = False
        sizes.append(len(json.dumps(replay.dump())))
    assert abs(sizes[1] - sizes[0]) < 8192, sizes


def test_a_saved_cvm_replay_with_a_malformed_previous_time_is_refused(snp: SimulatedSnp) -> None:
    """As for the controller log (below): a saved CVM replay whose previous entry time is
    not an entry time is refused when it is loaded, not at the next entry it is fed."""
    log = LogBuilder(snp, offset=-240 * MINUTE)
    log.honest_life()
    replay, _ = _replayed(log)
    replay.unlinked = False  # as test_the_saved_state_does_not_grow_with_the_log
    saved = json.loads(json.dumps(replay.dump()))
    fresh = CvmReplay(log.controller_id, log.controller_key, CVM_ID, trust_simulated=True)
    fresh.load(saved)
    for bad in ("9999", "2000-01-01T00:00:00.0Z", "2000-13-01T00:00:00.000000Z", 7):
        with pytest.raises((ValueError, TypeError)):
            CvmReplay(log.controller_id, log.controller_key, CVM_ID, trust_simulated=True).load(
                {**saved, "time_prev": bad})


# -- the controller log ----------------------------------------------------------------

CID = "cd" * 32
OWNER = keys.Ed25519PrivateKey.generate()


def _ctl_entry(e: dict[str, Any], when: float) -> bytes:
    return entries.encode({"v": 1, **e, "time": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def _ctl_verdict(leaves: list[bytes]) -> tuple[bool, str]:
    checks, _ = controller_log_checks(leaves, controller_id=CID, expect=None)
    (c,) = [c for c in checks if c.name == "controller_log_entries"]
    return c.ok, c.detail


def _witnesses_set(jws: str, when: float) -> list[bytes]:
    args = {"witnesses": [], "quorum": 0}
    return [_ctl_entry({"type": "intent", "jws": jws, "op": "witnesses.set", "kid": keys.key_id(OWNER.public_key())},
                       when),
            _ctl_entry({"type": "witnesses", **args}, when)]


def test_the_controller_log_bounds_its_nonces_the_same_way() -> None:
    t0 = datetime.now(UTC).timestamp() - 4 * LOG_DELAY_S
    jws = sign_intent(OWNER, op="witnesses.set", aud=CID, args={"witnesses": [], "quorum": 0}, iat=int(t0))
    claim = [_ctl_entry({"type": "owner_keys", "keys": [keys.public_b64(OWNER.public_key())]}, t0)]
    honest = claim + _witnesses_set(jws, t0)
    assert _ctl_verdict(honest) == (True, _ctl_verdict(honest)[1])
    ok, detail = _ctl_verdict(honest + _witnesses_set(jws, t0 + 60))
    assert not ok and "entry 3: intent nonce reused (replay)" in detail
    ok, detail = _ctl_verdict(honest + _witnesses_set(jws, t0 + LOG_DELAY_S + 60))
    assert not ok and "entry 3: intent logged" in detail and "after its iat" in detail
    ok, detail = _ctl_verdict([*honest, _ctl_entry({"type": "heads", "heads": []}, t0 - 60)])
    assert not ok and "entry 3 is dated" in detail and "before entry 2" in detail


def test_the_controller_refuses_to_log_an_intent_outside_its_window(tmp_path: Path) -> None:
    """The controller enforces the rule verifiers check: an intent that waited longer than
    LOG_DELAY_S (for its CVM's lock) is refused when it would be logged, and nothing is
    written; an owner-key change copied into a CVM log is not judged by its age."""
    from duet.controller.serve import build_controller
    from duet.ledger.intent import StaleIntent

    ctl = build_controller(tmp_path / "data")
    try:
        now = entries.now_rfc3339()
        t = datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp()
        for iat, refused in ((t - LOG_DELAY_S - 30, True), (t + 300, True), (t - 60, False)):
            jws = sign_intent(OWNER, op="cvm.run", aud=ctl.controller_id, cvm="c1", args={"command": "id"},
                              iat=int(iat))
            item = entries.IntentEntry(jws=jws, op="cvm.run", kid=keys.key_id(OWNER.public_key()))
            if refused:
                with pytest.raises(StaleIntent):
                    ctl._check_logged_times([item], now, copies=True)
            else:
                ctl._check_logged_times([item], now, copies=True)
        old = sign_intent(OWNER, op="owner.keys", aud=ctl.controller_id, iat=int(t - 86400),
                          args={"keys": [keys.public_b64(OWNER.public_key())]})
        copy = entries.IntentEntry(jws=old, op="owner.keys", kid=keys.key_id(OWNER.public_key()))
        ctl._check_logged_times([copy], now, copies=True)
        with pytest.raises(StaleIntent):
            ctl._check_logged_times([copy], now, copies=False)  # in the controller log it is judged
    finally:
        ctl.close()


def test_evidence_nonces_commit_to_their_intent() -> None:
    from duet.ledger import evidence_nonce

    nonce = evidence_nonce.make(1234)
    assert len(nonce) == 32 and evidence_nonce.intent_of(nonce.hex()) == 1234
    assert evidence_nonce.problem(nonce.hex(), 1234) is None
    assert "names intent 1234, but its attest command runs under 99" in str(evidence_nonce.problem(nonce.hex(), 99))
    assert evidence_nonce.problem(base64.b16encode(b"x" * 16).decode(), 1) is not None  # not 32 bytes of hex


def test_the_controller_log_keeps_the_newest_heads_and_fails_closed_beyond() -> None:
    """A CVM whose head moved HEADS_KEPT + 6 times: the replay keeps the newest HEADS_KEPT
    heads (each still checked against the one before it) and the size of the newest one it
    dropped. A user whose CVM size only a dropped head covers gets a failing witness check,
    never a guess."""
    from duet.client.controller_log import HEADS_KEPT, ControllerLogReplay
    from duet.client.witness_check import WitnessPolicy, witness_check
    from duet.ledger import merkle
    from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
    from duet.ledger.cosignature import Cosigner
    from duet.ledger.note import Signer, parse_note

    hashes = [merkle.leaf_hash(b"leaf %d" % k) for k in range(HEADS_KEPT + 7)]
    replay = ControllerLogReplay(CID)
    t = datetime.now(UTC).timestamp() - 3600
    replay.feed(_ctl_entry({"type": "owner_keys", "keys": [keys.public_b64(OWNER.public_key())]}, t))
    for size in range(1, HEADS_KEPT + 7):
        proof = merkle.consistency_proof(hashes, size - 1, size) if size > 1 else []
        replay.feed(_ctl_entry({"type": "heads", "heads": [{
            "cvm": "c1", "size": size, "root": base64.b64encode(merkle.root(hashes[:size])).decode(),
            "consistency": [base64.b64encode(h).decode() for h in proof]}]}, t))
    assert replay.checks(None)[0].ok, replay.checks(None)[0].detail
    assert len(replay.log.heads["c1"]) == HEADS_KEPT and replay.log.heads_dropped["c1"] == 6
    # A controller-log checkpoint of the whole log, signed (here by OWNER's key standing for
    # the controller's) and cosigned by the user's witness; its root is taken as the log's
    # (prefix_root), since only the heads rule is under test here.
    replay.log.prefix_root = lambda size, root: True
    w = Cosigner("witness.test/w", keys.Ed25519PrivateKey.generate())
    cp = Checkpoint(f"duet/{CID}/controller", replay.size, b"\x01" * 32)
    note = sign_checkpoint(cp, Signer(f"duet/{CID}", OWNER))
    body, _ = parse_note(note)
    note += w.cosign(body, int(datetime.now(UTC).timestamp())).line()

    def judged(n: int) -> Any:
        return witness_check({"controller_checkpoint": note, "heads_index": n, "consistency": []}, cvm="c1",
                             controller_id=CID, controller_key=OWNER.public_key(), size=n,
                             root=merkle.root(hashes[:n]), ctl=replay.log, policy=WitnessPolicy.parse([w.vkey()], 1),
                             now=datetime.now(UTC))

    old = judged(5)
    assert not old.ok and f"older than the newest {HEADS_KEPT}" in old.detail, old.detail
    new = judged(HEADS_KEPT + 6)  # the newest head: heads entry HEADS_KEPT + 6 commits it
    assert new.ok, new.detail


def test_a_saved_controller_log_replay_with_a_malformed_previous_time_is_refused() -> None:
    """Entry times are compared as fixed-width strings: a saved replay whose previous time
    is not one (which would compare wrongly, and let a log's time go back unnoticed) is
    refused when it is loaded, never resumed."""
    from duet.client.controller_log import ControllerLogReplay

    t0 = datetime.now(UTC).timestamp() - 60
    replay = ControllerLogReplay(CID)
    replay.feed(_ctl_entry({"type": "owner_keys", "keys": [keys.public_b64(OWNER.public_key())]}, t0))
    saved = json.loads(json.dumps(replay.dump()))
    ControllerLogReplay(CID).load(saved)
    for bad in ("9999", "2000-01-01T00:00:00.0Z", "2000-13-01T00:00:00.000000Z", "Z" * 27, 7):
        with pytest.raises((ValueError, TypeError)):
            ControllerLogReplay(CID).load({**saved, "time_prev": bad})
