"""The local provider against a real sshd: lockdown, users, restarts, deletion."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cvm_helpers import Cvm, new_id

from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.local import LocalProvider, _strict_modes_problem
from duet.cvm.provider import Provider
from duet.cvm.ssh import CvmConnection, generate_client_key, import_private, public_line

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (per-CVM system users)")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _pid(cvm: Cvm) -> int:
    return int((cvm.dir / "sshd.pid").read_text())


def test_is_a_provider(provider: LocalProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "local"


async def test_effective_sshd_config_shuts_every_other_door(cvm: Cvm) -> None:
    out = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(cvm.dir / "sshd_config")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    settings = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    expected = {
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "pubkeyauthentication": "yes",
        "permitrootlogin": "no",
        "usepam": "no",
        "strictmodes": "yes",
        "hostbasedauthentication": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "permituserrc": "no",
        "authenticationmethods": "publickey",
        "authorizedkeyscommand": "none",
        "listenaddress": f"127.0.0.1:{cvm.prov.port}",
        "allowusers": cvm.prov.user,
    }
    assert {k: settings.get(k) for k in expected} == expected
    # The launch record carries the same effective settings and the config verbatim.
    launch = cvm.prov.launch
    assert launch["sshd_config"] == (cvm.dir / "sshd_config").read_text()
    effective = launch["sshd_effective"]
    assert isinstance(effective, dict)
    assert effective["passwordauthentication"] == ["no"]
    assert effective["kbdinteractiveauthentication"] == ["no"]


async def test_authorized_keys_hold_only_the_controller_key(cvm: Cvm) -> None:
    path = Path(str(cvm.prov.launch["authorized_keys_file"]))
    assert path.read_text() == public_line(cvm.key) + "\n"
    assert cvm.prov.launch["authorized_keys"] == path.read_text()


async def test_launch_record_is_json_and_has_no_secrets(cvm: Cvm) -> None:
    text = json.dumps(cvm.prov.launch)
    host_private = (cvm.dir / "ssh_host_ed25519_key").read_text()
    assert "PRIVATE KEY" not in text and host_private not in text
    assert cvm.prov.instance_id.startswith("local-") and cvm.prov.host == "127.0.0.1"


async def test_create_rejects_bad_input(provider: LocalProvider) -> None:
    key = public_line(generate_client_key())
    for bad_key in ("", "not a key", f'command="sh" {key}', f"{key}\nssh-ed25519 AAAA"):
        with pytest.raises(ProvisioningFailed) as info:
            await provider.create(new_id(), authorized_key=bad_key, spec={})
        assert info.value.code == "provisioning_failed"
    for bad_id in ("../x", "", "a b", "x" * 65):
        with pytest.raises(ProvisioningFailed):
            await provider.create(bad_id, authorized_key=key, spec={})
    assert not provider.base_dir.exists() or list(provider.base_dir.iterdir()) == []


async def test_create_twice_is_refused_and_keeps_the_first(cvm: Cvm) -> None:
    with pytest.raises(ProvisioningFailed):
        await cvm.provider.create(
            cvm.cvm_id, authorized_key=public_line(generate_client_key()), spec={}
        )
    assert await cvm.provider.status(cvm.cvm_id) == "running"
    assert (cvm.dir / "state.json").exists()


async def test_sshd_is_detached_in_its_own_session(cvm: Cvm) -> None:
    pid = _pid(cvm)
    assert os.getsid(pid) == pid != os.getsid(0)


async def test_restart_keeps_host_key_and_port(cvm: Cvm) -> None:
    conn = cvm.connection()
    pinned = await conn.connect()
    assert (await conn.run("echo before")).exit_status == 0
    old_pid = _pid(cvm)
    os.kill(old_pid, signal.SIGKILL)
    # The controller side goes too (as if the controller crashed).
    await conn.close()
    deadline = time.monotonic() + 3
    while await cvm.provider.status(cvm.cvm_id) != "stopped" and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await cvm.provider.status(cvm.cvm_id) == "stopped"

    again = await cvm.provider.ensure_running(cvm.cvm_id)
    assert await cvm.provider.status(cvm.cvm_id) == "running"
    assert _pid(cvm) != old_pid
    assert (again.port, again.user, again.instance_id) == (
        cvm.prov.port,
        cvm.prov.user,
        cvm.prov.instance_id,
    )
    fresh = cvm.connection(pinned=pinned)
    try:
        assert (await fresh.run("echo after")).stdout == b"after\n"
    finally:
        await fresh.close()
    # ensure_running on a running CVM changes nothing.
    running = _pid(cvm)
    assert (await cvm.provider.ensure_running(cvm.cvm_id)).port == cvm.prov.port
    assert _pid(cvm) == running


async def test_restart_moves_to_a_new_port_if_the_old_one_was_taken(cvm: Cvm) -> None:
    conn = cvm.connection()
    pinned = await conn.connect()
    await conn.close()
    pid = _pid(cvm)
    os.kill(pid, signal.SIGTERM)
    while _alive(pid):
        await asyncio.sleep(0.02)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", cvm.prov.port))
        squatter.listen()
        again = await cvm.provider.ensure_running(cvm.cvm_id)
    finally:
        squatter.close()
    assert again.port != cvm.prov.port
    assert f"Port {again.port}\n" in (cvm.dir / "sshd_config").read_text()
    moved = CvmConnection(
        host=again.host,
        port=again.port,
        user=again.user,
        client_key=cvm.key,
        pinned_host_key=pinned,
    )
    try:
        assert (await moved.run("echo moved")).stdout == b"moved\n"
    finally:
        await moved.close()


_CRASHING_CONTROLLER = """
import asyncio, base64, json, sys
from pathlib import Path
from duet.cvm.local import LocalProvider
from duet.cvm.ssh import generate_client_key, export_private, public_line

