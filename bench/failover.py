"""Failover time on the etcd store: from the primary's death (kill -9) to the first command
accepted by the standby. Prints JSON.

A chain of failovers, each over the same CVMs: primary P (build A) with `--cvms` local CVMs;
the owner approves builds A and B; a standby S (the other build) joins with
`--standby-of`; P is killed with SIGKILL and the clock starts; the owner retries `true` on
one CVM through S every 20 ms until it is accepted. S is then the primary of the next
round, and a fresh standby joins it. What the time holds: the lease TTL (etcd deletes the
dead primary's key only when its lease runs out), the standby's poll of the lease key
(0.25 s), opening the store as the primary (lease, replica rebuilt from etcd and verified),
the `promote` entry, and one key rotation per CVM before the first intent is accepted.
After the last round, `true` through the promoted standby gives the command p50 on the
etcd store (bench/store.py compares it with the embedded store and direct SSH).

Usage: python bench/failover.py [--rounds 3] [--cvms 3] [--lease-ttl 2] [--n 50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import stats

from duet.client.http import ClientError
from duet.cvm.cleanup import delete_all_local
from duet.ledger import keys
from etcd_server import EtcdServer
from helpers import ControllerProc

BUILDS = ("aa" * 32, "bb" * 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cvms", type=int, default=3)
    ap.add_argument("--lease-ttl", type=int, default=2)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-failover-"))
    os.chmod(work, 0o755)
    server = None
    address = os.environ.get("DUET_TEST_ETCD")
    if not address:
        server = EtcdServer(work / "etcd").start()
        address = server.address
    owner_key = keys.Ed25519PrivateKey.generate()
    root = work / "host"
    procs: list[ControllerProc] = []

    def controller(i: int, *extra: str) -> ControllerProc:
        base = work / f"c{i}"
        base.mkdir(mode=0o755)
        c = ControllerProc(data=base / "data", owner_key=owner_key)
        procs.append(c)
        return c.start("--store", f"etcd://{address}", "--lease-ttl", str(args.lease_ttl), "--cvm-root", str(root),
                       "--simulated-mrenclave", BUILDS[i % 2], *extra)

    rounds = []
    try:
        primary = controller(0)
        owner = primary.owner()
        cvms = [owner.create("local")["id"] for _ in range(args.cvms)]
        for build in BUILDS:
            owner.approve_build(mrenclave=build)
        for r in range(args.rounds):
            t0 = time.perf_counter()
            standby = controller(r + 1, "--standby-of", primary.url)
            joined = time.perf_counter() - t0
            primary.kill()
            killed = time.perf_counter()
            owner = standby.owner()
            while True:
                try:
                    owner.run(cvms[0], "true", timeout_s=30)
                    break
                except ClientError:
                    if time.perf_counter() - killed > 120:
                        raise
                    time.sleep(0.02)
            took = time.perf_counter() - killed
            rounds.append({"failover_s": round(took, 3), "beyond_lease_ttl_s": round(took - args.lease_ttl, 3),
                           "standby_join_s": round(joined, 3)})
            primary = standby
        times = []
        for _ in range(args.n):
            t = time.perf_counter()
            owner.run(cvms[0], "true")
            times.append((time.perf_counter() - t) * 1000)
        failovers = sorted(x["failover_s"] for x in rounds)
        print(json.dumps({
            "bench": "failover",
            "what": "kill -9 of the primary -> first command accepted by the standby (etcd store)",
            "etcd": f"etcd-server on {address} (one member)",
            "lease_ttl_s": args.lease_ttl,
            "cvms_rotated_per_failover": args.cvms,
            "rounds": rounds,
            "failover_median_s": failovers[len(failovers) // 2],
            "command_true_after_failover": stats(times),
            "command_overhead_vs_embedded_and_direct": "python bench/store.py (same machine)",
            "cpus": os.cpu_count(),
        }, indent=2))
    finally:
        for c in procs:
            c.kill()
        delete_all_local(root / "cvms")
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
