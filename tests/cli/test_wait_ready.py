"""`duet cvm create --no-wait` returns as soon as the CVM is logged (status
`provisioning`), provisioning goes on in the controller, and `duet cvm wait ID --for
ready` follows it to `ready`, showing each step the log records; a CVM that can never be
ready, or is not in time, ends the wait with one line and a non-zero status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from duet.cli.wait_ready import describe, wait_ready
from duet.client.errors import ClientError
from duet.ledger import entries, keys
from helpers import ControllerProc


def _duet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["duet", *args], capture_output=True, text=True, env=env, timeout=180)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def env(controller: ControllerProc, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    key.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    return {**base, "PATH": f"{Path(sys.executable).parent}:{base.get('PATH', '')}", "DUET_CONTROLLER": controller.url,
            "DUET_OWNER_KEY": str(key), "DUET_STATE_DIR": str(tmp_path / "state"),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "NO_COLOR": "1"}


def test_create_no_wait_then_wait_for_ready(controller: ControllerProc, env: dict[str, str]) -> None:
    made = _duet(env, "cvm", "create", "--name", "later", "--no-wait", "-o", "json")
    assert made.returncode == 0, made.stderr
    cvm = json.loads(made.stdout)
    # Answered before provisioning: no host yet, and the status to poll.
    assert cvm["status"] == "provisioning" and cvm["mode"] == "provisioning" and cvm["host_key"] is None
    assert f"duet cvm wait {cvm['id']} --for ready" in made.stderr
    waited = _duet(env, "cvm", "wait", "later", "--for", "ready", "--timeout", "2m")
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == ""
    steps = waited.stderr
    for step in ("provisioned:", "lockdown (provisioning): passed", "evidence (", "mode: provisioning -> in-update",
                 f"CVM {cvm['id']} is ready"):
        assert step in steps, steps
    assert steps.index("provisioned:") < steps.index("lockdown") < steps.index("mode: provisioning")
    with controller.http() as http:
        assert http.get_json(f"/v1/cvms/{cvm['id']}")["status"] == "ready"
    # Ready means commands are accepted.
    assert _duet(env, "cvm", "run", "later", "--", "echo", "up").stdout == "up\n"
    # Waiting for a ready CVM returns at once; -o id of a no-wait create prints only the id.
    assert _duet(env, "cvm", "wait", cvm["id"], "--for", "ready").returncode == 0
    only = _duet(env, "cvm", "create", "--no-wait", "-o", "id")
    assert only.returncode == 0 and len(only.stdout.strip()) == 16 and only.stdout.count("\n") == 1
    assert _duet(env, "cvm", "wait", only.stdout.strip(), "--for", "ready").returncode == 0
    # A refused --no-wait create prints nothing on stdout and fails (before any CVM exists).
    for bad in (("--provider", "nowhere"), ("--name", "later")):
        r = _duet(env, "cvm", "create", *bad, "--no-wait", "-o", "id")
        assert r.returncode != 0 and r.stdout == "" and r.stderr.startswith("error ["), r.stderr


def test_wait_usage_errors(controller: ControllerProc, env: dict[str, str]) -> None:
    cvm = controller.owner().create("local")["id"]
    for args in (("--for", "running"), ("3", "--for", "ready"), (), ("3", "--timeout", "5s")):
        r = _duet(env, "cvm", "wait", cvm, *args)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error [invalid_request]"), r.stderr
    r = _duet(env, "cvm", "wait", "nosuch", "--for", "ready")
    assert (r.returncode, r.stderr.count("\n")) == (1, 1) and r.stderr.startswith("error [unknown_cvm]")


class FakeApi:
    """A controller whose CVM goes through `statuses`, one per poll, logging `log`."""

    def __init__(self, statuses: list[str], log: list[entries.Entry], reason: str | None = None) -> None:
        self.statuses, self.log, self.reason = statuses, [e.encode() for e in log], reason
        self.polls = 0

    def cvm(self, cvm: str) -> dict[str, Any]:
        status = self.statuses[min(self.polls, len(self.statuses) - 1)]
        self.polls += 1
        return {"id": cvm, "status": status, "mode": "x", "tree_size": min(self.polls, len(self.log)),
                "reason": self.reason}

    def pages(self, cvm: str, start: int, end: int) -> Any:
        yield self.log[start:end]


def _log() -> list[entries.Entry]:
    return [entries.ErrorEntry(code="provisioning_failed", message="sshd did not start\x1b[8m"),
            entries.ModeEntry(mode="in-update", previous="provisioning")]


def test_a_failed_cvm_ends_the_wait_with_its_reason() -> None:
    said: list[str] = []
    api = FakeApi(["provisioning", "failed"], _log(), reason="provisioning failed: sshd did not start")
    with pytest.raises(ClientError) as exc:
        wait_ready(api, "ab" * 8, timeout_s=None, say=said.append, poll_s=0)  # type: ignore[arg-type]
    assert exc.value.code == "cvm_failed" and "sshd did not start" in exc.value.message
    # Logged text is shown escaped (a CVM-controlled message cannot hide what follows).
    assert said and "\x1b" not in said[0] and "\\x1b" in said[0]


def test_a_wait_gives_up_at_its_timeout() -> None:
    api = FakeApi(["provisioning"], _log())
    with pytest.raises(ClientError) as exc:
        wait_ready(api, "ab" * 8, timeout_s=0.05, say=lambda _: None, poll_s=0.01)  # type: ignore[arg-type]
    assert exc.value.code == "wait_timeout" and "still provisioning" in exc.value.message
    ready = FakeApi(["provisioning", "provisioning", "ready"], _log())
    said: list[str] = []
    assert wait_ready(ready, "ab" * 8, timeout_s=30, say=said.append, poll_s=0)["status"] == "ready"  # type: ignore[arg-type]
    assert said[-1] == "mode: provisioning -> in-update"


def test_every_logged_field_of_a_step_is_shown_escaped() -> None:
    """Not only the error message and the provisioned address: the provider, tee and
    evidence kind of a genesis entry, the provider of a control-plane check and the kind
    of an evidence entry are free strings in the log too."""
    hide = "\x1b[8m\u202e"
    genesis = {"type": "genesis", "provider": f"p{hide}", "tee": f"t{hide}", "evidence_kind": f"k{hide}"}
    control = {"type": "control_plane", "provider": f"p{hide}", "ok": True}
    evidence = {"type": "evidence", "kind": f"k{hide}"}
    for e in (genesis, control, evidence):
        line = describe(e)
        assert line is not None and "\x1b" not in line and "\u202e" not in line, line
        assert "\\x1b[8m\\u202e" in line, line
    assert describe(genesis) == ("logged: p\\x1b[8m\\u202e CVM, tee t\\x1b[8m\\u202e "
                                 "(evidence k\\x1b[8m\\u202e)")
