"""A Google Cloud SEV-SNP CVM end to end through the controller's own flow, on a twin:

- `providers.set` configures gcp; `credentials.set` seals a real service-account key; the
  real google-cloud-compute clients reach a fake GCE (`api_endpoint`), every request
  carrying a JWT signed by the sealed key;
- the fake's instance is a local sshd guest whose configfs-tsm is a FUSE twin
  (tests/providers/tsm_twin.py): the controller's own `snp` collection command runs
  unchanged but for the configfs path, and the registry verifies the report (binding
  `none`, GCP sets no HOST_DATA) under the twin's SIMULATED dev ARK;
- the control plane is read back from the fake GCE; the serial port turned on behind the
  controller's back is logged by the re-check, fails the user's control_plane check and
  keeps the CVM out of in-service.

As in the Azure twin, the lockdown checks are the local provider's host-side ones."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_gce import FakeGce
from provider_helpers import sealed_credentials
from tsm_twin import guest_dirs, have_fuse

from duet.attestation import cvm_kinds
from duet.attestation.simulated.snp import SimulatedSnp
from duet.client.cvm_checks import control_plane_checks
from duet.controller import errors
from duet.controller.evidence import CvmPort, Fetched
from duet.controller.evidence_remote import RemoteEvidence
from duet.cvm.guest.collect import collect_command, parse_output
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import Lockdown, run_local
from duet.cvm.plan import make_provider
from duet.cvm.provider import Provisioned
from duet.ledger import entries
from duet.ledger.intent import sign_intent
from inproc import owned_controller

TSM = "/sys/kernel/config/tsm/report"


class GcpTwin:
    name = "gcp"

    def __init__(self, settings: Mapping[str, object], credential: Any, local: LocalProvider, etc: Path) -> None:
        self.gcp: Any = make_provider("gcp", settings, credential=credential)
        self.tees = self.gcp.tees
        self.local, self.etc = local, etc
        self.created: list[str] = []

    async def create(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> Provisioned:
        made = await self.gcp.create(cvm_id, authorized_key=authorized_key, spec=spec)
        self.created.append(cvm_id)
        guest = await self.local.create(cvm_id, authorized_key=authorized_key, spec={"tee": "simulated-snp"})
        return Provisioned(instance_id=made.instance_id, host=guest.host, port=guest.port, user=guest.user,
                           launch={**made.launch, "twin": "local sshd guest, FUSE configfs-tsm"})

    async def inspect(self, cvm_id: str) -> dict[str, Any]:
        return dict(await self.gcp.inspect(cvm_id))

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        return await self.local.ensure_running(cvm_id)

    async def status(self, cvm_id: str) -> str:
        return str(await self.gcp.status(cvm_id))

    async def delete(self, cvm_id: str) -> None:
        await self.gcp.delete(cvm_id)
        await self.local.delete(cvm_id)


class GcpTwinEvidence(RemoteEvidence):
    lockdown_where = "host-side (the twin's machine is a local guest)"

    def __init__(self, twin: GcpTwin, ark: bytes, tsm: Path) -> None:
        super().__init__(trusted_arks=[ark], inspector=twin.inspect)
        self.twin, self.tsm = twin, tsm

    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> Lockdown:
        return await run_local(self.twin.local.lockdown_context(port.rec.id), port.client_key_line())

    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        assert port.rec.host_key is not None
        pub = self.twin.etc / "ssh_host_ed25519_key.pub"
        shutil.copy(self.twin.local.cvm_dir(port.rec.id) / "ssh_host_ed25519_key.pub", pub)
        os.chmod(pub, 0o644)
        command = collect_command(kind, nonce, sudo=False, pub=str(pub))
        assert command.count(TSM) == 2
        command = command.replace(TSM, str(self.tsm))
        outcome = await port.execute(command, timeout=120.0, action="attest", intent_index=intent_index)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(port, "the twin produced no evidence" + (f": {r.stderr[-300:]!r}" if r else ""))
        fields = self.entry_fields(kind, parse_output(r.stdout.decode()), nonce=nonce, host_key=port.rec.host_key)
        return Fetched(outcome.command_index, fields)


def _mount_tsm(where: Path, state: Path, *mode: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tsm_twin.py")), str(where), str(state),
                             *mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.ismount(where):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the configfs-tsm twin (FUSE) did not mount")
        time.sleep(0.05)
    return proc


def _unmount(where: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, timeout=30)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def test_a_gcp_snp_cvm_on_the_twin(tmp_path: Path) -> None:
    if not have_fuse():
        pytest.fail("the configfs-tsm twin needs /dev/fuse, libfuse3, root and mfusepy (pip install -e '.[dev]')")
    base = guest_dirs("duet-gcp-twin-")
    snp_state = tmp_path / "gcp-hw"
    SimulatedSnp.load_or_create(snp_state)
    ark = SimulatedSnp.load_or_create(snp_state).ark_pem
    fuse_proc = _mount_tsm(base / "tsm", snp_state)
    gce = FakeGce().start()
    loop = asyncio.new_event_loop()
    os.chmod(tmp_path, 0o755)
    ctl, owner = owned_controller(tmp_path)
    local = ctl.providers["local"]
    assert isinstance(local, LocalProvider)
    twins: list[GcpTwin] = []

    def builder(name: str, settings: Mapping[str, object], credential: Any) -> Any:
        twin = GcpTwin(settings, credential, local, base / "etc")
        twins.append(twin)
        return twin, GcpTwinEvidence(twin, ark, base / "tsm")

    ctl.setup.builder = builder

    def submit(op: str, args: dict[str, Any], cvm: str | None = None, sealed: bytes | None = None) -> Any:
        jws = sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))
        return loop.run_until_complete(ctl.submit(jws, sealed=sealed))[1]

    try:
        submit("providers.set", {"providers": {"gcp": {
            "project": "proj-1", "zone": "europe-west4-a", "controller_cidr": "198.51.100.10/32",
            "api_endpoint": gce.endpoint, "poll_interval_s": 0}}})
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()
        sa = json.dumps({"type": "service_account", "project_id": "proj-1", "private_key_id": "k1",
                         "private_key": pem, "client_email": "duet@proj-1.iam.gserviceaccount.com",
                         "token_uri": "https://oauth2.googleapis.com/token"}).encode()
        args, blob = sealed_credentials(ctl, "gcp", sa)
        submit("credentials.set", args, sealed=blob)
        cvm = submit("cvm.create", {"provider": "gcp", "tee": "snp",
                                    "spec": {"controller_cidr": "198.51.100.10/32"}})["cvm"]
        cid = cvm["id"]
        assert cvm["evidence_kind"] == "snp" and cvm["instance_binding"] == "none"
        for r in gce.sent:  # every GCE request: a JWT signed by the sealed key
            auth = r.headers.get("Authorization") or r.headers.get("authorization") or ""
            assert auth.startswith("Bearer "), (r.method, r.path)
            head, payload, sig = auth[7:].split(".")
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding

            sa_key.public_key().verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)),
                                       f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        assert submit("cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        size = ctl.ledger.tree_head(cid).size
        log = [entries.decode(leaf) for leaf in ctl.ledger.leaves(cid, 0, size)]
        evidence = [e for e in log if e["type"] == "evidence"]
        assert [e["kind"] for e in evidence] == ["snp", "snp"]
        rec = ctl.record(cid)
        assert rec.host_key is not None
        cvm_kinds.verify_evidence(dict(evidence[-1]), host_key=rec.host_key, now=ctl.clock.now(),
                                  trust=cvm_kinds.Trust(snp_arks=(ark,)), binding="none")
        assert control_plane_checks(log)[0].ok
        # Behind the controller's back: the serial port on, in the instance's metadata.
        items = next(iter(gce.instances.values()))["metadata"]["items"]
        items[:] = [i for i in items if i["key"] != "serial-port-enable"] + [
            {"key": "serial-port-enable", "value": "TRUE"}]
        assert loop.run_until_complete(ctl.setup.recheck_all()) == [cid]
        size = ctl.ledger.tree_head(cid).size
        verdict = control_plane_checks([entries.decode(leaf) for leaf in ctl.ledger.leaves(cid, 0, size)])[0]
        assert not verdict.ok and "serial_console_off" in verdict.detail
        submit("cvm.mode", {"mode": "in-update"}, cvm=cid)
        with pytest.raises(errors.DuetError) as info:
            submit("cvm.mode", {"mode": "in-service"}, cvm=cid)
        assert info.value.code == "control_plane_failed"
        submit("cvm.delete", {}, cvm=cid)
        assert not gce.instances
    finally:
        for twin in twins:
            for cvm_id in twin.created:
                loop.run_until_complete(local.delete(cvm_id))
        loop.run_until_complete(ctl.shutdown())
        loop.close()
        ctl.close()
        gce.stop()
        _unmount(base / "tsm", fuse_proc)
        shutil.rmtree(base, ignore_errors=True)
