"""What the replicated store (`--store etcd://`) costs per command, in one run. Prints JSON.

`true` three ways, interleaved one after the other so all three see the same machine load:
direct over a persistent asyncssh connection to an identical local sshd; through a
controller with the embedded SQLite store; through a controller whose logs, nonces and
state live in etcd (a real etcd-server on 127.0.0.1 started here, or DUET_TEST_ETCD).
Each command through duet is: signed intent -> HTTP -> durable write-ahead entry -> SSH
-> durable result -> response; with etcd both durable writes are fenced etcd
transactions (and the local replica's commit).

Usage: python bench/store.py [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import stats

from duet.cvm.cleanup import delete_all_local
from duet.cvm.local import LocalProvider
from duet.cvm.ssh import CvmConnection, generate_client_key, public_line
from duet.ledger import keys
from etcd_server import EtcdServer
from helpers import ControllerProc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="duet-bench-store-"))
    os.chmod(work, 0o755)
    server = None
    address = os.environ.get("DUET_TEST_ETCD")
    if not address:
        server = EtcdServer(work / "etcd").start()
        address = server.address
    embedded = ControllerProc(data=work / "embedded" / "data", owner_key=keys.Ed25519PrivateKey.generate())
    replicated = ControllerProc(data=work / "etcd-ctl" / "data", owner_key=keys.Ed25519PrivateKey.generate())
    for c in (embedded, replicated):
        c.data.parent.mkdir(parents=True)
        os.chmod(c.data.parent, 0o755)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    provider = LocalProvider(work / "direct")
    try:
        embedded.start()
        replicated.start("--store", f"etcd://{address}")
        owners = {"embedded": embedded.owner(), "etcd": replicated.owner()}
        cvms = {name: owner.create("local")["id"] for name, owner in owners.items()}
        key = generate_client_key()
        prov = on_loop(provider.create("bench9998direct", authorized_key=public_line(key), spec={}))
        conn = CvmConnection(host=prov.host, port=prov.port, user=prov.user, client_key=key, pinned_host_key=None)
        on_loop(conn.connect())

        async def direct() -> None:
            await conn.run("true")

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1000

        runs = {
            "direct_asyncssh": lambda: on_loop(direct()),
            "embedded_store": lambda: owners["embedded"].run(cvms["embedded"], "true"),
            "etcd_store": lambda: owners["etcd"].run(cvms["etcd"], "true"),
        }
        for _ in range(20):
            for fn in runs.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.n):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        s = {name: stats(xs) for name, xs in times.items()}
        on_loop(conn.close())
        print(json.dumps({
            "bench": "store",
            "command": "true",
            "n": args.n,
            "etcd": f"etcd-server on {address} (one member, its own fsync per write)",
            **s,
            "ratio_p50_etcd_vs_embedded": round(s["etcd_store"]["p50_ms"] / s["embedded_store"]["p50_ms"], 3),
            "ratio_p50_etcd_vs_direct": round(s["etcd_store"]["p50_ms"] / s["direct_asyncssh"]["p50_ms"], 3),
            "ratio_p50_embedded_vs_direct": round(s["embedded_store"]["p50_ms"] / s["direct_asyncssh"]["p50_ms"], 3),
            "cpus": os.cpu_count(),
        }, indent=2))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        for c in (embedded, replicated):
            c.kill()
            delete_all_local(c.data / "cvms")
        delete_all_local(work / "direct")
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
