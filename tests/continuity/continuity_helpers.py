"""What the continuity scenarios (handover, standby, recovery) share: controllers in their
own directories, reading a log page, what an earlier data dir still holds, trying a key
against a CVM's sshd, and a joining enclave's attested request."""

from __future__ import annotations

import base64
import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from duet.controller.continuity import REQUEST_DOMAIN, request_report_data
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.controller.statekey import StateKey, client_key_label
from duet.cvm.errors import CvmError
from duet.cvm.ssh import CvmConnection, import_private
from duet.ledger import entries, keys
from duet.tee.simulated import SimulatedTee
from helpers import ControllerProc


def controller_in(tmp_path: Path, name: str, owner: keys.Ed25519PrivateKey) -> ControllerProc:
    base = tmp_path / name
    base.mkdir(mode=0o755)
    return ControllerProc(data=base / "data", owner_key=owner)


def log_entries(proc: ControllerProc, path: str) -> list[dict[str, Any]]:
    with proc.http() as http:
        page = http.get_json(path)
    return [entries.decode(base64.b64decode(e["leaf"])) for e in page["entries"]]


def old_secrets(data: Path, build: str, cvms: list[str], scratch: Path) -> tuple[bytes, dict[str, bytes]]:
    """K (sealed to `build`) and the CVMs' client keys as a data dir holds them. A running
    controller holds its database exclusively: this reads a copy of the files."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for f in data.glob("state.sqlite*"):
        shutil.copy(f, scratch / f.name)
    db = sqlite3.connect(scratch / "state.sqlite")
    sealed = db.execute("SELECT v FROM meta WHERE k='state_key_sealed'").fetchone()[0]
    blobs = {c: db.execute("SELECT client_key FROM cvms WHERE id=?", (c,)).fetchone()[0] for c in cvms}
    db.close()
    k = StateKey(SimulatedTee(data / "tee", mrenclave=bytes.fromhex(build)).unseal(sealed))
    return k.raw(), {c: k.decrypt(client_key_label(c), b) for c, b in blobs.items()}


async def try_login(view: dict[str, Any], key: bytes) -> str:
    conn = CvmConnection(host=str(view["host"]), port=int(str(view["port"])), user=str(view["user"]),
                         client_key=import_private(key), pinned_host_key=str(view["host_key"]))
    try:
        await conn.connect()
        return "in"
    except CvmError as exc:
        return f"refused: {exc}"
    finally:
        await conn.close()


def join_request(tee: SimulatedTee, challenge: str, domain: bytes = REQUEST_DOMAIN, *,
                 bound_key: bytes | None = None) -> dict[str, Any]:
    """A handover (or, with the standby domain, a standby) request: `tee`'s quote over a
    fresh key and `challenge` (over `bound_key` instead, to forge a binding)."""
    key = secrets.token_bytes(32)
    q = tee.quote(request_report_data(bound_key or key, bytes.fromhex(challenge), domain))
    return {"challenge": challenge, "nonce": secrets.token_hex(32), "public_key": base64.b64encode(key).decode(),
            "quote": base64.b64encode(q.quote).decode(), "collateral": q.collateral,
            "simulated_root_ca": base64.b64encode(q.simulated_root_ca or b"").decode()}


def controller_log_types(ctl: Controller) -> list[str]:
    size = ctl.ledger.tree_head(CONTROLLER_LOG).size
    return [entries.decode(x)["type"] for x in ctl.ledger.leaves(CONTROLLER_LOG, 0, size)]