async def main():
    key = generate_client_key()
    prov = await LocalProvider(Path(sys.argv[1])).create(
        sys.argv[2], authorized_key=public_line(key), spec={})
    print(json.dumps({"port": prov.port, "user": prov.user,
                      "key": base64.b64encode(export_private(key)).decode()}), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_cvm_survives_a_controller_crash(provider: LocalProvider) -> None:
    cvm_id = new_id()
    ctl = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_CONTROLLER, str(provider.base_dir), cvm_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert ctl.stdout is not None
        info = json.loads(ctl.stdout.readline())
    finally:
        ctl.kill()  # SIGKILL: no cleanup of any kind in the "controller"
        ctl.wait()
    assert await provider.status(cvm_id) == "running"
    conn = CvmConnection(
        host="127.0.0.1",
        port=info["port"],
        user=info["user"],
        client_key=import_private(base64.b64decode(info["key"])),
        pinned_host_key=None,
    )
    try:
        assert (await conn.run("echo alive")).stdout == b"alive\n"
    finally:
        await conn.close()


async def test_status_and_missing_cvms(provider: LocalProvider) -> None:
    ghost = new_id()
    assert await provider.status(ghost) == "missing"
    with pytest.raises(CvmNotFound) as info:
        await provider.ensure_running(ghost)
    assert info.value.code == "cvm_not_found"
    await provider.delete(ghost)  # no-op


async def test_delete_stops_everything_and_removes_the_directory(cvm: Cvm) -> None:
    conn = cvm.connection()
    await conn.connect()
    r = await conn.run("nohup sleep 300 >/dev/null 2>&1 & echo $!")
    leftover = int(r.stdout)
    sshd = _pid(cvm)
    assert _alive(leftover) and _alive(sshd)
    await cvm.provider.delete(cvm.cvm_id)
    await conn.close()
    assert not cvm.dir.exists() and not cvm.workdir.exists()
    assert await cvm.provider.status(cvm.cvm_id) == "missing"
    assert not _alive(sshd)
    assert not _alive(leftover)


@root_only
async def test_root_mode_has_a_dedicated_locked_down_user(cvm: Cvm) -> None:
    user = cvm.prov.user
    assert user == f"duet-{cvm.cvm_id[:8]}"
    pw = pwd.getpwnam(user)
    assert pw.pw_shell == "/bin/sh"
    assert pw.pw_dir == str(cvm.workdir)
    # The home is outside the controller's (0700) data dir, which users cannot traverse.
    assert not cvm.workdir.is_relative_to(cvm.provider.base_dir)
    assert 0 < pw.pw_uid
    shadow = {
        line.split(":")[0]: line.split(":")[1]
        for line in Path("/etc/shadow").read_text().splitlines()
        if line
    }
    assert shadow[user] == "*"
    # The controller's key is root's, outside the home the CVM user owns, and so is
    # every directory above it: the user can neither edit nor swap it.
    akf = Path(str(cvm.prov.launch["authorized_keys_file"]))
    assert akf.stat().st_uid == 0 and akf.stat().st_mode & 0o777 == 0o644
    assert not akf.is_relative_to(cvm.workdir)
    for d in akf.parents:
        assert d.stat().st_uid == 0 and not d.stat().st_mode & 0o022, d

    conn = cvm.connection()
    try:
        r = await conn.run("id -un; touch mine")
        assert r.stdout == f"{user}\n".encode()
        assert (cvm.workdir / "mine").stat().st_uid == pw.pw_uid
        # The CVM's own sshd files (host key, config) and the controller's data dir are
        # out of the CVM user's reach.
        for path in (cvm.dir / "ssh_host_ed25519_key", cvm.dir / "sshd_config"):
            denied = await conn.run(f"cat {path}")
            assert denied.exit_status != 0 and denied.stdout == b""
        denied = await conn.run(f"ls {cvm.provider.base_dir}")
        assert denied.exit_status != 0 and b"ermission denied" in denied.stderr
        nope = await conn.run(f"echo x >> {akf}")
        assert nope.exit_status != 0
    finally:
        await conn.close()

    await cvm.provider.delete(cvm.cvm_id)
    with pytest.raises(KeyError):
        pwd.getpwnam(user)
    assert not cvm.dir.exists() and not cvm.workdir.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="unprivileged mode only")
