"""The controller as the enclave runs it: a process started with exactly the manifest's
argv and environment (deploy/gramine/duet-controller.manifest.template, rendered), with
only these substitutions, each named:

1. `--tee gramine` -> `--tee simulated --tls` (no SGX here: a SIMULATED TEE, still RA-TLS);
2. `--listen 0.0.0.0:6037` -> a free loopback port;
3. `--data /data` -> a temporary directory (the sealed mount's stand-in);
4. `LD_LIBRARY_PATH` gets this interpreter's own library directory in front (the image's
   python3 links against the system's libpython, which the manifest's library dirs hold;
   this venv's interpreter is another build, whose libpython must win);
and the build-time variables `entrypoint` (this venv's python, not the image's python3.12)
and `duet_site` (this source tree, the image's /opt/duet/lib).

Everything else comes from the owner, as under SGX, through the CLI a user runs: `duet
controller claim`, `duet controller providers set` (Azure, with `arm_endpoint`,
`authority_host` and `ca_pem` pointing the SDK at a fake ARM and Entra ID over HTTPS:
tests/providers/arm_server.py), `duet controller credentials set` (HPKE-sealed service
principal), then `duet cvm create --provider azure --tee snp`. The real azure-identity
credential gets a token from the fake Entra ID with the sealed secret, and the real
azure-mgmt-* clients create the VM in the fake ARM with that token.

What this twin does NOT do, and why: the fake ARM's VM is no machine (its address is
127.0.0.1, where no sshd listens), so provisioning fails closed at the SSH step (the CVM
is `failed`), and `duet cvm delete` deletes every resource again; the in-service and
`duet verify` part for an Azure SNP CVM runs in-process (test_azure_twin_flow.py), where
the guest, its swtpm vTPM and the dev ARK can be plugged in. A twin machine reachable
from this process (sshd on port 22, the vTPM behind the production collection command,
lockdown checks in a guest the test owns) is still open.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from arm_server import ArmServer, token_for
from fake_arm import FakeArm, Sent

from duet.ledger import entries, keys
from helpers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tee"))
from test_tee_manifest import render

SRC = Path(__file__).resolve().parents[2] / "src"
SECRET = "manifest-twin-SECRET-" + "7" * 24
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "22222222-3333-4444-5555-666666666666"
AZURE = {"subscription_id": "00000000-1111-2222-3333-444444444444", "resource_group": "rg-twin",
         "location": "westeurope", "controller_cidr": "198.51.100.10/32", "poll_interval_s": 0}


class LoopbackArm(FakeArm):
    """The fake ARM, whose public IP addresses are 127.0.0.1 (no machine answers there)."""

    def _route(self, s: Sent) -> tuple[int, Any, dict[str, str]]:
        status, payload, headers = super()._route(s)
        if s.method == "PUT" and self._kind(s.path) == "ip" and isinstance(payload, dict):
            payload["properties"]["ipAddress"] = "127.0.0.1"
            self.resources[s.path.lower()]["properties"]["ipAddress"] = "127.0.0.1"
        return status, payload, headers


def manifest_command(data: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The manifest's loader.argv and loader.env with the named substitutions."""
    manifest = render(entrypoint=sys.executable, duet_site=str(SRC))
    argv: list[str] = list(manifest["loader"]["argv"])
    env: dict[str, str] = dict(manifest["loader"]["env"])
    want = list(argv)
    i = argv.index("--tee")
    assert argv[i + 1] == "gramine"
    argv[i:i + 2] = ["--tee", "simulated", "--tls"]  # 1
    i = argv.index("--listen")
    assert argv[i + 1] == "0.0.0.0:6037"
    argv[i + 1] = f"127.0.0.1:{port}"  # 2
    i = argv.index("--data")
    assert argv[i + 1] == "/data"
    argv[i + 1] = str(data)  # 3
    # Nothing else differs from the manifest.
    changed = [a for a in argv if a not in want]
    assert sorted(changed) == sorted(["simulated", "--tls", f"127.0.0.1:{port}", str(data)]), changed
    assert argv[0] == manifest["libos"]["entrypoint"] == sys.executable
    assert env["PYTHONPATH"] == str(SRC)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = f"{libdir}:{env['LD_LIBRARY_PATH']}"  # 4
    return argv, env


