"""Test harness: a real controller process on a free port, with its own data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from duet.client.http import ClientError, Http
from duet.client.owner import OwnerClient
from duet.ledger import keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """Stop a process started in its own session, and everything it started: SIGTERM,
    then SIGKILL if it has not gone within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class ControllerProc:
    data: Path
    owner_key: keys.Ed25519PrivateKey
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    tls: bool = False
    with_owner_key: bool = True
    #: Run the controller under this command prefix (e.g. faketime), with these extra
    #: environment variables.
    prefix: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def owner_pub_path(self) -> Path:
        return self.data.parent / "owner.pub"

    def start(self, *extra: str) -> ControllerProc:
        self.owner_pub_path.write_bytes(keys.public_pem(self.owner_key.public_key()))
        cmd = [*self.prefix, sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(self.data),
               "--listen", f"127.0.0.1:{self.port}", *extra]
        if self.with_owner_key:
            cmd += ["--owner-key", str(self.owner_pub_path)]
        if self.tls:
            cmd.append("--tls")
        log = open(self.data.parent / "controller.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True,
                                     env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + 30
        with self.http(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"controller exited: {self.log()[-2000:]}")
                try:
                    http.get_json("/v1/controller")
                    return self
                except ClientError:
                    time.sleep(0.05)
        raise RuntimeError("controller did not start")

    def log(self) -> str:
        return (self.data.parent / "controller.log").read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def owner(self) -> OwnerClient:
        return OwnerClient(self.owner_key, self.url, http=self.http())

    def http(self, timeout: float = 660.0) -> Http:
        # RA-TLS pins live in the test's own state dir, never the user's.
        return Http(self.url, timeout=timeout, trust_simulated=True, state_dir=self.data.parent / "client-state")
