"""The streaming replay (`duet verify`) judges a log exactly as the whole-log rules do
(`audit.py`, `cvm_checks.py`), and a replay saved half way and resumed reaches the same
verdict, word for word, as one that read the log in one go."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from duet.client.expectations import UserExpectations
from duet.client.replay import CvmReplay
from logbuilder import CVM_ID, all_checks

VECTORS = Path(__file__).resolve().parent / "vectors" / "audit"
FILES = sorted(VECTORS.glob("*.json"))


def _replay(v: dict[str, Any], now: datetime) -> CvmReplay:
    expect = UserExpectations.model_validate(v["expect"]) if v["expect"] else None
    return CvmReplay(v["controller_id"], v["controller_key"], CVM_ID, expect=expect,
                     trust_simulated=v["trust_simulated"], now=now)


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_streaming_replay_matches_the_whole_log_rules(path: Path) -> None:
    v = json.loads(path.read_text())
    leaves = [base64.b64decode(e) for e in v["entries"]]
    now = datetime.now(UTC)
    expect = UserExpectations.model_validate(v["expect"]) if v["expect"] else None
    whole = all_checks(leaves, controller_id=v["controller_id"], controller_key=v["controller_key"], expect=expect,
                       trust_simulated=v["trust_simulated"], now=now)
    replay = _replay(v, now)
    for leaf in leaves:
        replay.feed(leaf)
    streamed = {c.name: (c.ok, c.detail) for c in replay.finish(now).checks}
    assert {n: (c.ok, c.detail) for n, c in whole.items()} == {n: streamed[n] for n in whole}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_a_replay_saved_and_resumed_reaches_the_same_verdict(path: Path) -> None:
    v = json.loads(path.read_text())
    leaves = [base64.b64decode(e) for e in v["entries"]]
    now = datetime.now(UTC)
    one_go = _replay(v, now)
    for leaf in leaves:
        one_go.feed(leaf)
    expected = [c.to_json() for c in one_go.finish(now).checks]
    for cut in sorted({1, len(leaves) // 3, len(leaves) // 2, len(leaves) - 1}):
        first = _replay(v, now)
        for leaf in leaves[:cut]:
            first.feed(leaf)
        first.unlinked = False  # no controller log here; verify.py saves only linked replays
        resumed = _replay(v, now)
        resumed.load(json.loads(json.dumps(first.dump())))
        for leaf in leaves[cut:]:
            resumed.feed(leaf)
        assert [c.to_json() for c in resumed.finish(now).checks] == expected, cut


@pytest.mark.parametrize("field,value", [("intents_n", "7"), ("ev_latest_ok", 1), ("cp_last", [1]),
                                         ("nonces", {"seen": "not base64!", "copies": "", "newest": None}),
                                         ("cmd_p", [0]),
                                         ("ev_latest_leaf", base64.b64encode(b'{"v":1}').decode())])
def test_a_malformed_saved_replay_is_refused_not_used(field: str, value: Any) -> None:
    """Even a saved state that passed its MAC is checked field by field before use, and
    the newest evidence it names must verify again."""
    v = json.loads((VECTORS / "honest.json").read_text())
    now = datetime.now(UTC)
    replay = _replay(v, now)
    for e in v["entries"]:
        replay.feed(base64.b64decode(e))
    replay.unlinked = False
    data = json.loads(json.dumps(replay.dump()))
    assert data["ev_latest_ok"] is True
    data[field] = value
    with pytest.raises((ValueError, KeyError, TypeError)):
        _replay(v, now).load(data)
