"""The demo story, through the `duet` command line, against a real sshd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from duet.client.http import ClientError, Http
from helpers import free_port


def duet(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    if check:
        assert r.returncode == 0, f"duet {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_cli_story(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    port = free_port()
    env = {**os.environ, "DUET_CONTROLLER": f"http://127.0.0.1:{port}", "DUET_OWNER_KEY": str(tmp_path / "owner.key"),
           "DUET_STATE_DIR": str(tmp_path / "user-state")}
    out = duet("keygen", "--out", str(tmp_path / "owner.key"), env=env)
    assert "owner key id" in out.stdout
    assert oct((tmp_path / "owner.key").stat().st_mode & 0o777) == "0o600"
    again = duet("keygen", "--out", str(tmp_path / "owner.key"), env=env, check=False)
    assert again.returncode == 1 and "exists" in again.stderr

    log = open(tmp_path / "controller.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(tmp_path / "data"),
         "--listen", f"127.0.0.1:{port}", "--owner-key", str(tmp_path / "owner.key.pub")],
        stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        with Http(env["DUET_CONTROLLER"], timeout=2) as http:
            while True:
                try:
                    http.get_json("/v1/controller")
                    break
                except ClientError:
                    assert time.monotonic() < deadline and server.poll() is None
                    time.sleep(0.05)
        info = duet("controller", "info", env=env)
        assert "SIMULATED" in info.stdout

        created = duet("cvm", "create", "--provider", "local", "--name", "web", env=env)
        cvm = created.stdout.strip().splitlines()[-1]
        assert len(cvm) == 16 and "SIMULATED" in created.stderr  # human lines go to stderr when piped

        run = duet("cvm", "run", cvm, "--", "echo", "hello", env=env)
        assert run.stdout == "hello\n"
        failing = duet("cvm", "run", cvm, "--", "sh", "-c", "echo oops >&2; exit 5", env=env, check=False)
        assert failing.returncode == 5 and "oops" in failing.stderr

        duet("cvm", "mode", cvm, "in-service", env=env)
        refused = duet("cvm", "run", cvm, "--", "touch", "/tmp/nope", env=env, check=False)
        assert refused.returncode == 3
        assert "forbidden_in_mode" in refused.stderr and "logged as entry" in refused.stderr

        health = duet("cvm", "action", cvm, "health", env=env)
        assert "load average" in health.stdout

        listing = duet("cvm", "list", env=env)
        assert cvm in listing.stdout and "in-service" in listing.stdout

        timeline = duet("log", cvm, env=env)
        assert "refused [forbidden_in_mode]" in timeline.stdout and "create local" in timeline.stdout
        as_json = duet("log", cvm, "--entries", "--json", env=env)
        assert '"type": "genesis"' in as_json.stdout

        plain = duet("verify", cvm, env=env, check=False)
        assert plain.returncode == 3 and "SIMULATED" in plain.stdout  # refuses a simulated TEE by default
        verified = duet("verify", cvm, "--trust-simulated", env=env)
        assert "verdict: VERIFIED SIMULATED" in verified.stdout
        # The next verify resumes from this one (nothing new to fetch); --full fetches all.
        again = json.loads(duet("verify", cvm, "--trust-simulated", "--json", env=env).stdout)
        assert again["ok"] and again["checkpoint"]["fetched"] == 0
        full = json.loads(duet("verify", cvm, "--trust-simulated", "--full", "--json", env=env).stdout)
        assert full["ok"] and full["checkpoint"]["fetched"] == full["checkpoint"]["size"]

        unknown = duet("cvm", "show", "0" * 16, env=env, check=False)
        assert unknown.returncode == 1 and "unknown_cvm" in unknown.stderr

        duet("cvm", "delete", cvm, "--yes", env=env)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
        from duet.cvm.cleanup import delete_all_local

        delete_all_local(tmp_path / "data" / "cvms")


def test_no_controller_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "DUET_CONTROLLER": f"http://127.0.0.1:{free_port()}"}
    r = duet("cvm", "list", env=env, check=False)
    assert r.returncode == 1 and "controller_unreachable" in r.stderr


def test_demo_runs_and_verifies() -> None:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "demo"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "verdict: VERIFIED SIMULATED" in r.stdout
    assert "refused: [forbidden_in_mode]" in r.stdout
