"""Attacks on the lockdown of local CVMs, through the controller, as a malicious CVM user
(planting links, swapping `~/.ssh`, starting a second sshd) and as a careless root (a
`Match` block, a loosened authorized_keys). Each must fail lockdown on entry to
in-service, name the check, and fail `duet verify` with the same name; and nothing of
the controller's secrets may reach the log or the API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from duet.client.expectations import load_expectations
from duet.client.http import ClientError
from duet.client.verify import fetch_leaves, verify
from duet.cvm.local import LocalProvider
from duet.cvm.ssh import CvmConnection, generate_client_key, public_line
from helpers import ControllerProc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root-mode local CVMs (a system user per CVM)")

OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKz0gSqC8lJc2a0XJWqg4m3Wx6z0V8aA3Gp7Hn1m8b2q"
ALL_CHECKS = ["password_auth_off", "root_login_off", "only_controller_key", "sshd_access", "sshd_match_blocks",
              "listeners", "passwords_locked", "agents_disabled", "serial_console_off"]


def _leaves(c: ControllerProc, cvm: str) -> list[bytes]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return list(fetch_leaves(http, cvm, size))


def _verify_failed(c: ControllerProc, cvm: str, tmp: Path) -> dict[str, str]:
    path = tmp / f"expect-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"lockdown": ALL_CHECKS}))
    with c.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp / "user", expect=load_expectations(path))
    return {ch.name: ch.detail for ch in report.checks if not ch.ok}


def _enter_fails(owner, cvm: str, check: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as info:
        owner.mode(cvm, "in-service")
    assert info.value.code == "lockdown_failed"
    assert check in info.value.message, info.value.message
    return info.value.message


def _akf(c: ControllerProc, cvm: str) -> Path:
    """The controller's key file, as the provisioned entry names it."""
    from duet.ledger import entries

    prov = next(e for e in map(entries.decode, _leaves(c, cvm)) if e["type"] == "provisioned")
    return Path(prov["launch"]["authorized_keys_file"])


def _secrets(c: ControllerProc, other_cvm: str) -> list[str]:
    """Distinctive pieces of every secret a CVM user might try to have root print."""
    found: list[str] = []
    for path in (c.data / "tee" / "simulated-sgx.json", c.data / "tee" / "snp" / "simulated-snp.json"):
        for value in json.loads(path.read_text()).values():
            if isinstance(value, str) and "PRIVATE KEY" in value:  # the simulated TEEs' signing keys
                found += [ln for ln in value.splitlines() if "PRIVATE" not in ln]
    host_key = (c.data / "cvms" / other_cvm / "ssh_host_ed25519_key").read_text()
    found += [ln for ln in host_key.splitlines() if len(ln) > 20 and "PRIVATE" not in ln]
    found += [f.split(":")[1] for f in Path("/etc/shadow").read_text().splitlines()
              if f.count(":") > 2 and len(f.split(":")[1]) > 3]
    return [s for s in found if len(s) >= 20]


def test_links_to_the_controllers_secrets_reach_neither_log_nor_api(
    controller: ControllerProc, tmp_path: Path
) -> None:
    owner = controller.owner()
    cvm, other = owner.create("local")["id"], owner.create("local")["id"]
    tee = controller.data / "tee"
    targets = {
        ".ssh/authorized_keys": "/etc/shadow",
        ".ssh/authorized_keys2": str(tee / "simulated-sgx.json"),
    }
    plant = " && ".join(f"ln -s {t} {name}" for name, t in targets.items())
    setup = f"(mv .ssh .ssh-old 2>/dev/null; true) && mkdir .ssh && {plant} && ls -la .ssh"
    assert owner.run(cvm, setup)["exit_status"] == 0
    first = _enter_fails(owner, cvm, "only_controller_key")
    # Second round: ~/.ssh itself a link into the controller's data (and to another
    # CVM's host key directory), so every name below it resolves to a secret.
    owner.run(cvm, f"rm -r .ssh && ln -s {controller.data / 'cvms' / other} .ssh")
    second = _enter_fails(owner, cvm, "only_controller_key")
    with controller.http() as http:
        api = json.dumps([http.get_json(f"/v1/cvms/{cvm}"), http.get_json("/v1/cvms")])
    text = b"\n".join(_leaves(controller, cvm)).decode("utf-8", "replace") + first + second + api
    secrets = _secrets(controller, other)
    assert secrets, "the test found no secret to look for"
    leaked = [s[:12] for s in secrets if s in text]
    assert not leaked, f"secrets reached the log or the API: {leaked}"
    assert "not followed" in first and "not followed" in second
    report = _verify_failed(controller, cvm, tmp_path)
    assert "only_controller_key" in report["lockdown"]
    assert not [s[:12] for s in secrets if s in "\n".join(report.values())]


