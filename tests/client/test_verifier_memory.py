"""The user's memory against a hostile host and a malicious controller: the anchor
advances to everything verified (not only to what passed), it survives concurrent
verifies, and another controller key for a remembered CVM is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from evil_controller import EvilController, Recorded

from duet.client.expectations import load_expectations
from duet.client.verify import CheckpointMemory, Report, verify
from duet.ledger import keys


def _failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def _expect(tmp: Path) -> Path:
    path = tmp / "expect.yaml"
    path.write_text(yaml.safe_dump({"history": {"allowed_commands": [r"^echo [a-z0-9 ]+$"]}}))
    return path


def _run(evil: EvilController, cvm: str, state: Path, **kw: object) -> Report:
    with evil.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=state, **kw)  # type: ignore[arg-type]
    return report


def test_host_rollback_after_a_failed_verify_is_detected(evil: EvilController, recorded: Recorded,
                                                         tmp_path: Path) -> None:
    """The owner runs a command outside the user's allowed list: that verify fails on
    the expectations, but the log it saw is remembered; the host then restores the old
    data dir (the log as it was before), and the next verify must call it a rollback."""
    cvm, state = recorded.cvm, tmp_path / "user"
    expect = load_expectations(_expect(tmp_path))
    honest = recorded.leaves[: recorded.marks["honest"]]
    evil.logs[cvm] = honest
    first = _run(evil, cvm, state, expect=expect)
    assert first.ok, _failed(first)

    evil.logs[cvm] = list(recorded.leaves)  # the outside command is in the log now
    second = _run(evil, cvm, state, expect=expect)
    assert set(_failed(second)) == {"history"}, _failed(second)
    assert CheckpointMemory(state).get(f"duet/{evil.cid}/{cvm}")[0] == len(recorded.leaves)  # type: ignore[index]

    evil.logs[cvm] = honest  # the host restores the old data dir
    third = _run(evil, cvm, state, expect=expect)
    assert not third.ok
    assert "rolled back" in _failed(third).get("consistency", ""), _failed(third)


def test_a_fork_after_a_failed_verify_is_detected(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    cvm, state = recorded.cvm, tmp_path / "user"
    expect = load_expectations(_expect(tmp_path))
    assert not _run(evil, cvm, state, expect=expect).ok  # fails history, but is remembered
    forked = list(recorded.leaves)
    forked[-1], forked[-2] = forked[-2], forked[-1]  # same size, other root
    evil.logs[cvm] = forked
    report = _run(evil, cvm, state, expect=expect)
    assert "fork" in _failed(report).get("consistency", ""), _failed(report)


def test_concurrent_verifies_on_one_state_dir_lose_no_anchor(evil: EvilController, recorded: Recorded,
                                                              tmp_path: Path) -> None:
    """Threads verify the same log at different sizes on one state dir; afterwards the
    anchor is the largest size any of them verified, and no run crashed."""
    cvm, state = recorded.cvm, tmp_path / "user"
    sizes = [recorded.marks["honest"], recorded.marks["outside_command"], len(recorded.leaves)]
    errors: list[BaseException] = []
    seen: list[int] = []

    def worker(n: int) -> None:
        double = EvilController(recorded, key=evil.key)
        for k in range(3):
            size = sizes[(n + k) % len(sizes)]
            double.logs[cvm] = recorded.leaves[:size]
            try:
                report = _run(double, cvm, state)
            except BaseException as exc:
                errors.append(exc)
                return
            if {c.name: c.ok for c in report.checks}.get("consistency"):
                seen.append(size)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    anchor = CheckpointMemory(state).get(f"duet/{evil.cid}/{cvm}")
    assert anchor is not None and anchor[0] == max(seen), (anchor, seen)
    assert sorted(p.name for p in state.iterdir() if p.name.endswith(".tmp")) == []
    # a smaller log is still a rollback for this state dir
    evil.logs[cvm] = recorded.leaves[: sizes[0]]
    if max(seen) > sizes[0]:
        assert "rolled back" in _failed(_run(evil, cvm, state)).get("consistency", "")


def test_another_controller_key_for_a_remembered_cvm_is_refused(evil: EvilController, recorded: Recorded,
                                                                tmp_path: Path) -> None:
    cvm, state = recorded.cvm, tmp_path / "user"
    assert _run(evil, cvm, state).ok
    # Same URL, same CVM id, another (freshly made) controller key: a new "controller"
    # that would otherwise start over from "first verification".
    other = EvilController(recorded, key=keys.Ed25519PrivateKey.generate())
    refused = _run(other, cvm, state)
    assert not refused.ok
    assert "--accept-new-controller" in _failed(refused).get("controller_identity", ""), _failed(refused)
    accepted = _run(other, cvm, state, accept_new_controller=True)
    assert all(c.ok for c in accepted.checks if c.name == "controller_identity"), _failed(accepted)
    assert any("accepted by --accept-new-controller" in c.detail for c in accepted.checks)
    # the old controller's anchor is not forgotten
    assert CheckpointMemory(state).get(f"duet/{evil.cid}/{cvm}") is not None


def test_state_dir_also_holds_the_ratls_pins(tmp_path: Path) -> None:
    from duet.client.http import Http

    with Http("https://127.0.0.1:1", state_dir=tmp_path / "mine", trust_simulated=False) as http:
        assert http.ratls is not None and http.ratls.pins is not None
        assert http.ratls.pins.path == tmp_path / "mine" / "ratls-pins.json"


@pytest.mark.parametrize("content", ["{", "[]", '{"logs": 5}'])
def test_damaged_memory_is_a_typed_error_not_a_reset(evil: EvilController, recorded: Recorded, tmp_path: Path,
                                                     content: str) -> None:
    from duet.client.errors import ClientError

    state = tmp_path / "user"
    state.mkdir()
    (state / "checkpoints.json").write_text(content)
    with pytest.raises(ClientError) as info:
        _run(evil, recorded.cvm, state)
    assert info.value.code == "state_corrupt"


def test_concurrent_cli_verifies_in_separate_processes(evil: EvilController, recorded: Recorded,
                                                        tmp_path: Path) -> None:
    """The review's setting: several `duet verify` processes on one state dir (bundles of
    different sizes of the same log, started together). None crashes, and the anchor ends
    at the largest size."""
    import subprocess
    import sys

    from duet.client.bundle import export_bundle

    sizes = [recorded.marks["honest"], len(recorded.leaves)]
    bundles = []
    for size in sizes:
        evil.logs[recorded.cvm] = recorded.leaves[:size]
        path = tmp_path / f"b{size}.json"
        with evil.http() as http:
            path.write_bytes(export_bundle(http, recorded.cvm))
        bundles.append(path)
    state = tmp_path / "user"
    procs = [subprocess.Popen([sys.executable, "-m", "duet.cli.main", "verify", "--bundle", str(bundles[n % 2]),
                               "--trust-simulated", "--state-dir", str(state)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(6)]
    results = [(p.wait(timeout=300), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "")
               for p in procs]
    for rc, out, err in results:
        assert rc in (0, 3), (rc, out, err)  # verified, or refused as a rollback: never a crash
        assert "Traceback" not in err and "error [" not in err, err
    anchor = CheckpointMemory(state).get(f"duet/{evil.cid}/{recorded.cvm}")
    assert anchor is not None and anchor[0] == sizes[1]
