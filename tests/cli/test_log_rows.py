"""`duet log`: one row per operation, who is the verified key id, what includes a refused
command's text, times are UTC with `Z`; --type, --since, --digests, --follow, -o json."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from duet.client.http import ClientError
from duet.ledger import keys
from helpers import ControllerProc


def duet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def test_one_row_per_operation(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local", name="logged")["id"]
    owner.run(cvm, "echo hi")
    owner.mode(cvm, "in-service")
    try:
        owner.run(cvm, "touch /etc/evil\x1b[8m")
        raise AssertionError("not refused")
    except ClientError as exc:
        assert exc.code == "forbidden_in_mode"
    owner.action(cvm, "health")
    kid = keys.key_id(controller.owner_key.public_key())
    base = ("--controller", controller.url)

    rows: list[dict[str, Any]] = json.loads(duet("log", "logged", *base, "-o", "json").stdout)
    assert [r["type"] for r in rows] == ["create", "run", "mode", "refused", "action"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["time"]) for r in rows)
    assert [r["mode"] for r in rows] == ["provisioning", "in-update", "in-update", "in-service", "in-service"]
    assert {r["who"] for r in rows[1:]} == {kid[:16]}
    run, refused = rows[1], rows[3]
    assert run["what"] == "echo hi" and run["outcome"] == "exit 0"
    assert run["digests"]["stdout_sha256"] == hashlib.sha256(b"hi\n").hexdigest()
    # the refused command's text is shown (from the verified JWS), escaped
    assert refused["what"] == "touch /etc/evil\\x1b[8m" and refused["outcome"] == "refused [forbidden_in_mode]"
    assert rows[2]["outcome"] == "now in-service"

    table = duet("log", cvm, *base, env={**os.environ, "NO_COLOR": "1"}).stdout
    assert "touch /etc/evil\\x1b[8m" in table and "\x1b" not in table
    assert table.count("refused [forbidden_in_mode]") == 1 and "Z " in table
    only = json.loads(duet("log", cvm, *base, "--type", "refused", "-o", "json").stdout)
    assert [r["type"] for r in only] == ["refused"]
    assert len(json.loads(duet("log", cvm, *base, "--since", "1h", "-o", "json").stdout)) == 5
    assert json.loads(duet("log", cvm, *base, "--since", "2999-01-01T00:00:00Z", "-o", "json").stdout) == []
    assert hashlib.sha256(b"hi\n").hexdigest() in duet("log", cvm, *base, "--digests").stdout
    entries = json.loads(duet("log", cvm, *base, "--entries", "--json").stdout)
    assert entries[0]["type"] == "genesis" and len(entries) > 5


def test_follow_prints_new_operations(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    proc = subprocess.Popen([sys.executable, "-m", "duet.cli.main", "log", cvm, "--controller", controller.url,
                             "--follow", "--interval", "0.2", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "create"
        time.sleep(0.5)
        owner.run(cvm, "echo followed")
        second = json.loads(proc.stdout.readline())
        assert second["type"] == "run" and second["what"] == "echo followed" and second["outcome"] == "exit 0"
    finally:
        proc.kill()
        proc.wait(timeout=10)
