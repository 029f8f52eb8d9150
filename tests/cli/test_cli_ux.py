"""The command line as people and scripts use it: `-o`, names as addresses, `--all`,
confirmation before delete, one meaning for `DUET_TRUST_SIMULATED`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from duet.cli.expect_init import anchored
from duet.ledger import keys
from duet.ledger.regex import compile_linear


def run(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=180, input=stdin)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture
def env(controller: Any, tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    base = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    return {**base, "DUET_CONTROLLER": controller.url, "DUET_OWNER_KEY": str(key), "HOME": str(tmp_path),
            "DUET_STATE_DIR": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def test_create_o_id_prints_only_the_id_and_nothing_on_failure(env: dict[str, str]) -> None:
    ok = run("cvm", "create", "--provider", "local", "--name", "web", "-o", "id", env=env)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout) == 17 and ok.stdout.endswith("\n") and all(c in "0123456789abcdef" for c in ok.stdout[:16])
    assert "created web" in ok.stderr  # the human line still reaches a person, on stderr
    bad = run("cvm", "create", "--provider", "nowhere", "--name", "x", "-o", "id", env=env)
    assert bad.returncode != 0 and bad.stdout == "" and "error [" in bad.stderr


def test_names_address_cvms_and_are_unique_among_live_ones(env: dict[str, str]) -> None:
    cid = run("cvm", "create", "--provider", "local", "--name", "web", "-o", "id", env=env).stdout.strip()
    shown = run("cvm", "show", "web", "-o", "id", env=env)
    assert shown.stdout == f"{cid}\n"
    as_json = json.loads(run("cvm", "show", "web", "--json", env=env).stdout)
    assert as_json["id"] == cid and as_json["name"] == "web"
    as_yaml = yaml.safe_load(run("cvm", "show", cid, "-o", "yaml", env=env).stdout)
    assert as_yaml["id"] == cid

    dup = run("cvm", "create", "--provider", "local", "--name", "web", "-o", "id", env=env)
    assert dup.returncode == 1 and dup.stdout == "" and "taken by live CVM" in dup.stderr
    like_id = run("cvm", "create", "--provider", "local", "--name", "0123456789abcdef", env=env)
    assert like_id.returncode == 1 and "looks like a CVM id" in like_id.stderr
    unknown = run("cvm", "show", "nosuch", env=env)
    assert unknown.returncode == 1 and "unknown_cvm" in unknown.stderr

    ran = run("cvm", "run", "web", "--", "echo", "by-name", env=env)
    assert ran.returncode == 0 and ran.stdout == "by-name\n"

    # delete: refused off a terminal without --yes, and nothing is deleted
    refused = run("cvm", "delete", "web", env=env, stdin="y\n")
    assert refused.returncode == 2 and "confirmation_required" in refused.stderr and refused.stdout == ""
    assert run("cvm", "list", "-o", "id", env=env).stdout == f"{cid}\n"
    gone = run("cvm", "delete", "web", "--yes", "-o", "id", env=env)
    assert gone.returncode == 0 and gone.stdout == f"{cid}\n"

    assert run("cvm", "list", "-o", "id", env=env).stdout == ""  # deleted CVMs hidden ...
    assert run("cvm", "list", "--all", "-o", "id", env=env).stdout == f"{cid}\n"  # ... unless --all
    listed = json.loads(run("cvm", "list", "--all", "-o", "json", env=env).stdout)
    assert [c["status"] for c in listed] == ["deleted"]
    # the name of a deleted CVM is free again
    again = run("cvm", "create", "--provider", "local", "--name", "web", "-o", "id", env=env)
    assert again.returncode == 0 and again.stdout.strip() != cid
    table = run("cvm", "list", env=env)
    assert "web" in table.stdout and all(ord(ch) < 128 for ch in table.stdout)  # plain ASCII when piped


def test_delete_asks_on_a_terminal(env: dict[str, str]) -> None:
    import pty

    cid = run("cvm", "create", "--provider", "local", "-o", "id", env=env).stdout.strip()

    def on_tty(answer: bytes) -> tuple[int, bytes]:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.execve(sys.executable, [sys.executable, "-m", "duet.cli.main", "cvm", "delete", cid], env)
        seen = b""
        while b"Delete CVM" not in seen:
            seen += os.read(fd, 1024)
        os.write(fd, answer)
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), seen

    code, text = on_tty(b"n\n")
    assert code == 1 and b"nothing was deleted" in text
    assert run("cvm", "list", "-o", "id", env=env).stdout == f"{cid}\n"
    code, text = on_tty(b"y\n")
    assert code == 0 and b"deleted" in text
    assert run("cvm", "list", "-o", "id", env=env).stdout == ""


def test_duet_trust_simulated_means_the_flag_everywhere(env: dict[str, str]) -> None:
    cid = run("cvm", "create", "--provider", "local", "-o", "id", env=env).stdout.strip()
    plain = run("verify", cid, env=env)
    assert plain.returncode == 3
    by_env = run("verify", cid, env={**env, "DUET_TRUST_SIMULATED": "1"})
    assert by_env.returncode == 0 and "verdict: VERIFIED SIMULATED" in by_env.stdout
    off = run("verify", cid, env={**env, "DUET_TRUST_SIMULATED": "false"})
    assert off.returncode == 3
    garbage = run("verify", cid, env={**env, "DUET_TRUST_SIMULATED": "maybe"})
    assert garbage.returncode == 1 and "not a boolean" in garbage.stderr
    tofu = run("expect", "init", cid, env={**env, "DUET_TRUST_SIMULATED": "yes"})
    assert tofu.returncode == 0 and "TRUST ON FIRST USE" in tofu.stderr
    doc = yaml.safe_load(tofu.stdout)
    assert doc["controller"]["min_isv_svn"] == 0  # what the (simulated) controller really has
    assert doc["cvm"]["tee"] == "simulated-snp" and len(doc["cvm"]["measurement"]) == 96
    assert "^uptime; df -h \\. \\| tail -n 1$" in doc["history"]["allowed_commands"]
    assert "only_controller_key" in doc["lockdown"]


@pytest.mark.parametrize("command", ["echo hi", "a.b*c", "x | sh; curl evil", "$(id) [a] {1} ^\\", "tab\there"])
def test_expect_init_regexes_match_exactly_the_command(command: str) -> None:
    p = compile_linear(anchored(command))
    assert p.search(command)
    assert not p.search(command + "; rm -rf /") and not p.search("x" + command)
    assert not p.search(command.replace(command[0], "Z", 1))


def test_watch_and_expect_init_speak_json(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "DUET_TRUST_SIMULATED": "1"}
    cid = run("cvm", "create", "--provider", "local", "--name", "j", "-o", "id", env=env).stdout.strip()
    doc = json.loads(run("expect", "init", "j", "-o", "json", env=env).stdout)
    assert doc["cvm"]["tee"] == "simulated-snp"
    (tmp_path / "e.yaml").write_text(run("expect", "init", "j", env=env).stdout)
    watched = run("watch", "j", "--expect", str(tmp_path / "e.yaml"), "--max-checks", "1", "-o", "json", env=env)
    assert watched.returncode == 0, watched.stderr
    line = json.loads(watched.stdout)
    assert line["cvm"] == cid and line["ok"] is True and line["mode"] == "in-update"
