"""The controller's SSH channel against a real sshd: results, caps, timeouts, pinning."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import ClassVar

import asyncssh
import pytest
from cvm_helpers import Cvm

from duet.cvm.errors import AuthenticationFailed, CvmUnreachable, HostKeyMismatch
from duet.cvm.local import _children_of
from duet.cvm.ssh import (
    CvmConnection,
    export_private,
    generate_client_key,
    import_private,
    public_line,
)


def _gone(pid: int) -> bool:
    """No such process, or only a zombie (nothing left running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _kill_server_side_of_connections(cvm: Cvm) -> None:
    """Kill the per-connection sshd processes (privileged monitor and unprivileged
    child) but not the listener nor the commands: what a network failure looks like."""
    listener = int((cvm.dir / "sshd.pid").read_text())
    todo, victims = [listener], []
    while todo:
        for child in _children_of(todo.pop()):
            todo.append(child)
            if Path(f"/proc/{child}/comm").read_text().strip() == "sshd":
                victims.append(child)
    assert victims, "no connection processes found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


async def _wait_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        await asyncio.sleep(0.02)
    return _gone(pid)


def test_key_helpers_roundtrip() -> None:
    key = generate_client_key()
    again = import_private(export_private(key))
    assert public_line(again) == public_line(key)
    line = public_line(key)
    assert line.startswith("ssh-ed25519 ") and len(line.split()) == 2
    c = CvmConnection(host="h", port=1, user="u", client_key=key, pinned_host_key=None)
    assert "PRIVATE" not in repr(c) and public_line(key).split()[1] not in repr(c)


async def test_first_connect_returns_host_key_of_the_cvm(cvm: Cvm) -> None:
    c = cvm.connection()
    assert c.host_key is None
    host_key = await c.connect()
    try:
        on_disk = (cvm.dir / "ssh_host_ed25519_key.pub").read_text().split()
        assert host_key == f"{on_disk[0]} {on_disk[1]}"
        assert c.host_key == host_key
        assert await c.connect() == host_key  # idempotent
    finally:
        await c.close()


async def test_exit_status_streams_hashes_counts(conn: CvmConnection) -> None:
    r = await conn.run("echo hi; echo err >&2; exit 3")
    assert r.exit_status == 3
    assert r.signal is None and not r.timed_out
    assert (r.stdout, r.stderr) == (b"hi\n", b"err\n")
    assert (r.stdout_bytes, r.stderr_bytes) == (3, 4)
    assert r.stdout_sha256 == hashlib.sha256(b"hi\n").hexdigest()
    assert r.stderr_sha256 == hashlib.sha256(b"err\n").hexdigest()
    assert not r.stdout_truncated and not r.stderr_truncated
    assert r.duration_ms > 0


async def test_stdin_is_at_eof(conn: CvmConnection) -> None:
    r = await conn.run("cat; echo done", timeout_s=5)
    assert (r.exit_status, r.stdout) == (0, b"done\n")


async def test_commands_start_in_the_cvm_workdir(cvm: Cvm, conn: CvmConnection) -> None:
    r = await conn.run("pwd; touch made-here")
    assert r.stdout.decode().strip() == str(cvm.workdir)
    assert (cvm.workdir / "made-here").exists()


async def test_output_cap_keeps_prefix_but_hashes_and_counts_everything(
    conn: CvmConnection,
) -> None:
    n = 3_000_000
    r = await conn.run(f"head -c {n} /dev/zero; head -c 5000 /dev/zero | tr '\\0' e >&2", cap=4096)
    assert r.exit_status == 0
    assert r.stdout == b"\0" * 4096 and r.stdout_truncated
    assert r.stdout_bytes == n
    assert r.stdout_sha256 == hashlib.sha256(b"\0" * n).hexdigest()
    assert r.stderr == b"e" * 4096 and r.stderr_truncated
    assert r.stderr_bytes == 5000
    assert r.stderr_sha256 == hashlib.sha256(b"e" * 5000).hexdigest()


async def test_default_cap_is_one_mebibyte(conn: CvmConnection) -> None:
    r = await conn.run("head -c 3000000 /dev/zero")
    assert len(r.stdout) == 1 << 20 and r.stdout_truncated and r.stdout_bytes == 3_000_000
    exact = await conn.run(f"head -c {1 << 20} /dev/zero")
    assert len(exact.stdout) == 1 << 20 and not exact.stdout_truncated


async def test_binary_output_is_kept_verbatim(conn: CvmConnection) -> None:
    r = await conn.run("printf '\\377\\000\\r\\n\\001'")
    assert r.stdout == b"\xff\x00\r\n\x01"


async def test_timeout_kills_the_remote_process(cvm: Cvm, conn: CvmConnection) -> None:
    start = time.monotonic()
    r = await conn.run("echo $$ > sleeper.pid; exec sleep 10", timeout_s=0.5)
    assert r.timed_out and r.exit_status is None
    assert time.monotonic() - start < 3
    pid = int((cvm.workdir / "sleeper.pid").read_text())
    assert await _wait_gone(pid), f"sleep (pid {pid}) still running after the timeout"
    # The connection is still usable afterwards.
    assert (await conn.run("echo still-here")).stdout == b"still-here\n"


async def test_timeout_also_kills_processes_that_left_the_group(
    cvm: Cvm, conn: CvmConnection
) -> None:
    # The background process starts its own session (so `signal` misses it) and keeps
    # stdout open (so the channel would never close): the run marker finds it.
    r = await conn.run("setsid sleep 30 & echo $! > bg.pid; sleep 30", timeout_s=0.5)
    assert r.timed_out and r.exit_status is None
    pid = int((cvm.workdir / "bg.pid").read_text())
    assert await _wait_gone(pid), f"escaped process {pid} still running"


async def test_cancelled_run_kills_the_remote_process(cvm: Cvm, conn: CvmConnection) -> None:
    task = asyncio.create_task(conn.run("echo $$ > cancelled.pid; exec sleep 10"))
    pidfile = cvm.workdir / "cancelled.pid"
    while not pidfile.exists() or not pidfile.read_text().strip():
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(int(pidfile.read_text()))


async def test_concurrent_commands_share_the_connection(conn: CvmConnection) -> None:
    results = await asyncio.gather(*(conn.run(f"echo {i}; sleep 0.2") for i in range(12)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(12)]


async def test_invalid_arguments(conn: CvmConnection) -> None:
    with pytest.raises(ValueError):
        await conn.run("true", timeout_s=0)
    with pytest.raises(ValueError):
        await conn.run("true", cap=-1)


async def test_unauthorized_key_is_refused(cvm: Cvm) -> None:
    other = CvmConnection(
        host=cvm.prov.host,
        port=cvm.prov.port,
        user=cvm.prov.user,
        client_key=generate_client_key(),
        pinned_host_key=None,
    )
    with pytest.raises(AuthenticationFailed) as info:
        await other.connect()
    assert info.value.code == "cvm_auth_failed"
    assert isinstance(info.value, CvmUnreachable)


class _Recorder(asyncssh.SSHClient):
    offered: ClassVar[set[str]] = set()

    def password_auth_requested(self) -> str:
        _Recorder.offered.add("password")
        return "guess"

    def kbdint_auth_requested(self) -> str:
        _Recorder.offered.add("keyboard-interactive")
        return ""


async def test_password_and_keyboard_interactive_are_not_offered(cvm: Cvm) -> None:
    _Recorder.offered = set()
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            cvm.prov.host,
            cvm.prov.port,
            username=cvm.prov.user,
            client_factory=_Recorder,
            client_keys=None,
            agent_path=None,
            config=None,
            known_hosts=None,
            password_auth=True,
            kbdint_auth=True,
            preferred_auth="password,keyboard-interactive",
        )
    # The callbacks run only if the server offers the method: it offered neither.
    assert _Recorder.offered == set()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_openssh_client_sees_only_publickey_offered(cvm: Cvm, tmp_path: Path) -> None:
    """The server's own list of remaining methods, as the OpenSSH client reports it."""
    out = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-p", str(cvm.prov.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "PreferredAuthentications=password",
            f"{cvm.prov.user}@{cvm.prov.host}", "true",
        ],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 255
    assert "Permission denied (publickey)." in out.stderr


