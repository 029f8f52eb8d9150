"""What duet costs per command, against the direct way, in one run. Prints JSON.

- latency: `true` through duet (signed intent -> HTTP -> durable log -> SSH -> durable log
  -> response) vs. `true` over a persistent asyncssh connection to an identical local sshd
  (same provider, same config, same user kind); p50/p95 and the p50 ratio;
- throughput: commands/s with 8 CVMs driven concurrently vs. 1.

Usage: python bench/overhead.py [--n 300] [--per-cvm 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from duet.cvm.cleanup import delete_all_local
from duet.cvm.local import LocalProvider
from duet.cvm.ssh import CvmConnection, generate_client_key, public_line
from duet.ledger import keys
from helpers import ControllerProc


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def stats(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(xs, 50), 3), "p95_ms": round(pct(xs, 95), 3), "mean_ms": round(statistics.fmean(xs), 3)}


async def direct(base: Path, n: int, per_cvm: int) -> tuple[list[float], float, float]:
    """The direct way: persistent asyncssh connections to identical local sshds.
    Returns latencies, and commands/s with 1 and with 8 CVMs driven concurrently."""
    provider = LocalProvider(base)
    conns = []
    for i in range(8):
        key = generate_client_key()
        prov = await provider.create(f"bench{i:04d}direct", authorized_key=public_line(key), spec={})
        conn = CvmConnection(host=prov.host, port=prov.port, user=prov.user, client_key=key, pinned_host_key=None)
        await conn.connect()
        conns.append(conn)
    for _ in range(20):
        await conns[0].run("true")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conns[0].run("true")
        times.append((time.perf_counter() - t0) * 1000)

    async def drive(conn: CvmConnection) -> None:
        for _ in range(per_cvm):
            await conn.run("true")

    rates = []
    for group in (conns[:1], conns):
        t0 = time.perf_counter()
        await asyncio.gather(*(drive(c) for c in group))
        rates.append(len(group) * per_cvm / (time.perf_counter() - t0))
    for i, conn in enumerate(conns):
        await conn.close()
        await provider.delete(f"bench{i:04d}direct")
    return times, rates[0], rates[1]


def interleaved_latency(c: ControllerProc, cvm: str, base: Path, n: int) -> tuple[list[float], list[float]]:
    """Alternate one direct command and one through duet, so both see the same machine
    load (other processes on a 2-core machine move absolute figures a lot)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    provider = LocalProvider(base)
    key = generate_client_key()
    prov = on_loop(provider.create("bench9999direct", authorized_key=public_line(key), spec={}))
    conn = CvmConnection(host=prov.host, port=prov.port, user=prov.user, client_key=key, pinned_host_key=None)
    on_loop(conn.connect())

    async def timed_direct() -> float:
        t0 = time.perf_counter()
        await conn.run("true")
        return (time.perf_counter() - t0) * 1000

    owner = c.owner()
    for _ in range(20):
        owner.run(cvm, "true")
        on_loop(timed_direct())
    direct_times, duet_times = [], []
    for _ in range(n):
        direct_times.append(on_loop(timed_direct()))
        t0 = time.perf_counter()
        res = owner.run(cvm, "true")
        duet_times.append((time.perf_counter() - t0) * 1000)
        assert res["exit_status"] == 0
    on_loop(conn.close())
    on_loop(provider.delete("bench9999direct"))
    loop.call_soon_threadsafe(loop.stop)
    return direct_times, duet_times


def throughput(c: ControllerProc, cvms: list[str], per_cvm: int) -> float:
    def drive(cvm: str) -> None:
        owner = c.owner()
        for _ in range(per_cvm):
            owner.run(cvm, "true")

    threads = [threading.Thread(target=drive, args=(cvm,)) for cvm in cvms]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(cvms) * per_cvm / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--per-cvm", type=int, default=60)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    os.chmod(work, 0o755)
    c = ControllerProc(data=work / "data", owner_key=keys.Ed25519PrivateKey.generate())
    try:
        _, direct_one, direct_eight = asyncio.run(direct(work / "direct", 20, args.per_cvm))
        c.start()
        owner = c.owner()
        cvms = [owner.create("local")["id"] for _ in range(8)]
        direct_times, through = interleaved_latency(c, cvms[0], work / "direct2", args.n)
        one = throughput(c, cvms[:1], args.per_cvm)
        eight = throughput(c, cvms, args.per_cvm)
        d, t = stats(direct_times), stats(through)
        print(json.dumps({
            "bench": "overhead",
            "command": "true",
            "n": args.n,
            "direct_asyncssh": d,
            "through_duet": t,
            "ratio_p50": round(t["p50_ms"] / d["p50_ms"], 3),
            "target_ratio_p50": 1.5,
            "throughput_1_cvm_cmds_per_s": round(one, 1),
            "throughput_8_cvms_cmds_per_s": round(eight, 1),
            "scaling_8_vs_1": round(eight / one, 2),
            "target_scaling": 4.0,
            "direct_throughput_1_cvm_cmds_per_s": round(direct_one, 1),
            "direct_throughput_8_cvms_cmds_per_s": round(direct_eight, 1),
            "direct_scaling_8_vs_1": round(direct_eight / direct_one, 2),
            "cpus": os.cpu_count(),
        }, indent=2))
    finally:
        c.kill()
        delete_all_local(work / "data" / "cvms")
        delete_all_local(work / "direct")


if __name__ == "__main__":
    main()
