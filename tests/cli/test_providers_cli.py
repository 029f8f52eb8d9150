"""`duet controller providers set|show` and `duet controller credentials set` against a
real controller process: the credential reaches no output of either side, no log entry
and no API answer."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from duet.ledger import entries, keys
from helpers import ControllerProc

SECRET = "cli-SECRET-value-" + "9" * 30


def _duet(c: ControllerProc, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DUET_CONTROLLER": c.url, "DUET_OWNER_KEY": str(c.data.parent / "owner.key"),
           "DUET_STATE_DIR": str(c.data.parent / "cli-state")}
    return subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_providers_and_credentials_through_the_cli(controller: ControllerProc, tmp_path: Path) -> None:
    (controller.data.parent / "owner.key").write_bytes(keys.private_pem(controller.owner_key))
    (tmp_path / "providers.yaml").write_text(
        "azure:\n  subscription_id: 00000000-0000-0000-0000-000000000000\n  resource_group: rg-duet\n"
        "  location: westeurope\n  controller_cidr: 198.51.100.10/32\n")
    creds = tmp_path / "azure.json"
    creds.write_text(json.dumps({"tenant_id": "t-1", "client_id": "c-1", "client_secret": SECRET}))
    outputs = []
    r = _duet(controller, "controller", "providers", "set", str(tmp_path / "providers.yaml"),
              "--control-plane-recheck", "120")
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0 and "providers set: azure" in r.stdout and "every 120 s" in r.stdout, r.stderr
    r = _duet(controller, "controller", "credentials", "set", "--provider", "azure", str(creds))
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0 and "credentials set for azure" in r.stdout, r.stderr
    # A credentials file the controller refuses: the error names fields, never values.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tenant_id": "t-1", "client_secret": SECRET}))
    r = _duet(controller, "controller", "credentials", "set", "--provider", "azure", str(bad))
    outputs.append(r.stdout + r.stderr)
    assert r.returncode == 1 and "lacks client_id" in r.stderr
    r = _duet(controller, "controller", "providers", "show", "--json")
    outputs.append(r.stdout + r.stderr)
    shown = json.loads(r.stdout)
    assert shown["enabled"] == ["azure", "local"] and shown["logged"]["by_intent"] is True
    assert list(shown["credentials"]) == ["azure"]
    r = _duet(controller, "controller", "providers", "show")
    assert "sealed credentials" in r.stdout and "resource_group=rg-duet" in r.stdout
    body = httpx.get(controller.url + "/v1/controller/log/entries").json()
    leaves = [base64.b64decode(e["leaf"]) for e in body["entries"]]
    assert [entries.decode(leaf)["type"] for leaf in leaves] == [
        "owner_keys", "intent", "providers", "intent", "credentials"]
    texts = [*outputs, *(leaf.decode() for leaf in leaves), httpx.get(controller.url + "/v1/controller").text]
    r = _duet(controller, "verify", "--controller-log", "--trust-simulated")
    assert r.returncode == 0, r.stdout + r.stderr
    controller.kill()
    texts.append(controller.log())
    for text in texts:
        assert SECRET not in text
