"""A libvirt CVM driven through the whole controller against a real local libvirtd: create
(volumes made and the seed uploaded through libvirt's storage API, the domain defined from
duet's XML and validated by libvirt), lockdown, a logged command, the control-plane check
of the domain definition on entry into in-service, and an attack: a guest-agent channel
added to the definition behind the controller's back is caught by the periodic re-check
and by `duet verify`. Slow: `make test-slow`.

The guest is the plain (tee `none`) Debian guest of the qemu tests, under TCG: Debian 12's
libvirt 9.0 / QEMU 7.2 cannot launch SEV-SNP or TDX (tests/providers/test_libvirt_xml.py
checks those definitions against recorded ones). Debian's libvirt 9.0 lacks the passt
backend, so the SSH forward uses ``network: slirp``. Evidence is absent, and a user's
verification fails on exactly that check, as for the qemu provider."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from libvirt_host import running_libvirtd, transient_pool, why_not
from test_qemu_boot import guest_settings, require_image

pytestmark = pytest.mark.slow


async def test_libvirt_cvm_through_the_controller(tmp_path: Path) -> None:
    image = require_image()
    reason = why_not()
    if reason is not None:
        pytest.fail(f"cannot run: {reason}", pytrace=False)
    import libvirt

    from duet.client.audit import audit_log
    from duet.client.cvm_checks import control_plane_checks, evidence_checks
    from duet.controller.serve import build_controller
    from duet.ledger import entries, keys
    from duet.ledger.intent import sign_intent

    work = Path("/var/tmp") / f"duet-libvirt-{secrets.token_hex(4)}"
    with running_libvirtd():
        conn = libvirt.open("qemu:///system")
        with transient_pool(conn, work) as pool, transient_pool(conn, image.disk.parent, create_dir=False):
            first = 41000 + secrets.randbelow(500) * 10
            providers = tmp_path / "providers.yaml"
            providers.write_text(json.dumps({"libvirt": {
                **guest_settings(image), "uri": "qemu:///system", "pool": pool, "network": "slirp",
                "serial_log_dir": str(work), "ssh_ports": [first, first + 9],
            }}))
            owner = keys.Ed25519PrivateKey.generate()
            (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
            ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub", providers_file=providers)
            await ctl.startup()

            def intent(op: str, args: dict[str, object], cvm: str | None = None) -> str:
                return sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))

            def log(cvm: str) -> tuple[list[bytes], list[dict[str, object]]]:
                leaves = ctl.ledger.leaves(cvm, 0, ctl.ledger.tree_head(cvm).size)
                return leaves, [entries.decode(leaf) for leaf in leaves]

            try:
                _, created = await ctl.submit(intent("cvm.create", {"provider": "libvirt", "tee": "none"}))
                cvm = created["cvm"]["id"]
                assert created["cvm"]["status"] == "ready", created
                dom = conn.lookupByName(ctl.providers["libvirt"].layout(cvm).name)
                _, res = await ctl.submit(intent("cvm.run", {"command": "id -un; cat /etc/debian_version"}, cvm))
                assert res["exit_status"] == 0
                await ctl.submit(intent("cvm.mode", {"mode": "in-service"}, cvm))

                leaves, decoded = log(cvm)
                provisioned = next(e for e in decoded if e["type"] == "provisioned")
                launch = provisioned["launch"]
                assert launch["provider"] == "libvirt" and launch["tee_effective"] == "none"
                assert launch["evidence"] == "absent"
                lockdown = next(e for e in decoded if e["type"] == "lockdown")
                assert lockdown["ok"] is True, [c for c in lockdown["checks"] if not c["ok"]]
                assert any(e["type"] == "evidence" and e["kind"] == "none" for e in decoded)
                cp = [e for e in decoded if e["type"] == "control_plane"]
                assert cp and cp[-1]["ok"] is True, cp[-1:] or "no control_plane entry"
                assert cp[-1]["provider"] == "libvirt"
                audit = audit_log(leaves, controller_id=ctl.controller_id,
                                  controller_key_b64=keys.public_b64(ctl.public_key), cvm_id=cvm)
                assert all(c.ok for c in audit.checks), [c for c in audit.checks if not c.ok]
                [cp_check] = control_plane_checks(audit.decoded)
                assert cp_check.ok, cp_check.detail
                checks, _ = evidence_checks(audit.decoded, audit.state, trust_simulated=False,
                                            now=datetime.datetime.now(datetime.UTC), expect=None)
                assert not checks[0].ok and "without a TEE" in checks[0].detail

                # The libvirtd admin adds a guest-agent channel for the next boot, without SSH.
                root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                channel = ET.SubElement(root.find("devices"), "channel", {"type": "unix"})
                ET.SubElement(channel, "target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})
                conn.defineXML(ET.tostring(root, encoding="unicode"))
                failed = await ctl.setup.recheck_all()
                assert failed == [cvm]
                leaves, decoded = log(cvm)
                latest = [e for e in decoded if e["type"] == "control_plane"][-1]
                assert latest["ok"] is False
                bad = {c["name"] for c in latest["checks"] if not c["ok"]}
                assert "no_console_or_agent" in bad and "no_passthrough_devices" in bad, latest["checks"]
                audit = audit_log(leaves, controller_id=ctl.controller_id,
                                  controller_key_b64=keys.public_b64(ctl.public_key), cvm_id=cvm)
                [cp_check] = control_plane_checks(audit.decoded)
                assert not cp_check.ok and "next boot" in cp_check.detail, cp_check.detail

                await ctl.submit(intent("cvm.delete", {}, cvm))
                assert await ctl.providers["libvirt"].status(cvm) == "missing"
                assert not [v for v in os.listdir(work) if v.endswith((".qcow2", ".iso"))]
            finally:
                await ctl.shutdown()
                for rec in list(ctl._records.values()):
                    if rec.mode != "deleted":
                        await ctl.providers[rec.provider].delete(rec.id)
                conn.close()