@pytest.mark.slow  # ~30 s: a controller process, seven CLI runs, the SDKs over TLS
def test_the_manifests_controller_creates_an_azure_cvm_through_settings_set_by_intent(tmp_path: Path) -> None:
    port = free_port()
    argv, env = manifest_command(tmp_path / "data", port)
    arm = LoopbackArm()
    server = ArmServer(arm, tenant=TENANT, client_id=CLIENT, client_secret=SECRET).start()
    out = open(tmp_path / "controller.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=tmp_path)
    url = f"https://127.0.0.1:{port}"
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.key").write_bytes(keys.private_pem(owner))
    cli_env = {**os.environ, "DUET_CONTROLLER": url, "DUET_OWNER_KEY": str(tmp_path / "owner.key"),
               "DUET_STATE_DIR": str(tmp_path / "cli-state"), "DUET_TRUST_SIMULATED": "1"}
    outputs: list[str] = []

    def duet(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                           env=cli_env, timeout=300)
        outputs.append(r.stdout + r.stderr)
        return r

    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in (tmp_path / "controller.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "controller.log").read_text()
            assert time.monotonic() < deadline, "the controller did not start"
            time.sleep(0.1)
        head = (tmp_path / "controller.log").read_text()
        assert f"listening on https://127.0.0.1:{port}" in head and "SIMULATED" in head

        r = duet("controller", "claim")
        assert r.returncode == 0, r.stdout + r.stderr
        (tmp_path / "providers.yaml").write_text(yaml.safe_dump({"azure": {
            **AZURE, "arm_endpoint": server.url, "authority_host": server.url, "ca_pem": server.ca_pem}}))
        r = duet("controller", "providers", "set", str(tmp_path / "providers.yaml"))
        assert r.returncode == 0 and "providers set: azure" in r.stdout, r.stdout + r.stderr
        (tmp_path / "sp.json").write_text(json.dumps({"tenant_id": TENANT, "client_id": CLIENT,
                                                      "client_secret": SECRET}))
        r = duet("controller", "credentials", "set", "--provider", "azure", str(tmp_path / "sp.json"))
        assert r.returncode == 0 and "credentials set for azure" in r.stdout, r.stdout + r.stderr
        r = duet("controller", "providers", "show", "--json")
        shown = json.loads(r.stdout)
        assert "azure" in shown["enabled"] and list(shown["credentials"]) == ["azure"]

        r = duet("cvm", "create", "--provider", "azure", "--tee", "snp", "--spec",
                 json.dumps({"controller_cidr": "198.51.100.10/32"}))
        # The SDKs went through the settings: a token from the fake Entra ID for the sealed
        # secret, then every ARM request with it, the VM as the provider builds it.
        assert [t[1:] for t in server.token_requests][:1] == [("client_credentials", CLIENT, True)]
        assert arm.mutations() and all(s.headers.get("Authorization") == f"Bearer {token_for(SECRET)}"
                                       for s in arm.sent)
        vm = next(s for s in arm.sent if s.method == "PUT" and "/virtualmachines/" in s.path.lower())
        assert vm.body["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"
        # No machine answers at the VM's address: provisioning fails closed (the CVM is
        # `failed`, never usable); deleting it deletes every resource the create made.
        said = r.stdout + r.stderr
        assert r.returncode != 0 and "could not be provisioned" in said, said
        cid = re.search(r"CVM ([0-9a-f]{16}) could not be provisioned", said)
        assert cid is not None, said
        assert [k for k in arm.resources if "duet-" in k]
        r = duet("cvm", "delete", cid[1], "--yes")
        assert r.returncode == 0, r.stdout + r.stderr
        assert not [k for k in arm.resources if "duet-" in k]

        # The controller log, as the API serves it: providers (with the endpoints) and
        # credentials, each under its intent; the sealed secret nowhere.
        # Public entries only, read without RA-TLS: the CLI above attested the controller.
        with httpx.Client(verify=False) as http:
            body = http.get(url + "/v1/controller/log/entries").json()
            info = http.get(url + "/v1/controller").text
        logged = [entries.decode(base64.b64decode(e["leaf"])) for e in body["entries"]]
        assert [e["type"] for e in logged][:6] == ["intent", "owner_keys", "intent", "providers", "intent",
                                                    "credentials"]
        assert logged[3]["providers"]["azure"]["arm_endpoint"] == server.url
        r = duet("verify", "--controller-log")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        out.close()
        server.stop()
    texts = [*outputs, json.dumps(logged), info, (tmp_path / "controller.log").read_text(errors="replace")]
    for text in texts:
        assert SECRET not in text