async def test_unprivileged_refuses_a_base_dir_strict_modes_would_reject(tmp_path: Path) -> None:
    provider = LocalProvider(tmp_path / "cvms")  # below /tmp, which is world-writable
    with pytest.raises(ProvisioningFailed, match="StrictModes"):
        await provider.create(new_id(), authorized_key=public_line(generate_client_key()), spec={})
    assert list((tmp_path / "cvms").iterdir()) == []


@root_only
async def test_root_mode_homes_must_be_reachable(tmp_path: Path) -> None:
    # tmp_path sits below a 0700 directory: a CVM user could not reach a home there.
    provider = LocalProvider(tmp_path / "cvms", homes_dir=tmp_path / "homes")
    cvm_id = new_id()
    with pytest.raises(ProvisioningFailed, match="not searchable"):
        await provider.create(cvm_id, authorized_key=public_line(generate_client_key()), spec={})
    with pytest.raises(KeyError):
        pwd.getpwnam(LocalProvider.user_for(cvm_id))
    assert not (tmp_path / "cvms" / cvm_id).exists()


def test_strict_modes_check_mirrors_sshd(tmp_path: Path) -> None:
    uid = os.geteuid()
    safe = tmp_path / "safe"
    (safe / "d").mkdir(parents=True)
    os.chmod(safe, 0o755)
    f = safe / "d" / "authorized_keys"
    f.write_text("x\n")
    # Stops at the home directory: nothing above it is looked at.
    assert _strict_modes_problem(f, uid, home=safe) is None
    # Walks up to / otherwise, and /tmp is world-writable.
    assert "writable" in (_strict_modes_problem(f, uid, home=None) or "")
    os.chmod(safe / "d", 0o775)
    assert "writable" in (_strict_modes_problem(f, uid, home=safe) or "")
