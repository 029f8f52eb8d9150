"""Ledger benchmark: durable append rates against the disk's fsync limit, proof costs at
10^3/10^5/10^6 leaves, and full-verification speed. Prints one JSON object.

    .venv/bin/python bench/ledger.py            # full run (builds a 10^6-leaf log)
    .venv/bin/python bench/ledger.py --quick    # 10^3/10^4/10^5, shorter timings

Targets (issue 2): single appends within 2x of the raw fsync rate, batches of 100
>= 20,000 entries/s, a proof at 10^6 leaves < 2 ms, full verification >= 300,000 leaves/s.
The raw fsync rate is measured in the same run and on the same file system as the
database, because it is the physical limit of a durable append.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from duet.ledger import merkle
from duet.ledger.store import JournalMode, LedgerStore

LEAF_TEMPLATE = (
    '{"command_index":%d,"duration_ms":12.5,"exit_status":0,"stderr":"",'
    '"stderr_bytes":0,"stderr_encoding":"utf-8","stderr_sha256":"e3b0c44298fc1c149afbf4c8996fb924'
    '27ae41e4649b934ca495991b7852b855","stderr_truncated":false,"stdout":"ok %d\\n",'
    '"stdout_bytes":6,"stdout_encoding":"utf-8","stdout_sha256":"%064x",'
    '"stdout_truncated":false,"time":"2026-11-26T21:00:00.000000Z","type":"result","v":1}'
)


def make_leaf(i: int) -> bytes:
    """A leaf shaped like a real `result` entry (~400 bytes), distinct per index."""
    return (LEAF_TEMPLATE % (i, i, i)).encode()


def fsync_rate(directory: Path, seconds: float) -> float:
    """fsyncs/s for a 4 KiB overwrite + fsync loop: the cost of one durable commit."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def timed_loop(fn: Callable[[int], object], seconds: float, minimum: int = 20) -> float:
    """Calls/s of fn(i) over about ``seconds``."""
    count, start = 0, time.perf_counter()
    while count < minimum or time.perf_counter() - start < seconds:
        fn(count)
        count += 1
    return count / (time.perf_counter() - start)


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"median_ms": round(statistics.median(samples) * 1e3, 4), "p99_ms": round(p99 * 1e3, 4)}


def measure(fn: Callable[[], object], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def bench_appends(directory: Path, journal: JournalMode, seconds: float) -> dict[str, object]:
    with LedgerStore(directory / f"appends-{journal}.db", journal_mode=journal) as store:
        store.create_log("single")
        store.create_log("batch")
        single = timed_loop(lambda i: store.append("single", [make_leaf(i)]), seconds)
        batch = [make_leaf(i) for i in range(100)]
        batches = timed_loop(lambda i: store.append("batch", batch), seconds)
    return {"single_appends_per_s": round(single), "batch100_entries_per_s": round(batches * 100)}


def bench_size(directory: Path, n: int, runs: int, rng: random.Random) -> dict[str, object]:
    out: dict[str, object] = {"leaves": n}
    with LedgerStore(directory / f"tree-{n}.db") as store:
        store.create_log("log")
        start, chunk = time.perf_counter(), 10_000
        for lo in range(0, n, chunk):
            store.append("log", [make_leaf(i) for i in range(lo, min(n, lo + chunk))])
        out["build_entries_per_s"] = round(n / (time.perf_counter() - start))
        head = store.tree_head("log")

        out["tree_head_past_size"] = measure(
            lambda: store.tree_head("log", rng.randint(1, n)), runs
        )
        out["inclusion_proof_at_head"] = measure(
            lambda: store.inclusion_proof("log", rng.randrange(n), n), runs
        )

        def incl_past() -> None:
            size = rng.randint(1, n)
            store.inclusion_proof("log", rng.randrange(size), size)

        out["inclusion_proof_past_size"] = measure(incl_past, runs)

        def cons() -> None:
            new = rng.randint(1, n)
            store.consistency_proof("log", rng.randint(1, new), new)

        out["consistency_proof"] = measure(cons, runs)
        out["consistency_proof_to_head"] = measure(
            lambda: store.consistency_proof("log", rng.randint(1, n), n), runs
        )

        # Client-side verification of proofs against the head.
        cases = []
        for _ in range(runs):
            i = rng.randrange(n)
            cases.append((i, store.inclusion_proof("log", i, n)))
        it = iter(cases)

        def verify_incl() -> None:
            i, proof = next(it)
            merkle.verify_inclusion(merkle.leaf_hash(make_leaf(i)), i, n, proof, head.root_hash)

        out["verify_inclusion"] = measure(verify_incl, runs)
        ccases = []
        for _ in range(runs):
            m = rng.randint(1, n)
            ccases.append(
                (m, store.tree_head("log", m).root_hash, store.consistency_proof("log", m, n))
            )
        cit = iter(ccases)

        def verify_cons() -> None:
            m, old_root, proof = next(cit)
            merkle.verify_consistency(m, n, proof, old_root, head.root_hash)

        out["verify_consistency"] = measure(verify_cons, runs)

        start = time.perf_counter()
        verified = store.verify_log("log")
        elapsed = time.perf_counter() - start
        assert verified == head
        out["full_verification_leaves_per_s"] = round(n / elapsed)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller trees, shorter runs")
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: tmp)")
    args = parser.parse_args()
    sizes = [10**3, 10**4, 10**5] if args.quick else [10**3, 10**5, 10**6]
    seconds = 1.0 if args.quick else 3.0
    runs = 200 if args.quick else 1000
    rng = random.Random(2)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        raw = fsync_rate(directory, seconds)
        appends = {j: bench_appends(directory, j, seconds) for j in ("wal", "delete")}
        trees = {str(n): bench_size(directory, n, runs, rng) for n in sizes}

    wal = appends["wal"]
    single = float(wal["single_appends_per_s"])  # type: ignore[arg-type]
    batch = float(wal["batch100_entries_per_s"])  # type: ignore[arg-type]
    largest = trees[str(sizes[-1])]
    proof_ms = max(
        largest[k]["median_ms"]  # type: ignore[index]
        for k in ("inclusion_proof_at_head", "inclusion_proof_past_size", "consistency_proof")
    )
    verify_rate = min(t["full_verification_leaves_per_s"] for t in trees.values() if t["leaves"] >= 10**5)  # type: ignore[type-var]
    report = {
        "quick": args.quick,
        "python": sys.version.split()[0],
        "raw_fsync_per_s": round(raw),
        "appends": appends,
        "single_append_vs_fsync": round(single / raw, 3),
        "trees": trees,
        "targets": {
            "single_appends_within_2x_of_fsync": {
                "target": ">= 0.5 x raw fsync rate",
                "got": round(single / raw, 3),
                "ok": single >= raw / 2,
            },
            "batch100_entries_per_s": {"target": 20000, "got": round(batch), "ok": batch >= 20000},
            f"proof_median_ms_at_{sizes[-1]}": {
                "target": "< 2 ms",
                "got": proof_ms,
                "ok": proof_ms < 2.0,
            },
            "full_verification_leaves_per_s": {
                "target": 300000,
                "got": verify_rate,
                "ok": verify_rate >= 300000,  # type: ignore[operator]
            },
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
