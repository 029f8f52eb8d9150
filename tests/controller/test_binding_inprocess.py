"""White-box attack at provisioning time: the sshd the controller connects to is not the
machine whose (simulated) hardware answers. The evidence binding must catch it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from duet.controller.errors import CvmNotReady
from duet.controller.serve import build_controller
from duet.cvm.cleanup import delete_all_local
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent


def test_evidence_not_bound_to_the_connected_host_key_aborts_provisioning(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub")
    provider = ctl.providers["local"]
    real_create = provider.create

    async def create_then_impostor(cvm_id: str, **kw: object):  # type: ignore[no-untyped-def]
        await real_create(cvm_id, **kw)  # type: ignore[arg-type]
        # The guest's platform keeps the genuine public key; sshd now serves another.
        d = provider.cvm_dir(cvm_id)
        for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
            (d / name).unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh_host_ed25519_key")],
                       check=True)
        os.kill(int((d / "sshd.pid").read_text()), 15)
        await asyncio.sleep(0.2)
        return await provider.ensure_running(cvm_id)

    provider.create = create_then_impostor  # type: ignore[method-assign]

    async def scenario() -> tuple[str, list[dict[str, object]]]:
        await ctl.startup()
        jws = sign_intent(owner, op="cvm.create", aud=ctl.controller_id, args={"provider": "local"},
                          iat=int(time.time()))
        with pytest.raises(CvmNotReady) as info:
            await ctl.submit(jws)
        rec = next(iter(ctl._records.values()))
        size = ctl.ledger.tree_head(rec.id).size
        log = [entries.decode(leaf) for leaf in ctl.ledger.leaves(rec.id, 0, size)]
        await ctl.shutdown()
        return str(info.value), log

    try:
        message, log = asyncio.run(scenario())
    finally:
        delete_all_local(tmp_path / "data" / "cvms")
    assert "not bound to the SSH host key" in message
    types = [e["type"] for e in log]
    assert "mode" not in types, "the CVM must never be marked usable"
    errors = [e for e in log if e["type"] == "error"]
    assert errors[0]["code"] == "evidence_refused"
    rec = ctl._records[next(iter(ctl._records))]
    assert rec.status == "failed"


def test_record_is_repaired_from_the_log_after_a_crash(tmp_path: Path) -> None:
    """A crash between appending a `mode` entry and saving the CVM record: the log wins."""
    os.chmod(tmp_path, 0o755)
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))

    async def first() -> str:
        ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub")
        await ctl.startup()
        _, res = await ctl.submit(sign_intent(owner, op="cvm.create", aud=ctl.controller_id,
                                              args={"provider": "local"}, iat=int(time.time())))
        cvm = res["cvm"]["id"]
        rec = ctl.record(cvm)
        ctl.append(rec, [entries.ModeEntry(mode="in-service", previous="in-update", epoch=1)])
        await ctl.shutdown()  # "crash": the record was never saved
        ctl.close()
        return cvm

    async def second(cvm: str) -> tuple[str, str]:
        ctl = build_controller(tmp_path / "data")
        await ctl.startup()
        mode = ctl.record(cvm).mode
        from duet.controller.errors import ModeForbids

        try:
            await ctl.submit(sign_intent(owner, op="cvm.run", aud=ctl.controller_id, cvm=cvm,
                                         args={"command": "true"}, iat=int(time.time())))
            outcome = "ran"
        except ModeForbids:
            outcome = "refused"
        await ctl.shutdown()
        ctl.close()
        return mode, outcome

    try:
        cvm = asyncio.run(first())
        assert asyncio.run(second(cvm)) == ("in-service", "refused")
    finally:
        delete_all_local(tmp_path / "data" / "cvms")
