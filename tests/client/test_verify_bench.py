"""`bench/verify.py` end to end over real HTTP: the full verification streams (its peak
memory stays under 200 MB and does not grow from 10^4 to 10^5 entries: `make test-slow`),
and the second run fetches only the ten new entries. Timings are printed, never asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "verify.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("duet_bench_verify", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(result: dict[str, object], n: int) -> None:
    full, inc = result["full"], result["incremental"]
    assert isinstance(full, dict) and isinstance(inc, dict)
    assert full["ok"] and inc["ok"], (full["failed"], inc["failed"])
    assert result["entries"] == full["fetched"] and n - 3 <= full["fetched"] <= n
    assert inc["new_entries"] == 10 and inc["fetched"] == 10


def test_small_bench_fetches_only_the_new_entries(tmp_path: Path) -> None:
    result = _bench().bench(300, tmp_path)
    print(json.dumps(result))
    _check(result, 300)


@pytest.mark.slow
def test_full_verify_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    """At 10^4 and 10^5 entries: the peak memory of a full verification is under 200 MB
    and the same within noise (20 MB; one digest per intent alone would add about 7 MB
    here, so the exact measure is the saved replay state, which must stay within 16 KiB:
    a digest per intent would add about 700 KiB)."""
    results = []
    for n in (10_000, 100_000):
        result = _bench().bench(n, tmp_path / str(n))
        print(json.dumps(result))
        _check(result, n)
        results.append(result["full"])
    small, big = results
    assert isinstance(small, dict) and isinstance(big, dict)
    assert small["peak_mb"] < 200 and big["peak_mb"] < 200, (small, big)
    assert abs(big["peak_mb"] - small["peak_mb"]) < 20, (small, big)
    assert big["cache_bytes"] < small["cache_bytes"] + 16 * 1024, (small["cache_bytes"], big["cache_bytes"])