def test_swapping_dot_ssh_opens_no_door(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    intruder = generate_client_key()
    # As the CVM user: move any ~/.ssh aside and make one holding the intruder's key.
    script = (f"(mv .ssh .ssh-old 2>/dev/null; true) && mkdir -m 700 .ssh && "
              f"echo '{public_line(intruder)}' > .ssh/authorized_keys && chmod 600 .ssh/authorized_keys")
    assert owner.run(cvm, script)["exit_status"] == 0
    with controller.http() as http:
        view = http.get_json(f"/v1/cvms/{cvm}")
    conn = CvmConnection(host="127.0.0.1", port=int(view["port"]), user=str(view["user"]),
                         client_key=intruder, pinned_host_key=None)

    async def attempt() -> bool:
        try:
            await conn.connect()
        except Exception:
            return False
        await conn.close()
        return True

    assert not asyncio.run(attempt()), "the intruder's key logged in"
    _enter_fails(owner, cvm, "only_controller_key")
    assert "only_controller_key" in _verify_failed(controller, cvm, tmp_path)["lockdown"]


@pytest.mark.parametrize("body", [
    f"{OTHER}\n--- {{akf}}\n{{key}}\n",             # separator line
    "{key}\nnot a key at all\n",                     # stray line
    f"{{key}}\n{OTHER} second\n",                    # second key
    'command="/bin/true" {key}\n',                   # forced command on the controller's key
    'environment="LD_PRELOAD=/x.so" {key}\n',        # environment option
])
def test_loosened_authorized_keys_fails(controller: ControllerProc, tmp_path: Path, body: str) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    akf = _akf(controller, cvm)
    key = akf.read_text().strip()
    akf.write_text(body.format(akf=akf, key=key))
    _enter_fails(owner, cvm, "only_controller_key")
    assert "only_controller_key" in _verify_failed(controller, cvm, tmp_path)["lockdown"]


def test_match_block_reenabling_passwords_fails(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    cfg = controller.data / "cvms" / cvm / "sshd_config"
    cfg.write_text(cfg.read_text() + "Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n")
    message = _enter_fails(owner, cvm, "sshd_match_blocks")
    assert "Address 10.0.0.0/8" in message
    assert "sshd_match_blocks" in _verify_failed(controller, cvm, tmp_path)["lockdown"]


def test_a_second_sshd_on_another_port_fails(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    with socket_port() as port:
        pass
    start = (f"ssh-keygen -q -t ed25519 -N '' -f hk && "
             f"nohup /usr/sbin/sshd -D -f /dev/null -h $PWD/hk -o ListenAddress=127.0.0.1 -p {port} "
             f"-o PidFile=$PWD/p.pid >/dev/null 2>&1 & sleep 1; echo started")
    assert owner.run(cvm, start)["exit_status"] == 0
    message = _enter_fails(owner, cvm, "listeners")
    assert str(port) in message
    assert "listeners" in _verify_failed(controller, cvm, tmp_path)["lockdown"]


def test_a_home_path_with_a_space_is_scanned(tmp_path: Path) -> None:
    """The guest-side scan of other users' homes (real CVMs) takes paths as they are."""
    from duet.cvm.guest.lockdown_facts import gather
    from duet.ledger.lockdown import judge

    user = f"dk{uuid.uuid4().hex[:8]}"
    home = Path(f"/var/tmp/duet home {uuid.uuid4().hex[:6]}")
    subprocess.run(["useradd", "-r", "-M", "-d", str(home), user], check=True)
    try:
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "authorized_keys").write_text(OTHER + "\n")
        params = {"where": "remote", "user": "duet", "authorized_keys_file": "/etc/ssh/duet/authorized_keys",
                  "expected": {"authorized_keys_file": "/etc/ssh/duet/authorized_keys", "controller_key": OTHER}}
        facts = gather(params)
        paths = [f["path"] for f in facts["other_key_files"]]
        assert str(home / ".ssh" / "authorized_keys") in paths
        ok, why = judge("only_controller_key", facts)
        assert not ok and str(home / ".ssh" / "authorized_keys") in why
    finally:
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["rm", "-rf", str(home)], check=False)


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return int(self.s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.s.close()


def test_local_provider_keeps_no_key_in_the_home(tmp_path: Path) -> None:
    """The key file and every directory above it are root's; the home holds nothing sshd reads."""
    async def run() -> None:
        p = LocalProvider(tmp_path / "cvms")
        cvm_id = uuid.uuid4().hex[:16]
        prov = await p.create(cvm_id, authorized_key=public_line(generate_client_key()), spec={})
        try:
            akf = Path(str(prov.launch["authorized_keys_file"]))
            assert not akf.is_relative_to(Path(str(prov.launch["workdir"])))
            assert not (Path(str(prov.launch["workdir"])) / ".ssh").exists()
            for d in [akf, *akf.parents]:
                st = d.stat()
                assert st.st_uid == 0 and not st.st_mode & 0o022, d
        finally:
            await p.delete(cvm_id)

    asyncio.run(run())
