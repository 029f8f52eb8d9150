"""Crash safety: a child process appends in a loop and is killed with SIGKILL at random
points; every append it reported as committed must survive, and the log must reopen
consistent and keep growing."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from duet.ledger import merkle
from duet.ledger.store import LedgerStore

KILLS = 20

# The child prints "<size> <root hex>" after each append *returns*, i.e. after the store
# said it was durable; whatever it printed is what it was told was committed.
CHILD = r"""
import random, sys
from duet.ledger.store import LedgerStore

def leaf(i):
    return (f"crash-leaf-{i}-" + "x" * (i % 13)).encode()

path, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
store = LedgerStore(path, journal_mode=journal)
if not store.has_log("crash"):
    store.create_log("crash")
n = store.tree_head("crash").size
print("ready", n, flush=True)
while True:
    k = rng.choice([1, 1, 1, 2, 5, 20, 100])
    head = store.append("crash", [leaf(i) for i in range(n, n + k)])
    n = head.size
    print(n, head.root_hash.hex(), flush=True)
"""


def leaf(i: int) -> bytes:
    return (f"crash-leaf-{i}-" + "x" * (i % 13)).encode()


def run_and_kill(path: Path, journal: str, seed: int, rng: random.Random) -> list[tuple[int, str]]:
    """Start the child, SIGKILL it at a random moment, return what it reported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), journal, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    reported: list[tuple[int, str]] = []
    buffer = b""
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ)
    # Most kills land in the append loop; some while the child is still opening (and
    # possibly recovering) the database.
    early = rng.random() < 0.2
    deadline = time.monotonic() + (rng.uniform(0.0, 0.15) if early else 10.0)
    # A late kill lands after a few reported appends (however slow the machine is), a
    # random moment later: mid-append, mid-fsync or between appends.
    wanted = rng.randint(1, 4)
    armed = False
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            continue
        chunk = os.read(child.stdout.fileno(), 65536)
        if not chunk:
            break  # the child died by itself: reported below
        buffer += chunk
        if not early and not armed and b"ready" in buffer and buffer.count(b"\n") > wanted:
            armed = True
            deadline = time.monotonic() + rng.uniform(0.0, 0.03)
    child.send_signal(signal.SIGKILL)
    rest, err = child.communicate(timeout=10)
    sel.close()
    assert child.returncode == -signal.SIGKILL, err.decode()
    lines = (buffer + rest).decode().split("\n")
    for line in lines[:-1]:  # the last piece has no newline: never fully told
        if not line.startswith("ready"):
            size, root = line.split()
            reported.append((int(size), root))
    return reported


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_sigkill_during_appends_loses_nothing_committed(tmp_path: Path, journal: str) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(journal)
    confirmed = 0
    total_reports = 0
    for round_ in range(KILLS):
        reported = run_and_kill(path, journal, seed=round_, rng=rng)
        total_reports += len(reported)
        with LedgerStore(path, journal_mode=journal) as store:
            if not store.has_log("crash"):
                assert confirmed == 0 and not reported
                continue
            assert store.corrupt_logs() == {}
            head = store.tree_head("crash")
            if reported:
                confirmed = reported[-1][0]
            # Everything the child was told is there, with the roots it was told.
            assert head.size >= confirmed
            for size, root in reported:
                assert store.tree_head("crash", size).root_hash.hex() == root
            # The head matches a recomputation from the leaves, which are the expected
            # ones (a batch in flight at the kill is all there or not at all).
            leaves = store.leaves("crash", 0, head.size)
            assert leaves == [leaf(i) for i in range(head.size)]
            assert head.root_hash == merkle.root([merkle.leaf_hash(x) for x in leaves])
            assert store.verify_log("crash") == head
            # ... and appends continue.
            after = store.append("crash", [leaf(head.size)])
            assert after.size == head.size + 1
            merkle.verify_consistency(
                head.size,
                after.size,
                store.consistency_proof("crash", head.size, after.size),
                head.root_hash,
                after.root_hash,
            )
            confirmed = after.size
    assert total_reports >= KILLS, "the child was almost never killed mid-loop"
    assert not Path(str(path) + "-shm").exists()
