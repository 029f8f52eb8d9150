"""An in-process controller app (no CVM provider work) for tests of the HTTP edge.

`with_log` adds a deleted CVM record with a log of the given leaves, so the per-CVM read
endpoints have something to serve without starting a local CVM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from duet.controller.app import create_app
from duet.controller.serve import build_controller
from duet.controller.service import Controller
from duet.controller.state import CvmRecord
from duet.ledger import entries, keys

CVM_ID = "c0ffee00c0ffee00"


def add_log(ctl: Controller, leaves: Sequence[bytes], cvm_id: str = CVM_ID) -> str:
    rec = CvmRecord(id=cvm_id, name="edge", provider="local", tee="snp", created_at=entries.now_rfc3339(),
                    status="deleted", mode="deleted")
    ctl.state.put_cvm(rec, b"")
    ctl._records[cvm_id] = rec
    ctl.ledger.create_log(cvm_id)
    for leaf in leaves:
        ctl.ledger.append(cvm_id, [leaf])
    return cvm_id


def owned_controller(tmp_path: Path) -> tuple[Controller, keys.Ed25519PrivateKey]:
    """A controller in `tmp_path/data` claimed by a fresh owner key (returned with it)."""
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    return build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub"), owner


@contextmanager
def inproc(tmp_path: Path, *, leaves: Sequence[bytes] = (), **app_kw: Any) -> Iterator[tuple[TestClient, Controller]]:
    os.chmod(tmp_path, 0o755)
    ctl, _ = owned_controller(tmp_path)
    if leaves:
        add_log(ctl, leaves)
    app = create_app(ctl, **app_kw)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, ctl
    ctl.close()
