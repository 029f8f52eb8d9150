"""Contexts as in kubectl (flag > environment > context > default), shell completion,
and `-o` on the commands that print a result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from duet.ledger import keys
from helpers import ControllerProc


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def clean_env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    return {**base, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "DUET_STATE_DIR": str(tmp_path / "state")}


def test_context_set_use_list_and_precedence(controller: ControllerProc, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    # without a context, the default URL (nothing listens there in this test) is used
    assert run("cvm", "list", env={**env, "DUET_CONTROLLER": "http://127.0.0.1:9"}).returncode == 1
    assert run("context", "set", "here", "--controller", controller.url, "--key", str(key), env=env).returncode == 0
    assert run("context", "set", "nowhere", "--controller", "http://127.0.0.1:9", env=env).returncode == 0
    doc = yaml.safe_load((tmp_path / "cfg" / "duet" / "config.yaml").read_text())
    assert doc["current-context"] == "here" and doc["contexts"]["here"]["key"] == str(key)

    created = run("cvm", "create", "--provider", "local", "-o", "id", env=env)  # controller and key from the context
    assert created.returncode == 0, created.stderr
    listed = json.loads(run("context", "list", "-o", "json", env=env).stdout)
    assert [(r["name"], r["current"]) for r in listed] == [("here", True), ("nowhere", False)]

    assert run("context", "use", "nowhere", env=env).returncode == 0
    assert run("cvm", "list", env=env).returncode == 1  # the context in force is used ...
    assert run("cvm", "list", "--controller", controller.url, env=env).returncode == 0  # ... a flag wins
    assert run("cvm", "list", env={**env, "DUET_CONTROLLER": controller.url}).returncode == 0  # ... and its env var
    assert run("cvm", "list", "-o", "id", env={**env, "DUET_CONTEXT": "here"}).stdout == created.stdout
    missing = run("context", "use", "nope", env=env)
    assert missing.returncode == 1 and "unknown_context" in missing.stderr


def test_a_config_typo_is_refused(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    cfg = tmp_path / "cfg" / "duet" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("current-context: a\ncontexts:\n  a: {controler: http://x}\n")
    r = run("cvm", "list", env=env)
    assert r.returncode == 1 and "invalid_config" in r.stderr and r.stdout == ""


def test_completion_is_offered(tmp_path: Path) -> None:
    duet = Path(sys.executable).parent / "duet"
    r = subprocess.run([str(duet), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                       env=clean_env(tmp_path))
    assert r.returncode == 0 and "complete" in r.stdout and "duet" in r.stdout
    assert "--install-completion" in subprocess.run([str(duet), "--help"], capture_output=True, text=True,
                                                    timeout=60, env=clean_env(tmp_path)).stdout


def test_o_on_result_commands(controller: ControllerProc, tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    kid = run("keygen", "--out", str(tmp_path / "k"), "-o", "id", env=env)
    assert kid.returncode == 0 and kid.stdout.strip() == keys.key_id(
        keys.read_private_key(tmp_path / "k").public_key())
    info = json.loads(run("controller", "info", "--controller", controller.url, "-o", "json", env=env).stdout)
    ident = run("controller", "info", "--controller", controller.url, "-o", "id", env=env).stdout
    assert ident == info["controller_id"] + "\n"
    assert yaml.safe_load(run("controller", "info", "--controller", controller.url, "-o", "yaml",
                              env=env).stdout)["controller_id"] == info["controller_id"]
    both = run("controller", "info", "--controller", controller.url, "--json", "-o", "yaml", env=env)
    assert both.returncode == 2


def test_trust_simulated_flag_and_env_alike_over_ratls(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = controller_factory()
    c.tls = True
    c.start()
    env = clean_env(tmp_path)
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(c.owner_key))
    env.update(DUET_CONTROLLER=c.url, DUET_OWNER_KEY=str(key))
    for argv in (["controller", "info", "-o", "id"], ["cvm", "list", "-o", "id"],
                 ["cvm", "create", "--provider", "local", "--name", "t", "-o", "id"]):
        refused = run(*argv, env=env)
        assert refused.returncode == 1 and refused.stdout == "", argv  # a SIMULATED quote is not trusted by default
        by_flag = run(*argv, "--trust-simulated", env=env)
        assert by_flag.returncode == 0, (argv, by_flag.stderr)
        if argv[0] == "cvm" and argv[1] == "create":
            run("cvm", "delete", "t", "--yes", "--trust-simulated", env=env)
        by_env = run(*argv, env={**env, "DUET_TRUST_SIMULATED": "1"})
        assert by_env.returncode == 0, (argv, by_env.stderr)
        if argv[1] != "create":  # a create makes a new id each time
            assert by_env.stdout == by_flag.stdout
