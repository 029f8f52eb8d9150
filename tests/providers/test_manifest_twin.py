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

The fake ARM's VM is a machine (tests/providers/azure_machine.py): a Debian guest under
QEMU booted from the VM request's customData, whose vTPM is a real swtpm provisioned as
Azure provisions a CVM's (AK, HCL report with a SIMULATED SNP report under a dev ARK, AK
certificate), and whose IMDS at 169.254.169.254 serves that VCEK's chain. Its public IP is
a loopback address whose port 22 is the guest's sshd. The controller reaches it as it
reaches an Azure CVM: it waits for the guest to boot, pins its host key, runs the
lockdown checks and the production evidence collection in the guest, reads the VM's model
back from the fake ARM. The owner's `providers.set` names the dev ARK (`snp_arks`, refused
under --tee gramine); the user pins it in the expectations, with the SIMULATED vTPM root.
"""

from __future__ import annotations

import base64
import json
import os
import re
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
from azure_machine import AzureMachine
from fake_arm import FakeArm, Sent
from test_qemu_boot import require_image
from vtpm_twin import have_tools

from duet.attestation.simulated.snp import SimulatedSnp
from duet.ledger import entries, keys
from helpers import free_port, stop_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tee"))
from test_tee_manifest import render

SRC = Path(__file__).resolve().parents[2] / "src"
SECRET = "manifest-twin-SECRET-" + "7" * 24
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "22222222-3333-4444-5555-666666666666"
AZURE = {"subscription_id": "00000000-1111-2222-3333-444444444444", "resource_group": "rg-twin",
         "location": "westeurope", "controller_cidr": "198.51.100.10/32", "poll_interval_s": 0}


class MachineArm(FakeArm):
    """The fake ARM, whose VM is a machine: a VM request boots it, deleting the VM stops
    it, and the public IP address is the machine's."""

    def __init__(self, machine: AzureMachine) -> None:
        super().__init__()
        self.machine = machine

    def _route(self, s: Sent) -> tuple[int, Any, dict[str, str]]:
        status, payload, headers = super()._route(s)
        kind = self._kind(s.path)
        if s.method == "PUT" and kind == "ip" and isinstance(payload, dict):
            payload["properties"]["ipAddress"] = self.machine.address
            self.resources[s.path.lower()]["properties"]["ipAddress"] = self.machine.address
        if s.method == "PUT" and kind == "vm" and status < 300:
            self.machine.boot(self.resources[s.path.lower()])
        if s.method == "DELETE" and kind == "vm":
            self.machine.stop()
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


