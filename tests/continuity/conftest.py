from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def cvm_root(tmp_path: Path) -> Iterator[Path]:
    """Local CVMs outside every controller's data dir (a lost host loses only its data dir)."""
    os.chmod(tmp_path, 0o755)
    root = tmp_path / "host"
    yield root
    from duet.cvm.cleanup import delete_all_local

    delete_all_local(root / "cvms")
