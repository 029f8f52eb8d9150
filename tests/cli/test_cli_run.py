"""`duet cvm run` signs exactly what the owner typed: options anywhere before `--`, the
argv after it quoted with `shlex.join`, `--sh` for a raw shell string, `-v` to show it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from duet.cli.main import signed_command
from duet.client.verify import fetch_leaves
from duet.ledger import entries, keys
from duet.ledger.intent import parse_intent
from helpers import ControllerProc


def _duet(c: ControllerProc, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DUET_CONTROLLER": c.url, "DUET_OWNER_KEY": str(key)}
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _signed_runs(c: ControllerProc, cvm: str) -> list[dict[str, object]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        log = [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]
    return [parse_intent(str(e["jws"])).args for e in log if e["type"] == "intent" and e["op"] == "cvm.run"]


@pytest.fixture
def setup(controller: ControllerProc, tmp_path: Path) -> tuple[ControllerProc, Path, str]:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    key.chmod(0o600)
    cvm = controller.owner().create("local")["id"]
    return controller, key, cvm


def test_options_after_the_id_are_options_and_the_argv_is_the_command(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    r = _duet(c, key, "cvm", "run", cvm, "--timeout", "30", "-v", "--", "sleep", "1")
    assert r.returncode == 0, r.stderr
    assert "'sleep 1'" in r.stderr  # -v shows the exact string signed
    assert _signed_runs(c, cvm)[-1] == {"command": "sleep 1", "timeout_s": 30.0}


def test_quoted_argv_runs_as_given(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    r = _duet(c, key, "cvm", "run", cvm, "--", "sh", "-c", "echo a; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == "a\n"
    assert _signed_runs(c, cvm)[-1]["command"] == "sh -c 'echo a; exit 7'"
    # One quoted word stays one word: the pipe is an argument, not a shell operator.
    r = _duet(c, key, "cvm", "run", cvm, "--", "echo", "a | tr a b")
    assert r.stdout == "a | tr a b\n"


def test_sh_sends_a_raw_shell_string(setup) -> None:  # type: ignore[no-untyped-def]
    c, key, cvm = setup
    r = _duet(c, key, "cvm", "run", "--sh", "echo a | tr a b", cvm)
    assert r.returncode == 0 and r.stdout == "b\n", r.stderr
    assert _signed_runs(c, cvm)[-1] == {"command": "echo a | tr a b"}


def test_argv_and_sh_together_is_a_usage_error() -> None:
    import typer

    with pytest.raises(typer.Exit) as info:
        signed_command(["ls"], "ls")
    assert info.value.exit_code == 2
    assert signed_command(["printf", "%s\n", "it's", ""], None) == "printf '%s\n' 'it'\"'\"'s' ''"
