"""What witnessing costs on the command path, in one run. Prints JSON.

Three controllers, each with one local CVM, run the same `true` commands: one without
witnesses, one with a live `duet witness serve`, one whose witness accepts connections and
never answers (down, but not refusing). Reports p50/p95 latency of each, and how many
`heads` entries the burst of commands became in the controller log.

Usage: python bench/witnessing.py [--n 100]
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from duet.cvm.cleanup import delete_all_local
from duet.ledger import entries, keys
from duet.ledger.cosignature import Cosigner
from helpers import ControllerProc
from witness_proc import WitnessProc


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def blackhole() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(sock.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def run(base: Path, mode: str, n: int) -> dict[str, object]:
    base.mkdir()
    c = ControllerProc(data=base / "data", owner_key=keys.Ed25519PrivateKey.generate()).start()
    w = None
    hole = None
    try:
        owner = c.owner()
        if mode == "live":
            w = WitnessProc.following(base / "w", c)
            owner.set_witnesses([(w.vkey, w.url)], 1)
        elif mode == "down":
            hole, url = blackhole()
            owner.set_witnesses([(Cosigner("bench/down", keys.Ed25519PrivateKey.generate()).vkey(), url)], 1)
        cvm = owner.create("local")["id"]
        for _ in range(10):
            owner.run(cvm, "true")
        with c.http() as http:
            before = int(http.get_json("/v1/controller")["witnessing"]["controller_log_size"])
        times = []
        t_start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            owner.run(cvm, "true")
            times.append((time.perf_counter() - t0) * 1000)
        burst_s = time.perf_counter() - t_start
        time.sleep(6)  # one more heads tick
        with c.http() as http:
            after = int(http.get_json("/v1/controller")["witnessing"]["controller_log_size"])
            body = http.get_json("/v1/controller/log/entries", start=before, end=after)
        heads = sum(1 for x in body["entries"]
                    if entries.decode(base64.b64decode(x["leaf"]))["type"] == "heads")
        return {"p50_ms": round(pct(times, 50), 2), "p95_ms": round(pct(times, 95), 2),
                "mean_ms": round(statistics.fmean(times), 2), "commands": n, "cvm_entries": 3 * n,
                "burst_s": round(burst_s, 1), "heads_entries": heads}
    finally:
        c.kill()
        if w is not None:
            w.kill()
        if hole is not None:
            hole.close()
        delete_all_local(c.data / "cvms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = {mode: run(Path(tmp) / mode, mode, args.n) for mode in ("none", "live", "down")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
