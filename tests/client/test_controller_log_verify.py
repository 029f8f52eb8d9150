"""`duet verify` checks the controller log as it checks a CVM log, takes the owner keys in
force for each CVM intent from it, and applies the user's `owner.keys` pin to it;
`duet verify --controller-log` checks it alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from evil_controller import EvilController, Recorded

from duet.client.controller_log import controller_log_checks, cvm_link_checks
from duet.client.expectations import load_expectations
from duet.client.verify import Report, verify, verify_controller_log
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from helpers import ControllerProc


def _expect(tmp: Path, owner_keys: list[str]) -> Any:
    path = tmp / "expect.yaml"
    path.write_text(yaml.safe_dump({"owner": {"keys": owner_keys}}))
    return load_expectations(path)


def _checks(report: Report) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in report.checks}


def test_verify_checks_the_controller_log_and_links_each_intent(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    new = keys.Ed25519PrivateKey.generate()
    owner.set_owner_keys([keys.public_b64(new.public_key())])
    controller.owner_key = new
    controller.owner().run(cvm, "echo under the new key", timeout_s=30)
    state = tmp_path / "user"
    with controller.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=state)
        assert report.ok, [c for c in report.checks if not c.ok]
        got = _checks(report)
        for name in ("controller_log_checkpoint_signature", "controller_log_log_root", "controller_log_consistency",
                     "controller_log_entries", "controller_log_link"):
            assert got[name][0], (name, got.get(name))
        alone = verify_controller_log(http, trust_simulated=True, state_dir=state)
    assert alone.ok, [c for c in alone.checks if not c.ok]
    assert alone.owner_keys == [keys.key_id(new.public_key())]
    assert "extends the checkpoint" in _checks(alone)["controller_log_consistency"][1] \
        or "same checkpoint" in _checks(alone)["controller_log_consistency"][1]
    cli = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", "--controller-log", "--trust-simulated",
                          "--controller", controller.url, "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_the_owner_pin_applies_to_the_controller_logs_key_changes(controller: ControllerProc,
                                                                   tmp_path: Path) -> None:
    """A key added to the controller log but never used on this CVM (so its log never
    mentions it) still fails the user's pin: the controller log is where keys change."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    real = keys.key_id(controller.owner_key.public_key())
    minted = keys.Ed25519PrivateKey.generate()
    owner.set_owner_keys([keys.public_b64(controller.owner_key.public_key()), keys.public_b64(minted.public_key())])
    expect = _expect(tmp_path, [real])
    with controller.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "u", expect=expect)
        alone = verify_controller_log(http, trust_simulated=True, state_dir=tmp_path / "u2", expect=expect)
    for r in (report, alone):
        ok, detail = _checks(r)["controller_log_owner_keys"]
        assert not ok and keys.key_id(minted.public_key())[:16] in detail
        assert not r.ok


def test_a_rolled_back_controller_log_fails(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    ctl = list(evil.logs["controller"])
    assert ctl, "the recorded controller has a controller log"
    other = keys.Ed25519PrivateKey.generate()
    ks = sorted([keys.public_b64(recorded.owner_key.public_key()), keys.public_b64(other.public_key())])
    intent = evil.sign_intent("owner.keys", {"keys": ks})
    change = {"v": 1, "type": "owner_keys", "keys": ks, "time": intent["time"]}
    evil.logs["controller"] = [*ctl, entries.encode(intent), entries.encode(change)]
    state = tmp_path / "u"
    with evil.http() as http:
        first, _ = verify(http, recorded.cvm, trust_simulated=True, state_dir=state)
    assert _checks(first)["controller_log_consistency"][0]
    evil.logs["controller"] = ctl  # the host restores the older ledger: the change is gone
    with evil.http() as http:
        again, _ = verify(http, recorded.cvm, trust_simulated=True, state_dir=state)
    ok, detail = _checks(again)["controller_log_consistency"]
    assert not ok and "rolled back" in detail
    assert not again.ok


CID = "a" * 64


def _intent(key: keys.Ed25519PrivateKey, op: str, args: dict[str, Any], cvm: str | None = None) -> dict[str, Any]:
    jws = sign_intent(key, op=op, aud=CID, args=args, cvm=cvm, iat=1_796_040_000)  # the entries' time
    return {"v": 1, "type": "intent", "jws": jws, "op": op, "kid": keys.key_id(key.public_key()),
            "time": "2026-11-30T12:00:00.000000Z"}


def _keys_entry(*ks: keys.Ed25519PrivateKey) -> dict[str, Any]:
    return {"v": 1, "type": "owner_keys", "keys": sorted(keys.public_b64(k.public_key()) for k in ks),
            "time": "2026-11-30T12:00:00.000000Z"}


def test_controller_log_rules() -> None:
    a, b, stranger = (keys.Ed25519PrivateKey.generate() for _ in range(3))
    honest = [_keys_entry(a), _intent(a, "owner.keys", {"keys": [keys.public_b64(b.public_key())]}), _keys_entry(b)]
    checks, ctl = controller_log_checks([entries.encode(e) for e in honest], controller_id=CID, expect=None)
    assert all(c.ok for c in checks), checks
    assert ctl.keys_at(1) == [keys.key_id(a.public_key())] and ctl.keys_at(3) == [keys.key_id(b.public_key())]
    # A key change signed by a stranger, and one with no intent at all, fail.
    claim = _intent(stranger, "owner.keys", {"keys": [keys.public_b64(stranger.public_key())]})
    forged = [*honest[:1], claim, _keys_entry(stranger)]
    checks, _ = controller_log_checks([entries.encode(e) for e in forged], controller_id=CID, expect=None)
    assert not checks[0].ok
    bare = [*honest[:1], _keys_entry(stranger)]
    checks, _ = controller_log_checks([entries.encode(e) for e in bare], controller_id=CID, expect=None)
    assert not checks[0].ok and "without an owner.keys intent" in checks[0].detail
    # A CVM intent signed by `a` but naming a controller-log size at which only `b` was
    # in force (i.e. after a revoked key's revocation) fails the link check.
    run = {**_intent(a, "cvm.run", {"command": "true"}, "c1"), "controller_log_size": 3}
    assert not cvm_link_checks([run], ctl)[0].ok
    assert cvm_link_checks([{**run, "controller_log_size": 1}], ctl)[0].ok
    assert not cvm_link_checks([{**run, "controller_log_size": 9}], ctl)[0].ok
