"""`duet.client` as a public SDK: the exported names are pinned, the package is typed,
and the README's SDK example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duet.client
from duet.ledger import keys
from helpers import ControllerProc

EXPORTS = ["BundleSource", "Check", "ClientError", "ConfigError", "DEFAULT_URL", "Http", "LimitExceeded", "Limits",
           "LogState", "OwnerClient", "ReadClient", "Report", "RunResult", "UserExpectations", "export_bundle",
           "load_expectations", "verify"]


def test_the_public_names_are_pinned() -> None:
    assert sorted(duet.client.__all__) == sorted(EXPORTS)
    for name in EXPORTS:
        assert getattr(duet.client, name) is not None
    from duet.client.errors import ClientError
    from duet.client.verify import verify as verify_fn

    assert issubclass(duet.client.ConfigError, ClientError) and issubclass(duet.client.LimitExceeded, ClientError)
    assert callable(duet.client.verify)  # the function, even though duet.client.verify is also a module
    assert duet.client.verify.verify is verify_fn
    assert (Path(duet.client.__file__).parent / "py.typed").exists()
    assert (Path(duet.client.__file__).parent.parent / "py.typed").exists()


def test_importing_the_http_client_does_not_load_the_verifier() -> None:
    code = ("import sys, duet.client.http, duet.client; "
            "print(any(m.startswith('duet.attestation') for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_readme_sdk_example_runs(controller: ControllerProc, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme[readme.index("<!-- duet:sdk"):]
    m = re.search(r"```python\n(.*?)\n```", block, re.S)
    assert m is not None
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    env = {**os.environ, "DUET_CONTROLLER": controller.url, "DUET_OWNER_KEY": str(key),
           "DUET_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([sys.executable, "-c", m.group(1)], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "refused: forbidden_in_mode" in r.stdout and "\nVERIFIED " in "\n" + r.stdout
