"""Fixtures for the CVM layer: real local CVMs (real sshd), one base dir per test.

Everything is unique per test (CVM ids, hence system users; ports come from the
kernel), so the suite is safe under pytest-xdist.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cvm_helpers import Cvm, new_id

from duet.cvm.local import LocalProvider
from duet.cvm.ssh import CvmConnection, generate_client_key, public_line

if shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:  # pragma: no cover
    pytest.skip("OpenSSH server not installed (make sshd)", allow_module_level=True)


@pytest.fixture
def base_dir(tmp_path: Path) -> Iterator[Path]:
    """As root, pytest's tmp_path (0700, like a controller's data dir) is fine. As an
    ordinary user sshd's StrictModes rejects authorized_keys below /tmp (world-writable)
    unless it is inside the home, so use a directory there."""
    if os.geteuid() == 0:
        yield tmp_path / "cvms"
        return
    parent = Path.home() / ".cache" / "duet-tests"
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = Path(tempfile.mkdtemp(prefix="cvm-", dir=parent))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def provider(base_dir: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider(base_dir)
    yield p
    for d in base_dir.iterdir() if base_dir.exists() else ():
        if (d / "state.json").exists():
            await p.delete(d.name)


@pytest.fixture
async def cvm(provider: LocalProvider) -> Cvm:
    key = generate_client_key()
    cvm_id = new_id()
    prov = await provider.create(cvm_id, authorized_key=public_line(key), spec={})
    return Cvm(provider, cvm_id, prov, key)


@pytest.fixture
async def conn(cvm: Cvm) -> AsyncIterator[CvmConnection]:
    c = cvm.connection()
    await c.connect()
    yield c
    await c.close()
