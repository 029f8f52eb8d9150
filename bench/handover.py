"""Handover and recovery time for N CVMs, in one run. Prints JSON.

* Handover: build A owns N local CVMs (each a real sshd, with its SIMULATED secure
  processor under a CVM root outside the controllers' data dirs); the owner approves build
  B; B starts with `--join`. Timed from B's start to B answering requests, which it does
  only after it rotated every CVM's SSH client key (`key_rotated` in each CVM log): the
  handover itself (attestation both ways, the `handover` entry, the snapshot of state and
  ledger) plus N rotations.
* Recovery: the owner turns recovery on (2 of 3 holders); B restarts at another simulated
  CPUSVN (a microcode update) with `--recover`; two holders hand their shares over (the
  holder's side of `duet controller recover`, in process). Timed from the first share to
  the controller answering requests: K rebuilt and checked, `recovered`, K replaced
  (`state_key_rotated`), N CVM key rotations.

Usage: python bench/handover.py [--n 100] [--parallel 4]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from duet.client.recovery import recover
from duet.cvm.cleanup import delete_all_local
from duet.ledger import keys
from duet.ledger import recovery as rc
from duet.ledger.operations import Op
from helpers import ControllerProc

A, B = "aa" * 32, "bb" * 32


def _wait_serving(proc: ControllerProc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with proc.http(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                if "recovering" not in http.get_json("/v1/controller"):
                    return
            except Exception:
                pass
            time.sleep(0.05)
    raise RuntimeError("the controller did not come back")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="CVMs (each a local sshd)")
    ap.add_argument("--parallel", type=int, default=4, help="CVMs created at once")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-handover-"))
    os.chmod(work, 0o755)
    root = work / "host"
    owner_key = keys.Ed25519PrivateKey.generate()
    a = ControllerProc(data=work / "a" / "data", owner_key=owner_key)
    b = ControllerProc(data=work / "b" / "data", owner_key=owner_key)
    for c in (a, b):
        c.data.parent.mkdir(parents=True)
        os.chmod(c.data.parent, 0o755)
    try:
        a.start("--cvm-root", str(root), "--simulated-mrenclave", A)
        owner = a.owner()
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            cvms = list(pool.map(lambda i: a.owner().create("local", name=f"bench{i}")["id"], range(args.n)))
        create_s = time.monotonic() - t0
        owner.approve_build(mrenclave=B)

        t0 = time.monotonic()
        b.start("--join", a.url, "--cvm-root", str(root), "--simulated-mrenclave", B)
        handover_s = time.monotonic() - t0
        a.kill()
        owner_b = b.owner()
        assert owner_b.run(cvms[-1], "true", timeout_s=60)["exit_status"] == 0

        holders = [X25519PrivateKey.generate() for _ in range(3)]
        res = owner_b.submit(Op.CONTROLLER_RECOVERY, {"threshold": 2,
                                                      "holders": [rc.public_b64(h.public_key()) for h in holders]})
        shares = [rc.ShareFile(controller_id=res["controller_id"], controller_key=res["controller_key"],
                               owner_keys=tuple(res["owner_keys"]), index=s["index"], threshold=2,
                               holder_key=s["holder_key"], state_key_sha256=res["state_key_sha256"],
                               sealed=base64.b64decode(s["sealed"])) for s in res["shares"]]
        b.kill()
        t0 = time.monotonic()
        b.start("--cvm-root", str(root), "--simulated-mrenclave", B, "--simulated-cpusvn", "2", "--recover")
        session_s = time.monotonic() - t0
        t0 = time.monotonic()
        recover(b.url, shares[0], holders[0], trust_simulated=True)
        recover(b.url, shares[1], holders[1], trust_simulated=True)
        _wait_serving(b, timeout=60 + 10 * args.n)
        recovery_s = time.monotonic() - t0
        assert b.owner().run(cvms[0], "true", timeout_s=60)["exit_status"] == 0
        print(json.dumps({
            "simulated": True,
            "cvms": args.n,
            "create_s": round(create_s, 2),
            "handover_s": round(handover_s, 2),
            "handover_per_cvm_ms": round(1000 * handover_s / args.n, 1),
            "recovery_session_start_s": round(session_s, 2),
            "recovery_after_first_share_s": round(recovery_s, 2),
            "recovery_per_cvm_ms": round(1000 * recovery_s / args.n, 1),
        }, indent=1))
    finally:
        a.kill()
        b.kill()
        delete_all_local(root / "cvms")


if __name__ == "__main__":
    main()
