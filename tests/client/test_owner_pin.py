"""The owner is pinned by the user: a controller that mints its own owner key (at genesis
or through a later owner-key change) fails `owner_keys`; the report names the owner keys
in force; `duet log` shows op and kid from the verified JWS only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from evil_controller import EvilController, Recorded
from rich.console import Console

from duet.cli.render import render_report, render_timeline
from duet.client.errors import ClientError
from duet.client.expectations import load_expectations
from duet.client.owner_check import verified_intents
from duet.client.verify import Report, verify
from duet.ledger import entries, keys


def _expect(tmp: Path, owner_keys: list[str]) -> Any:
    path = tmp / "expect.yaml"
    path.write_text(yaml.safe_dump({"owner": {"keys": owner_keys}}))
    return load_expectations(path)


def _verify(evil: EvilController, cvm: str, state: Path, expect: Any) -> Report:
    with evil.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=state, expect=expect)
    return report


def _failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def test_the_real_owner_passes_by_key_id_or_public_key(evil: EvilController, recorded: Recorded,
                                                       tmp_path: Path) -> None:
    pub = recorded.owner_key.public_key()
    kid = keys.key_id(pub)
    for named in (kid, keys.public_b64(pub)):
        report = _verify(evil, recorded.cvm, tmp_path / named[:8], _expect(tmp_path, [named]))
        assert report.ok, _failed(report)
        assert report.owner_keys == [kid]
        assert any(c.name == "owner_keys" and c.ok for c in report.checks)
    out = io.StringIO()
    render_report(Console(file=out, width=300), report)
    assert f"owner keys in force: {kid}" in out.getvalue()


def test_a_genesis_owner_outside_the_pin_fails(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    someone_else = keys.key_id(keys.Ed25519PrivateKey.generate().public_key())
    report = _verify(evil, recorded.cvm, tmp_path, _expect(tmp_path, [someone_else]))
    assert "genesis names owner key" in _failed(report).get("owner_keys", ""), _failed(report)


def test_a_controller_minted_owner_key_change_fails(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    """The owner key change is even validly signed by the real owner (say, tricked into
    it): a key outside the user's pin still fails."""
    minted = keys.Ed25519PrivateKey.generate()
    new_keys = sorted([keys.public_b64(recorded.owner_key.public_key()), keys.public_b64(minted.public_key())])
    log = recorded.decoded()
    intent = evil.sign_intent("owner.keys", {"keys": new_keys})
    change = {"v": 1, "type": "owner_keys", "keys": new_keys, "time": intent["time"]}
    evil.logs[recorded.cvm] = [entries.encode(e) for e in [*log, intent, change]]
    report = _verify(evil, recorded.cvm, tmp_path, _expect(tmp_path, [keys.key_id(recorded.owner_key.public_key())]))
    failed = _failed(report)
    assert f"entry {len(log) + 1} (owner key change)" in failed.get("owner_keys", ""), failed
    assert sorted(report.owner_keys) == sorted(keys.key_id(keys.public_from_b64(k)) for k in new_keys)


def test_a_malformed_owner_pin_is_refused(tmp_path: Path) -> None:
    for bad in ({"keys": ["not-a-key"]}, {"keys": []}, {"key": ["ab" * 32]}, {"keys": ["AB" * 32]}):
        path = tmp_path / "e.yaml"
        path.write_text(yaml.safe_dump({"owner": bad}))
        with pytest.raises(ClientError) as info:
            load_expectations(path)
        assert info.value.code == "invalid_expectations"


def test_log_shows_op_and_kid_from_the_verified_jws(evil: EvilController, recorded: Recorded) -> None:
    log = recorded.decoded(recorded.marks["first_result"])
    i_run = max(i for i, e in enumerate(log) if e["type"] == "intent")
    log[i_run]["op"] = "cvm.delete"  # the entry's unchecked copies lie
    log[i_run]["kid"] = "f" * 64
    stranger = keys.Ed25519PrivateKey.generate()
    forged = evil.sign_intent("owner.keys", {"keys": [keys.public_b64(stranger.public_key())]}, key=stranger)
    forged["kid"] = keys.key_id(recorded.owner_key.public_key())  # claims to be the owner
    log.append(forged)
    signed = verified_intents(log)
    assert signed[i_run] is not None and signed[i_run].op == "cvm.run"
    assert signed[i_run].kid == keys.key_id(recorded.owner_key.public_key())
    assert signed[len(log) - 1] is None
    out = io.StringIO()
    render_timeline(Console(file=out, width=300), log, signed)
    text = out.getvalue()
    assert "cvm.delete" not in text and "ffffffffffff" not in text
    assert "cvm.run by " + keys.key_id(recorded.owner_key.public_key())[:12] in text
    assert "UNVERIFIED intent" in text
