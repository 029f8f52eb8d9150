"""`duet intent`: any operation of the registry, signed and submitted; arguments are
checked by the operation's model before anything is signed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from duet.ledger import keys
from helpers import ControllerProc


def _duet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_list_reads_the_registry() -> None:
    from duet.ledger.operations import OPERATIONS

    out = _duet("intent", "--list")
    assert out.returncode == 0
    for op in OPERATIONS:
        assert op in out.stdout


def test_bad_operations_and_arguments_are_refused_before_signing(tmp_path: Path) -> None:
    for args, code in [
        (["bogus"], "invalid_request"),
        (["cvm.run", "--args", '{"command": 5}', "--cvm", "c1"], "malformed_intent"),
        (["cvm.run", "--args", '{"command": "ls"}'], "invalid_request"),
        (["cvm.create", "--args", "[1]"], "invalid_request"),
        (["cvm.create", "--args", '{"provider": "local"}', "--cvm", "c1"], "invalid_request"),
    ]:
        out = _duet("intent", *args, "--key", str(tmp_path / "missing.key"))
        assert out.returncode == 2 and f"error [{code}]" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_an_operation_is_submitted_through_the_registry(controller: ControllerProc, tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    out = _duet("intent", "cvm.create", "--args", '{"provider": "local", "tee": "tdx"}',
                "--controller", controller.url, "--key", str(key))
    assert out.returncode == 1 and "tee_not_offered" in out.stderr
    out = _duet("intent", "cvm.create", "--args", '{"provider": "local"}', "--controller", controller.url,
                "--key", str(key))
    assert out.returncode == 0, out.stderr
    cvm = json.loads(out.stdout)["cvm"]
    assert cvm["evidence_kind"] == "simulated-snp" and cvm["simulated"] is True
    out = _duet("intent", "cvm.run", "--args", '{"command": "echo hi"}', "--cvm", cvm["id"],
                "--controller", controller.url, "--key", str(key))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["exit_status"] == 0
