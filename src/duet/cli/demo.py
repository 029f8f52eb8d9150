"""`duet demo`: the whole story on this machine, with a real sshd as the CVM and the
SIMULATED TEE as the controller's enclave; ends in the user's verification report."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from duet.cli.render import render_report, render_timeline
from duet.client.api import ReadClient
from duet.client.errors import ClientError
from duet.client.http import Http
from duet.client.owner import OwnerClient
from duet.client.owner_check import verified_intents
from duet.client.verify import verify
from duet.cvm.cleanup import delete_all_local
from duet.ledger import entries, keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_controller(data: Path, owner_pub: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(data),
           "--listen", f"127.0.0.1:{port}", "--tee", "simulated", "--owner-key", str(owner_pub)]
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with Http(url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"controller exited with status {proc.returncode}")
            try:
                ReadClient(http).controller()
                return
            except ClientError:
                time.sleep(0.1)
    raise RuntimeError("controller did not become ready in time")


def run_demo(console: Console, *, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="duet-demo-"))
    os.chmod(work, 0o755)  # noqa: S103 - local CVM users must traverse it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = keys.Ed25519PrivateKey.generate()
    (work / "owner.key.pub").write_bytes(keys.public_pem(key.public_key()))
    proc = start_controller(work / "data", work / "owner.key.pub", port, work / "controller.log")
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        console.print(f"\n[bold]{step}. {text}[/]")

    try:
        console.print("duet demo — controller on a SIMULATED SGX TEE, one local CVM (a real OpenSSH sshd)")
        wait_ready(url, proc)
        owner = OwnerClient(key, url)
        info = owner.api.controller()
        console.print(f"controller {info['controller_id'][:16]}… listening on {url} (tee {info['tee']}, SIMULATED)")

        say("The owner creates a CVM (signed cvm.create intent)")
        cvm = owner.create("local", name="demo")
        cid = cvm["id"]
        console.print(f"CVM {cid}: {cvm['status']}, {cvm['mode']}, pinned host key {cvm['host_key'][:40]}…")

        say("In-update: the owner installs and configures the service")
        for command in ("id -un", "echo 'hello from the CVM' > service.conf && cat service.conf",
                        "uname -sr", "sha256sum service.conf"):
            res = owner.run(cid, command)
            text = base64.b64decode(res["stdout"]).decode(errors="replace").strip()
            console.print(f"$ {command}\n  → exit {res['exit_status']}: {text}", markup=False)

        say("The owner puts the CVM in-service")
        view = owner.mode(cid, "in-service")
        console.print(f"CVM is {view['mode']} (epoch {view['epoch']})")

        say("In-service, a command is refused — and the refusal is logged")
        try:
            owner.run(cid, "touch /tmp/sneaky")
            console.print("[red]the command was NOT refused[/]")
            return 1
        except ClientError as exc:
            console.print(f"refused: [{exc.code}] {exc.message} (log entry {exc.index})", markup=False)
        res = owner.action(cid, "health")
        console.print(f"the policy's read-only action 'health' runs: exit {res['exit_status']}")

        say("The CVM's log")
        with Http(url) as http:
            api = ReadClient(http)
            decoded = [entries.decode(leaf) for leaf in api.leaves(cid, api.tree_size(cid))]
        render_timeline(console, decoded, verified_intents(decoded))

        say("A service user verifies the controller and the CVM (trusting the SIMULATED root)")
        with Http(url) as http:
            report, _ = verify(http, cid, trust_simulated=True, state_dir=work / "user-state")
        render_report(console, report)
        if keep:
            console.print(f"\ndata kept in {work}")
        return 0 if report.ok else 3
    except ClientError as exc:
        console.print(f"demo failed: [{exc.code}] {exc.message}", markup=False)
        return 1
    except RuntimeError as exc:
        console.print(f"demo failed: {exc}; controller log: {work / 'controller.log'}", markup=False)
        keep = True
        return 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        # Local CVMs outlive the controller on purpose (crash tolerance); the demo cleans up.
        delete_all_local(work / "data" / "cvms")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

