"""A qemu CVM driven through the whole controller (signed intents, lockdown over SSH,
logged commands), booted under TCG. Slow: `make test-slow`.

Without SNP/TDX hardware the VM is launched plainly (`allow_no_tee`), so the log records
the evidence as absent and a user's verification fails on exactly that check."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_qemu_boot import guest_settings, require_image

pytestmark = pytest.mark.slow


async def test_qemu_cvm_through_the_controller(tmp_path: Path) -> None:
    image = require_image()
    from duet.client.audit import audit_log
    from duet.client.cvm_checks import evidence_checks
    from duet.controller.serve import build_controller
    from duet.ledger import entries, keys
    from duet.ledger.intent import sign_intent

    os.chmod(tmp_path, 0o755)
    providers = tmp_path / "providers.yaml"
    providers.write_text(json.dumps({"qemu": {
        **guest_settings(image), "base_dir": str(tmp_path / "qemu"), "allow_no_tee": True,
    }}))
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub", providers_file=providers)
    await ctl.startup()

    def intent(op: str, args: dict[str, object], cvm: str | None = None) -> str:
        return sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))

    try:
        _, created = await ctl.submit(intent("cvm.create", {"provider": "qemu", "tee": "none"}))
        cvm = created["cvm"]["id"]
        assert created["cvm"]["status"] == "ready", created
        _, res = await ctl.submit(intent("cvm.run", {"command": "id -un; cat /etc/debian_version"}, cvm))
        assert res["exit_status"] == 0
        size = ctl.ledger.tree_head(cvm).size
        leaves = ctl.ledger.leaves(cvm, 0, size)
        log = [entries.decode(leaf) for leaf in leaves]
        lockdown = next(e for e in log if e["type"] == "lockdown")
        assert lockdown["ok"] is True, [c for c in lockdown["checks"] if not c["ok"]]
        assert any(e["type"] == "evidence" and e["kind"] == "none" for e in log)
        audit = audit_log(leaves, controller_id=ctl.controller_id,
                          controller_key_b64=keys.public_b64(ctl.public_key), cvm_id=cvm)
        assert all(c.ok for c in audit.checks), [c for c in audit.checks if not c.ok]
        checks, _ = evidence_checks(audit.decoded, audit.state, trust_simulated=False, now=__import__(
            "datetime").datetime.now(__import__("datetime").UTC), expect=None)
        assert not checks[0].ok and "without a TEE" in checks[0].detail
        await ctl.submit(intent("cvm.delete", {}, cvm))
    finally:
        await ctl.shutdown()
        for rec in list(ctl._records.values()):
            if rec.mode != "deleted":
                await ctl.providers[rec.provider].delete(rec.id)