@pytest.mark.slow  # ~3 min: a controller process, a Debian guest booted under TCG, a dozen CLI runs
def test_the_manifests_controller_drives_an_azure_snp_cvm_end_to_end(tmp_path: Path) -> None:
    image = require_image()
    if not have_tools():
        pytest.fail("swtpm and tpm2-tools are needed (make setup installs them: scripts/ensure-vtpm.sh)")
    port = free_port()
    argv, env = manifest_command(tmp_path / "data", port)
    snp = SimulatedSnp.load_or_create(tmp_path / "azure-hw")
    machine = AzureMachine(tmp_path / "machine", image, snp)
    arm = MachineArm(machine)
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
    logged: list[dict[str, Any]] = []
    info = ""

    def duet(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                           env=cli_env, timeout=600)
        outputs.append(r.stdout + r.stderr)
        return r

    def ok(*args: str) -> str:
        r = duet(*args)
        assert r.returncode == 0, f"duet {' '.join(args)}: " + r.stdout + r.stderr + _tail(machine.serial_log)
        return r.stdout

    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in (tmp_path / "controller.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "controller.log").read_text()
            assert time.monotonic() < deadline, "the controller did not start"
            time.sleep(0.1)
        head = (tmp_path / "controller.log").read_text()
        assert f"listening on https://127.0.0.1:{port}" in head and "SIMULATED" in head

        ok("controller", "claim")
        (tmp_path / "providers.yaml").write_text(yaml.safe_dump({"azure": {
            **AZURE, "arm_endpoint": server.url, "authority_host": server.url, "ca_pem": server.ca_pem,
            "snp_arks": [snp.ark_pem.decode()]}}))
        assert "providers set: azure" in ok("controller", "providers", "set", str(tmp_path / "providers.yaml"))
        (tmp_path / "sp.json").write_text(json.dumps({"tenant_id": TENANT, "client_id": CLIENT,
                                                      "client_secret": SECRET}))
        assert "credentials set for azure" in ok("controller", "credentials", "set", "--provider", "azure",
                                                 str(tmp_path / "sp.json"))
        shown = json.loads(ok("controller", "providers", "show", "--json"))
        assert "azure" in shown["enabled"] and list(shown["credentials"]) == ["azure"]

        # The create returns once ARM says the VM exists; the controller then waits for the
        # guest to boot (boot_timeout_s), pins its host key and logs it in-update.
        cid = ok("cvm", "create", "--provider", "azure", "--tee", "snp", "-o", "id", "--spec",
                 json.dumps({"controller_cidr": "198.51.100.10/32"})).strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f]{16}", cid), cid
        # The SDKs went through the settings: a token from the fake Entra ID for the sealed
        # secret, then every ARM request with it, the VM as the provider builds it.
        assert [t[1:] for t in server.token_requests][:1] == [("client_credentials", CLIENT, True)]
        assert arm.mutations() and all(s.headers.get("Authorization") == f"Bearer {token_for(SECRET)}"
                                       for s in arm.sent)
        vm = next(s for s in arm.sent if s.method == "PUT" and "/virtualmachines/" in s.path.lower())
        assert vm.body["properties"]["securityProfile"]["securityType"] == "ConfidentialVM"

        assert ok("cvm", "run", cid, "--", "sh", "-c", "echo on the twin as $(id -un)").strip() == "on the twin as duet"
        # In-service: the lockdown checks and the production collection run in the guest;
        # the VM's model is read back from the fake ARM.
        ok("cvm", "mode", cid, "in-service")
        refused = duet("cvm", "run", cid, "--", "true")
        assert refused.returncode == 3, refused.stdout + refused.stderr

        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {
            "tee": "azure-snp", "mode": "in-service", "snp_arks": [snp.ark_pem.decode()],
            "azure_ak_roots": [machine_vtpm_root(machine)], "require_event_log": True}}))
        said = ok("verify", cid, "--expect", str(tmp_path / "expect.yaml"))
        assert "SIMULATED" in said, said
        # The user who pins AMD's roots only (no snp_arks) gets a refusal, not a pass.
        (tmp_path / "amd.yaml").write_text(yaml.safe_dump({"cvm": {"tee": "azure-snp"}}))
        r = duet("verify", cid, "--expect", str(tmp_path / "amd.yaml"), "--state-dir", str(tmp_path / "amd-state"))
        assert r.returncode != 0, r.stdout + r.stderr

        # Behind the controller's back, in the cloud's model: boot diagnostics on. The next
        # entry into in-service reads it, logs it and refuses; the user's verify fails.
        vm_res = next(r for k, r in arm.resources.items() if "/virtualmachines/" in k)
        vm_res["properties"]["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True}}
        ok("cvm", "mode", cid, "in-update")
        r = duet("cvm", "mode", cid, "in-service")
        assert r.returncode != 0 and "control_plane" in r.stdout + r.stderr, r.stdout + r.stderr
        r = duet("verify", cid, "--expect", str(tmp_path / "expect.yaml"))
        assert r.returncode != 0 and "boot_diagnostics_off" in r.stdout + r.stderr, r.stdout + r.stderr

        ok("cvm", "delete", cid, "--yes")
        assert not [k for k in arm.resources if "duet-" in k]
        assert machine.qemu is None

        # The controller log, as the API serves it: providers (with the endpoints and the
        # dev ARK) and credentials, each under its intent; the sealed secret nowhere.
        # Public entries only, read without RA-TLS: the CLI above attested the controller.
        with httpx.Client(verify=False) as http:
            body = http.get(url + "/v1/controller/log/entries").json()
            info = http.get(url + "/v1/controller").text
        logged = [entries.decode(base64.b64decode(e["leaf"])) for e in body["entries"]]
        assert [e["type"] for e in logged][:6] == ["intent", "owner_keys", "intent", "providers", "intent",
                                                    "credentials"]
        assert logged[3]["providers"]["azure"]["arm_endpoint"] == server.url
        ok("verify", "--controller-log")
    finally:
        stop_group(proc)
        out.close()
        server.stop()
        machine.stop()
    texts = [*outputs, json.dumps(logged), info, (tmp_path / "controller.log").read_text(errors="replace")]
    for text in texts:
        assert SECRET not in text


def machine_vtpm_root(machine: AzureMachine) -> str:
    """The SIMULATED vTPM root (and intermediate) a user pins for the machine's AK certificate."""
    assert machine.vtpm_ca is not None
    return machine.vtpm_ca.pins.decode()


def _tail(path: Path) -> str:
    """The end of the guest's console, for a failure's message (host-side only)."""
    return "\n--- guest console ---\n" + path.read_text(errors="replace")[-3000:] if path.exists() else ""
