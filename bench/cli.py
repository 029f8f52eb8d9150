"""How fast the `duet` command line is as a whole process, next to a new `ssh` process,
measured in the same run on the same machine. Prints JSON.

- `duet cvm run ID -- true`: a new Python process that signs an intent, sends it over
  plain HTTP on loopback to a SIMULATED controller, which logs it, runs `true` on a local
  CVM over its held SSH connection, logs the result and answers (the `duet` command's lean
  path, `duet/cli/lean.py`); `..._typer` is the same command through the full typer CLI
  (`python -m duet.cli.main`), for comparison;
- `duet verify ID --trust-simulated`: a new process that verifies the controller's quote
  and the CVM's whole log;
- `duet --version`: the interpreter and the CLI's imports alone;
- `ssh -p PORT USER@127.0.0.1 true`: a new OpenSSH client process against an identical
  local sshd (same provider and configuration, its own throwaway key).

Medians of --n runs each, interleaved so that load on the machine hits all alike; the
ratios are each median over ssh's.

With `--tls` the controller serves RA-TLS (`https://`, SIMULATED SGX quote in its
certificate) and `cvm run` is timed twice: with the RA-TLS verdict cache
(`client/ratls_cache.py`, the default) and without it (`DUET_RATLS_CACHE_TTL=0`: every
process verifies the quote in the handshake).

Usage: python bench/cli.py [--n 10] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from duet.cvm.cleanup import delete_all_local
from duet.cvm.local import LocalProvider
from duet.cvm.ssh import export_private, generate_client_key, public_line
from duet.ledger import keys
from helpers import ControllerProc


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    dt = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--tls", action="store_true", help="RA-TLS controller (https://)")
    args = ap.parse_args()
    n = args.n
    work = Path(tempfile.mkdtemp(prefix="duet-bench-cli-"))
    os.chmod(work, 0o755)  # local CVM users must traverse it
    duet = str(Path(sys.executable).parent / "duet")
    ctl = ControllerProc(data=work / "data", owner_key=keys.Ed25519PrivateKey.generate(), tls=args.tls)
    provider = LocalProvider(work / "direct")
    loop = asyncio.new_event_loop()
    try:
        ctl.start()
        key_path = work / "owner.key"
        key_path.write_bytes(keys.private_pem(ctl.owner_key))
        env = {**os.environ, "DUET_CONTROLLER": ctl.url, "DUET_OWNER_KEY": str(key_path),
               "DUET_STATE_DIR": str(work / "state"), "XDG_CONFIG_HOME": str(work / "cfg"),
               "DUET_TRUST_SIMULATED": "1"}
        cvm = ctl.owner().create("local")["id"]

        ssh_key = generate_client_key()
        ssh_key_path = work / "ssh.key"
        ssh_key_path.write_bytes(export_private(ssh_key))
        os.chmod(ssh_key_path, 0o600)
        prov = loop.run_until_complete(provider.create("benchclissh", authorized_key=public_line(ssh_key), spec={}))
        ssh = ["ssh", "-i", str(ssh_key_path), "-p", str(prov.port), "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               f"{prov.user}@127.0.0.1", "true"]
        no_cache = {**env, "DUET_RATLS_CACHE_TTL": "0"}
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            "duet_cvm_run_true": ([duet, "cvm", "run", cvm, "--", "true"], env),
            "duet_cvm_run_true_typer": ([sys.executable, "-m", "duet.cli.main", "cvm", "run", cvm, "--", "true"], env),
            "duet_verify": ([duet, "verify", cvm, "--trust-simulated"], env),
            "duet_version": ([duet, "--version"], env),
            "ssh_true": (ssh, env),
        }
        if args.tls:
            cases["duet_cvm_run_true_no_ratls_cache"] = ([duet, "cvm", "run", cvm, "--", "true"], no_cache)
        for argv, e in cases.values():  # warm the page cache and the pyc files
            timed(argv, e)
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(n):
            for name, (argv, e) in cases.items():
                samples[name].append(timed(argv, e))
        med = {k: statistics.median(v) for k, v in samples.items()}
        print(json.dumps({
            "n": n,
            "median_ms": {k: round(v, 1) for k, v in med.items()},
            "min_ms": {k: round(min(v), 1) for k, v in samples.items()},
            "ratio_to_ssh": {k: round(v / med["ssh_true"], 2) for k, v in med.items() if k != "ssh_true"},
            "note": "whole-process wall time; controller SIMULATED, "
                    + ("RA-TLS (https) on loopback" if args.tls else "plain HTTP on loopback") + "; local CVM (sshd)",
        }, indent=2))
    finally:
        try:
            loop.run_until_complete(provider.delete("benchclissh"))
        finally:
            loop.close()
            ctl.kill()
            delete_all_local(work / "data" / "cvms")
            delete_all_local(work / "direct")


if __name__ == "__main__":
    main()
