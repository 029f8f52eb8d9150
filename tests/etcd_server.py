"""A real etcd for the replicated-store tests: Debian's etcd-server on 127.0.0.1, free
ports, a temporary data dir (scripts/ensure-etcd.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from helpers import free_port


@dataclass
class EtcdServer:
    base: Path
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.address}"

    def start(self, data: Path | None = None) -> EtcdServer:
        exe = shutil.which("etcd")
        if exe is None:
            raise RuntimeError("etcd is not installed: run `make setup` (scripts/ensure-etcd.sh)")
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.base / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "--name", "duet-test", "--data-dir", str(data or self.base / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"duet-test={peer}",
             # A command's result entry carries up to 1 MiB of each stream.
             "--max-request-bytes", str(8 << 20), "--log-level", "warn"],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.base / 'etcd.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("etcd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