async def test_changed_host_key_is_refused_and_nothing_runs(cvm: Cvm) -> None:
    c = cvm.connection()
    pinned = await c.connect()
    await c.close()

    # The "CVM" gets a new host key (a different machine answering on its address).
    key_file = cvm.dir / "ssh_host_ed25519_key"
    key_file.unlink()
    (cvm.dir / "ssh_host_ed25519_key.pub").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key_file)],
        check=True,
    )
    pid = int((cvm.dir / "sshd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    assert await _wait_gone(pid)
    await cvm.provider.ensure_running(cvm.cvm_id)

    proof = cvm.workdir / "proof"
    # The same object reconnects with its pin ...
    with pytest.raises(HostKeyMismatch) as info:
        await c.run(f"touch {proof}")
    assert info.value.code == "host_key_mismatch"
    # ... and so does a fresh one given the pin.
    fresh = cvm.connection(pinned=pinned)
    with pytest.raises(HostKeyMismatch):
        await fresh.connect()
    with pytest.raises(HostKeyMismatch):
        await fresh.run(f"touch {proof}")
    assert not proof.exists()

    # The server is up and the key is usable: only the pin refused it.
    tofu = cvm.connection()
    assert await tofu.connect() != pinned
    try:
        r = await tofu.run(f"touch {proof}")
        assert r.exit_status == 0 and proof.exists()
    finally:
        await tofu.close()


async def test_reconnects_after_the_connection_was_lost(cvm: Cvm, conn: CvmConnection) -> None:
    host_key = conn.host_key
    assert (await conn.run("echo one")).stdout == b"one\n"
    _kill_server_side_of_connections(cvm)
    await asyncio.sleep(0.1)
    assert (await conn.run("echo two")).stdout == b"two\n"
    assert conn.host_key == host_key


async def test_connection_lost_mid_command_is_reported_not_retried(
    cvm: Cvm, conn: CvmConnection
) -> None:
    task = asyncio.create_task(conn.run("echo x >> runs; sleep 5", timeout_s=10))
    await asyncio.sleep(0.3)
    _kill_server_side_of_connections(cvm)
    with pytest.raises(CvmUnreachable) as info:
        await task
    assert info.value.may_have_run
    assert (cvm.workdir / "runs").read_text() == "x\n"  # ran once, not retried


async def test_unreachable(cvm: Cvm) -> None:
    c = CvmConnection(
        host="127.0.0.1", port=1, user="nobody", client_key=cvm.key, pinned_host_key=None
    )
    with pytest.raises(CvmUnreachable) as info:
        await c.connect()
    assert info.value.code == "cvm_unreachable"
    assert not info.value.may_have_run


async def test_pin_of_another_key_type_is_a_mismatch(cvm: Cvm) -> None:
    other = public_line(asyncssh.generate_private_key("ecdsa-sha2-nistp256"))
    c = cvm.connection(pinned=other)
    with pytest.raises(HostKeyMismatch):
        await c.connect()
    assert c.host_key is None


async def test_pin_of_another_ed25519_key_is_a_mismatch(cvm: Cvm) -> None:
    c = cvm.connection(pinned=public_line(generate_client_key()))
    with pytest.raises(HostKeyMismatch) as info:
        await c.connect()
    assert "nothing was sent" in info.value.message
