from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from duet.ledger import keys
from helpers import ControllerProc


@pytest.fixture
def controller_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start controllers on demand; each is killed and its local CVMs stopped at the end."""
    started: list[ControllerProc] = []

    def make(owner: keys.Ed25519PrivateKey | None = None) -> ControllerProc:
        base = tmp_path_factory.mktemp("ctl")
        os.chmod(base, 0o755)
        c = ControllerProc(data=base / "data", owner_key=owner or keys.Ed25519PrivateKey.generate())
        started.append(c)
        return c

    yield make
    for c in started:
        c.kill()
        _stop_local_cvms(c.data / "cvms")


def _stop_local_cvms(base: Path) -> None:
    from duet.cvm.cleanup import delete_all_local

    delete_all_local(base)


@pytest.fixture
def controller(controller_factory) -> ControllerProc:  # type: ignore[no-untyped-def]
    return controller_factory().start()


@pytest.fixture(scope="session")
def etcd_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HOST:PORT of a real etcd: DUET_TEST_ETCD when set, else one started for this
    session (each test uses its own key prefix: a controller's is its id)."""
    given = os.environ.get("DUET_TEST_ETCD")
    if given:
        yield given
        return
    from etcd_server import EtcdServer

    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield server.address
    finally:
        server.stop()
