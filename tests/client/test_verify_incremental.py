"""Incremental verification against a malicious controller and a tampered state dir: a
second verify fetches only the new entries, `--full` fetches all of them again, a cache
that was changed in any way is never trusted (the log is verified from its first entry,
with the right verdict), the rollback anchor outlives a deleted cache, and other
expectations never reuse a replay made under different ones."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from evil_controller import EvilController, Recorded

from duet.client.expectations import UserExpectations, load_expectations
from duet.client.verify import CheckpointMemory, Report, verify


def _failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


class Counter:
    """Serves the entry pages itself and counts the CVM entries it sends."""

    def __init__(self, evil: EvilController) -> None:
        self.evil = evil
        self.cvm_entries = 0
        self.ctl_entries = 0
        evil.hooks["/entries"] = self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ctl = request.url.path.startswith("/v1/controller/log/")
        leaves = self.evil.logs["controller" if ctl else request.url.path.split("/")[3]]
        start, end = int(request.url.params["start"]), int(request.url.params["end"])
        stop = min(end, len(leaves), start + 7)  # small pages: several requests per run
        if ctl:
            self.ctl_entries += stop - start
        else:
            self.cvm_entries += stop - start
        return httpx.Response(200, json={"entries": [
            {"index": i, "leaf": base64.b64encode(leaves[i]).decode()} for i in range(start, stop)]})

    def reset(self) -> None:
        self.cvm_entries = self.ctl_entries = 0


def _run(evil: EvilController, state: Path, **kw: Any) -> Report:
    with evil.http() as http:
        report, _ = verify(http, evil.rec.cvm, trust_simulated=True, state_dir=state, **kw)
    return report


def _expect(tmp: Path, patterns: list[str]) -> UserExpectations:
    path = tmp / "expect.yaml"
    path.write_text(yaml.safe_dump({"history": {"allowed_commands": patterns}}))
    return load_expectations(path)


def _cache_files(state: Path) -> list[Path]:
    return sorted((state / "verify-cache").iterdir())


def _cvm_cache(state: Path, origin: str) -> Path:
    for path in _cache_files(state):
        body = path.read_bytes().partition(b"\n")[2]
        if json.loads(body)["origin"] == origin:
            return path
    raise AssertionError(f"no cache for {origin}")


def test_second_verify_fetches_only_new_entries_and_full_fetches_all(evil: EvilController, recorded: Recorded,
                                                                     tmp_path: Path) -> None:
    state, cvm = tmp_path / "user", recorded.cvm
    counter = Counter(evil)
    n, honest = len(recorded.leaves), recorded.marks["honest"]
    evil.logs[cvm] = recorded.leaves[:honest]
    first = _run(evil, state)
    assert first.ok, _failed(first)
    assert counter.cvm_entries == honest and counter.ctl_entries == len(recorded.controller_leaves)

    counter.reset()
    evil.logs[cvm] = list(recorded.leaves)  # the rest of the life is new
    second = _run(evil, state)
    assert second.ok, _failed(second)
    assert counter.cvm_entries == n - honest, counter.cvm_entries
    assert counter.ctl_entries == 0  # the controller log did not change
    assert second.checkpoint["fetched"] == n - honest
    assert f"{n - honest} fetched now" in {c.name: c.detail for c in second.checks}["log_root"]
    # the verdict of the incremental run is the full run's, check for check
    counter.reset()
    again = _run(evil, tmp_path / "fresh")
    assert counter.cvm_entries == n
    assert [(c.name, c.ok) for c in sorted(again.checks, key=lambda c: c.name)] == \
        [(c.name, c.ok) for c in sorted(second.checks, key=lambda c: c.name)]

    counter.reset()
    nothing_new = _run(evil, state)
    assert nothing_new.ok and counter.cvm_entries == 0

    counter.reset()
    full = _run(evil, state, full=True)
    assert full.ok and counter.cvm_entries == n and counter.ctl_entries == len(recorded.controller_leaves)


def test_a_new_violation_and_an_old_one_are_both_reported_incrementally(evil: EvilController, recorded: Recorded,
                                                                       tmp_path: Path) -> None:
    state, cvm = tmp_path / "user", recorded.cvm
    expect = _expect(tmp_path, [r"^echo [a-z0-9 ]+$"])
    counter = Counter(evil)
    evil.logs[cvm] = recorded.leaves[: recorded.marks["honest"]]
    assert _run(evil, state, expect=expect).ok
    evil.logs[cvm] = recorded.leaves[: recorded.marks["outside_command"] + 1]  # `id -u`: outside the list
    counter.reset()
    second = _run(evil, state, expect=expect)
    assert "id -u" in _failed(second).get("history", ""), _failed(second)
    assert counter.cvm_entries == recorded.marks["outside_command"] + 1 - recorded.marks["honest"]
    evil.logs[cvm] = list(recorded.leaves)
    counter.reset()
    third = _run(evil, state, expect=expect)  # the violation is old now, and still reported
    assert "id -u" in _failed(third).get("history", ""), _failed(third)
    assert counter.cvm_entries == len(recorded.leaves) - recorded.marks["outside_command"] - 1


def _tamper_flip_replay(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"hist_owner_p":[') + len(b'"hist_owner_p":[')
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))


def _tamper_edit(key: str, value: Any) -> Any:
    def edit(path: Path) -> None:
        head, _, body = path.read_bytes().partition(b"\n")
        data = json.loads(body)
        data[key] = value(data) if callable(value) else value
        path.write_bytes(head + b"\n" + json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    return edit


@pytest.mark.parametrize("tamper", [
    _tamper_flip_replay,
    _tamper_edit("size", lambda d: d["size"] - 1),
    _tamper_edit("root", base64.b64encode(b"\x01" * 32).decode()),
    lambda path: path.write_bytes(path.read_bytes()[:-40]),
], ids=["flipped_replay_byte", "changed_size", "swapped_root", "truncated"])
def test_a_tampered_cache_is_not_trusted(evil: EvilController, recorded: Recorded, tmp_path: Path,
                                         tamper: Any) -> None:
    """The log fails the user's allow-list (`id -u`); the attacker edits the saved replay so
    that the next run would start from a state without that violation. The MAC fails, the
    run starts over from the first entry and fails the allow-list again."""
    state, cvm = tmp_path / "user", recorded.cvm
    expect = _expect(tmp_path, [r"^echo [a-z0-9 ]+$"])
    counter = Counter(evil)
    n = len(recorded.leaves)
    evil.logs[cvm] = recorded.leaves[: recorded.marks["outside_command"] + 1]
    assert set(_failed(_run(evil, state, expect=expect))) == {"history", "commands_closed"}
    tamper(_cvm_cache(state, f"duet/{evil.cid}/{cvm}"))
    evil.logs[cvm] = list(recorded.leaves)
    counter.reset()
    report = _run(evil, state, expect=expect)
    assert set(_failed(report)) == {"history"}, _failed(report)
    assert counter.cvm_entries == n  # verified from the first entry
    assert any("verification cache" in w and "not used" in w for w in report.warnings), report.warnings
    # and the rebuilt cache is good again
    counter.reset()
    assert set(_failed(_run(evil, state, expect=expect))) == {"history"}
    assert counter.cvm_entries == 0


def test_a_cache_forged_with_the_key_but_not_at_the_anchor_is_not_used(evil: EvilController, recorded: Recorded,
                                                                       tmp_path: Path) -> None:
    """Even a cache with a valid MAC must sit exactly at the remembered checkpoint: one
    copied from a user who verified a shorter prefix (same slot, same key) is refused."""
    state, other, cvm = tmp_path / "user", tmp_path / "other", recorded.cvm
    counter = Counter(evil)
    n = len(recorded.leaves)
    evil.logs[cvm] = recorded.leaves[: recorded.marks["honest"]]
    assert _run(evil, other).ok
    evil.logs[cvm] = list(recorded.leaves)
    assert _run(evil, state).ok
    shutil.copy(other / "verify-cache.key", state / "verify-cache.key")
    path = _cvm_cache(other, f"duet/{evil.cid}/{cvm}")
    shutil.copy(path, state / "verify-cache" / path.name)
    counter.reset()
    assert _run(evil, state).ok
    assert counter.cvm_entries == n


def test_a_rolled_back_server_is_refused_with_or_without_the_cache(evil: EvilController, recorded: Recorded,
                                                                  tmp_path: Path) -> None:
    state, cvm = tmp_path / "user", recorded.cvm
    assert _run(evil, state).ok
    anchor = CheckpointMemory(state).get(f"duet/{evil.cid}/{cvm}")
    evil.logs[cvm] = recorded.leaves[: recorded.marks["honest"]]  # the host restores an old data dir
    assert "rolled back" in _failed(_run(evil, state)).get("consistency", "")
    shutil.rmtree(state / "verify-cache")
    (state / "verify-cache.key").unlink()
    refused = _run(evil, state)
    assert "rolled back" in _failed(refused).get("consistency", ""), _failed(refused)
    assert refused.checkpoint.get("fetched", 0) >= 0
    assert CheckpointMemory(state).get(f"duet/{evil.cid}/{cvm}") == anchor  # never rebuilt from the server
    # a fork at the anchor's size is named a fork, cache or not
    evil.logs[cvm] = list(recorded.leaves)
    assert _run(evil, state).ok
    forked = list(recorded.leaves)
    forked[-1], forked[-2] = forked[-2], forked[-1]
    evil.logs[cvm] = forked
    assert "fork" in _failed(_run(evil, state)).get("consistency", "")


def test_other_expectations_do_not_reuse_the_replay(evil: EvilController, recorded: Recorded,
                                                   tmp_path: Path) -> None:
    """A replay made without an allow-list says nothing about one: `id -u`, long verified,
    must fail the new allow-list, which reads the whole history again."""
    state = tmp_path / "user"
    counter = Counter(evil)
    assert _run(evil, state).ok
    counter.reset()
    report = _run(evil, state, expect=_expect(tmp_path, [r"^echo [a-z0-9 ]+$"]))
    assert "id -u" in _failed(report).get("history", ""), _failed(report)
    assert counter.cvm_entries == len(recorded.leaves)
    counter.reset()
    assert _run(evil, state).ok and counter.cvm_entries == 0  # the first slot is still there
