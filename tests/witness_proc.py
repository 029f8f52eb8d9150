"""Test harness: a `duet witness serve` process following one controller's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from duet.ledger.cosignature import CosignatureVerifier, Cosigner
from duet.ledger.keys import Ed25519PrivateKey
from helpers import ControllerProc, free_port


@dataclass
class WitnessProc:
    base: Path
    name: str
    origin: str
    log_vkey: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def following(cls, base: Path, c: ControllerProc, name: str = "witness.test/w1") -> WitnessProc:
        with c.http() as http:
            info = http.get_json("/v1/controller")
        base.mkdir(parents=True, exist_ok=True)
        signer = Cosigner(name, Ed25519PrivateKey.generate())
        (base / "witness.key").write_text(signer.skey() + "\n")
        w = cls(base, name, f"duet/{info['controller_id']}/controller", str(info["note_verifier_key"]),
                free_port())
        return w.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def vkey(self) -> str:
        return Cosigner.from_skey((self.base / "witness.key").read_text()).vkey()

    @property
    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier.from_vkey(self.vkey)

    def start(self) -> WitnessProc:
        cmd = [sys.executable, "-m", "duet.cli.main", "witness", "serve", "--data", str(self.base / "data"),
               "--key", str(self.base / "witness.key"), "--log", f"{self.origin}={self.log_vkey}",
               "--listen", f"127.0.0.1:{self.port}"]
        log = open(self.base / "witness.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.base / "witness.log").read_text()[-2000:])
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("witness did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None
