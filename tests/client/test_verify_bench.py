"""`bench/verify.py` end to end over real HTTP: the full verification streams (its peak
memory stays under 200 MB at 10^5 entries: `make test-slow`), and the second run fetches
only the ten new entries. Timings are printed, never asserted."""

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
def test_full_verify_of_100k_entries_streams_under_200_mb(tmp_path: Path) -> None:
    result = _bench().bench(100_000, tmp_path)
    print(json.dumps(result))
    _check(result, 100_000)
    full = result["full"]
    assert isinstance(full, dict)
    assert full["peak_mb"] < 200, full
