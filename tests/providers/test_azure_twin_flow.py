"""An Azure SNP CVM end to end through the controller's own flow, on a twin of Azure:

- the owner sets the providers (`providers.set`) and seals a service principal's
  credentials to the controller (`credentials.set`), both logged in the controller log;
- `cvm.create --provider azure` drives the real azure-mgmt-* clients, whose requests
  reach a fake ARM through azure-core's transport hook (tests/providers/fake_arm.py) and
  carry the token of the sealed credentials;
- the fake's VM is a local sshd guest (the local provider's), whose vTPM is a real swtpm
  provisioned like an Azure CVM's (tests/providers/vtpm_twin.py): the evidence is the
  controller's own `azure-snp` collection, verified by the registry with binding `vm_id`;
- the control plane is read back from the fake ARM, judged and logged, and a change made
  behind the controller's back (boot diagnostics on) is logged and keeps the CVM out of
  in-service, and fails the user's control_plane check.

What differs from a real Azure CVM, and why: the lockdown checks are the local provider's
host-side ones (a real guest's need a guest whose /etc/ssh the test may own); the SNP
report inside the HCL report is SIMULATED (dev VCEK under a dev ARK the collector is told
to trust); the TPM and IMDS are reached at loopback addresses (vtpm_twin.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fake_arm import FakeArm
from provider_helpers import sealed_credentials
from vtpm_twin import CMDLINE, AzureVtpmTwin, SimulatedVtpmCa, have_tools

from duet.attestation import cvm_kinds
from duet.attestation.errors import ChainInvalid
from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.client.audit import audit_log
from duet.client.controller_log import controller_log_checks
from duet.client.cvm_checks import control_plane_checks, evidence_checks
from duet.client.expectations import UserExpectations
from duet.client.replay import CvmReplay
from duet.controller import errors
from duet.controller.evidence import CvmPort, Fetched
from duet.controller.evidence_remote import RemoteEvidence
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.cvm.azure import AzureProvider
from duet.cvm.guest.collect import parse_output
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import Lockdown, run_local
from duet.cvm.provider import Provisioned
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from inproc import owned_controller

SECRET = "twin-client-SECRET-" + "5" * 20
AZURE = {"subscription_id": "00000000-1111-2222-3333-444444444444", "resource_group": "rg-twin",
         "location": "westeurope", "controller_cidr": "198.51.100.10/32", "poll_interval_s": 0}


class TokenCredential:
    """What `ClientSecretCredential` would be, minus Entra ID: its token is derived from
    the sealed secret, so the fake ARM can tell the credentials that reached the SDK."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.token = "tok-" + hashlib.sha256(fields["client_secret"].encode()).hexdigest()[:16]

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


class AzureTwin:
    """The provider: ARM through the real SDK to the fake; the machine is a local guest."""

    name = "azure"
    tees = AzureProvider.tees

    def __init__(self, arm: FakeArm, local: LocalProvider, work: Path, snp: SimulatedSnp | None, credential: Any,
                 *, tdx: SimulatedTdx | None = None, settings: Mapping[str, object] = AZURE) -> None:
        """`tdx` (and `snp` None): the machine's vTPM is an Azure TDX CVM's
        (tests/providers/test_azure_tdx_twin_flow.py)."""
        self.azure = AzureProvider(**dict(settings), credential=credential,  # type: ignore[arg-type]
                                   transport=arm.transport(), retry_total=0)
        self.local, self.work, self.snp, self.tdx = local, work, snp, tdx
        self.vtpm: AzureVtpmTwin | None = None
        self.created: list[str] = []
        # Where the guest's user can read the host key (the twin's /etc/ssh).
        self.etc_ssh = Path(tempfile.mkdtemp(prefix="duet-twin-"))
        os.chmod(self.etc_ssh, 0o755)

    async def create(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> Provisioned:
        made = await self.azure.create(cvm_id, authorized_key=authorized_key, spec=spec)
        self.created.append(cvm_id)
        guest = await self.local.create(cvm_id, authorized_key=authorized_key, spec={"tee": "simulated-snp"})
        (self.work / "vtpm").mkdir(exist_ok=True)
        # The event log where the guest's user can read it (as the host key above).
        self.vtpm = AzureVtpmTwin(self.work / "vtpm", self.snp, made.instance_id, tdx=self.tdx,
                                  event_log=self.etc_ssh / "binary_bios_measurements").start()
        return Provisioned(instance_id=made.instance_id, host=guest.host, port=guest.port, user=guest.user,
                           launch={**made.launch, "twin": "local sshd guest, swtpm vTPM"})

    async def inspect(self, cvm_id: str) -> dict[str, Any]:
        return await self.azure.inspect(cvm_id)

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        return await self.local.ensure_running(cvm_id)

    async def status(self, cvm_id: str) -> str:
        return await self.azure.status(cvm_id)

    async def delete(self, cvm_id: str) -> None:
        await self.azure.delete(cvm_id)
        await self.local.delete(cvm_id)


class AzureTwinEvidence(RemoteEvidence):
    lockdown_where = "host-side (the twin's machine is a local guest)"

    def __init__(self, twin: AzureTwin, **collector: Any) -> None:
        """`collector`: the remote collector's settings (default: trust the twin's dev ARK)."""
        assert collector or twin.snp is not None
        super().__init__(inspector=twin.inspect, **(collector or {"trusted_arks": [twin.snp.ark_pem]}))  # type: ignore[union-attr]
        self.twin = twin

    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> Lockdown:
        return await run_local(self.twin.local.lockdown_context(port.rec.id), port.client_key_line())

    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        assert self.twin.vtpm is not None and port.rec.host_key is not None
        # The guest's /etc/ssh/ssh_host_ed25519_key.pub: the local guest's host key, readable.
        pub = self.twin.etc_ssh / "ssh_host_ed25519_key.pub"
        shutil.copy(self.twin.local.cvm_dir(port.rec.id) / "ssh_host_ed25519_key.pub", pub)
        os.chmod(pub, 0o644)
        command = self.twin.vtpm.command(nonce, pub)
        outcome = await port.execute(command, timeout=120.0, action="attest", intent_index=intent_index)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(port, "the twin produced no evidence" + (f": {r.stderr[-300:]!r}" if r else ""))
        fields = self.entry_fields(kind, parse_output(r.stdout.decode()), nonce=nonce, host_key=port.rec.host_key)
        return Fetched(outcome.command_index, fields)


def _submit(ctl: Controller, owner: keys.Ed25519PrivateKey, op: str, args: dict[str, Any], cvm: str | None = None,
            sealed: bytes | None = None) -> Any:
    jws = sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))
    return LOOP.run_until_complete(ctl.submit(jws, sealed=sealed))[1]


#: One event loop for the whole flow (the controller keeps its SSH sessions across
#: intents); made and closed by the test.
LOOP: asyncio.AbstractEventLoop


def _log(ctl: Controller, log_id: str) -> list[dict[str, Any]]:
    size = ctl.ledger.tree_head(log_id).size
    return [entries.decode(leaf) for leaf in ctl.ledger.leaves(log_id, 0, size)]


def test_an_azure_snp_cvm_on_the_twin(tmp_path: Path) -> None:
    global LOOP
    if not have_tools():
        pytest.fail("swtpm and tpm2-tools are needed (make setup installs them: scripts/ensure-vtpm.sh)")
    LOOP = asyncio.new_event_loop()
    os.chmod(tmp_path, 0o755)
    ctl, owner = owned_controller(tmp_path)
    arm = FakeArm()
    snp = SimulatedSnp.load_or_create(tmp_path / "azure-hw")
    local = ctl.providers["local"]
    assert isinstance(local, LocalProvider)
    twins: list[AzureTwin] = []
    made: list[Mapping[str, str]] = []

    def builder(name: str, settings: Mapping[str, object], credential: Any) -> Any:
        assert name == "azure" and dict(settings) == AZURE
        twin = AzureTwin(arm, local, tmp_path / "twin", snp, credential)
        (tmp_path / "twin").mkdir(exist_ok=True)
        twins.append(twin)
        return twin, AzureTwinEvidence(twin)

    def credential_maker(name: str, fields: Mapping[str, str]) -> Any:
        made.append(dict(fields))
        return TokenCredential(fields)

    ctl.setup.builder, ctl.setup.credential_maker = builder, credential_maker
    try:
        _submit(ctl, owner, "providers.set", {"providers": {"azure": AZURE}})
        plaintext = json.dumps({"tenant_id": "t", "client_id": "c", "client_secret": SECRET}).encode()
        args, blob = sealed_credentials(ctl, "azure", plaintext)
        _submit(ctl, owner, "credentials.set", args, sealed=blob)
        assert made == [json.loads(plaintext)]
        cvm = _submit(ctl, owner, "cvm.create", {"provider": "azure", "tee": "snp",
                                                 "spec": {"controller_cidr": "198.51.100.10/32"}})["cvm"]
        assert cvm["evidence_kind"] == "azure-snp" and cvm["instance_id"] == "6f0e9c1a-0000-4000-8000-00000000abcd"
        # Every ARM request came through the SDK with the sealed credentials' token.
        token = TokenCredential({"client_secret": SECRET}).token
        assert arm.mutations() and all(s.headers.get("Authorization") == f"Bearer {token}" for s in arm.sent)
        cid = cvm["id"]
        assert _submit(ctl, owner, "cvm.run", {"command": "echo on the twin"}, cvm=cid)["exit_status"] == 0
        assert _submit(ctl, owner, "cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        log = _log(ctl, cid)
        evidence = [e for e in log if e["type"] == "evidence"]
        assert [e["kind"] for e in evidence] == ["azure-snp", "azure-snp"]
        assert all(e["binds"]["vm_id"] == cvm["instance_id"] for e in evidence)
        # Anyone holding the dev ARK re-verifies the logged evidence with the registry.
        rec = ctl.record(cid)
        assert rec.host_key is not None
        unpinned = cvm_kinds.verify_evidence(dict(evidence[-1]), host_key=rec.host_key, now=ctl.clock.now(),
                                             trust=cvm_kinds.Trust(snp_arks=(snp.ark_pem,)), binding="vm_id",
                                             instance_id=cvm["instance_id"]).report
        assert unpinned.ak_certificate["status"] == "not checked (no roots pinned)"
        # The AK certificate the guest read from NV 0x01C101D0 chains to the SIMULATED vTPM
        # root a user pins; the boot's event log replays to the quoted PCRs.
        vtpm = next(t.vtpm for t in twins if t.vtpm is not None)
        pinned = cvm_kinds.verify_evidence(
            dict(evidence[-1]), host_key=rec.host_key, now=ctl.clock.now(), binding="vm_id",
            trust=cvm_kinds.Trust(snp_arks=(snp.ark_pem,), azure_ak_roots=(vtpm.vtpm_ca.pins,)),
            instance_id=cvm["instance_id"]).report
        assert pinned.ak_certificate["status"] == "verified"
        assert pinned.event_log["cmdline"] == {"pcr": 8, "digest": pinned.event_log["cmdline"]["digest"],
                                               "text": CMDLINE, "measured": True}
        # What `duet verify --expect` checks, with the root pinned in the user's expectations.
        audit = audit_log([entries.encode(e) for e in log], controller_id=ctl.controller_id,
                          controller_key_b64=ctl.info()["public_key"], cvm_id=cid)
        user = UserExpectations.model_validate({"cvm": {
            "tee": "azure-snp", "azure_ak_roots": [vtpm.vtpm_ca.pins.decode()], "require_event_log": True,
            "kernel_cmdline": CMDLINE}})
        verdict = {c.name: c for c in evidence_checks(audit.decoded, audit.state, trust_simulated=False,
                                                      now=ctl.clock.now(), expect=user, snp_arks=(snp.ark_pem,))[0]}
        assert verdict["evidence"].ok and verdict["cvm_claims"].ok, verdict
        assert "its AK certificate CN=6f0e9c1a" in verdict["evidence"].detail
        assert "event log replays to its PCRs" in verdict["evidence"].detail
        # The streaming replay `duet verify` runs says the same.
        replay = CvmReplay(ctl.controller_id, ctl.info()["public_key"], cid, expect=user, snp_arks=(snp.ark_pem,),
                           now=ctl.clock.now())
        for e in log:
            replay.feed(entries.encode(e))
        streamed = {c.name: c for c in replay.finish(ctl.clock.now()).checks}
        assert streamed["evidence"].ok and "chains to a pinned vTPM root" in streamed["evidence"].detail, streamed
        other = UserExpectations.model_validate({"cvm": {"azure_ak_roots": [SimulatedVtpmCa().pins.decode()]}})
        failed = evidence_checks(audit.decoded, audit.state, trust_simulated=False, now=ctl.clock.now(),
                                 expect=other, snp_arks=(snp.ark_pem,))[0]
        assert not failed[0].ok and "does not chain to a pinned vTPM root" in failed[0].detail
        with pytest.raises(ChainInvalid):
            cvm_kinds.verify_evidence(
                dict(evidence[-1]), host_key=rec.host_key, now=ctl.clock.now(), binding="vm_id",
                trust=cvm_kinds.Trust(snp_arks=(snp.ark_pem,), azure_ak_roots=(SimulatedVtpmCa().pins,)),
                instance_id=cvm["instance_id"])
        assert [e["purpose"] for e in log if e["type"] == "control_plane"] == ["provisioning", "in-service"]
        assert control_plane_checks(log)[0].ok
        # Behind the controller's back: boot diagnostics on, in the cloud's model.
        vm = next(r for k, r in arm.resources.items() if "/virtualmachines/" in k)
        vm["properties"]["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True}}
        assert LOOP.run_until_complete(ctl.setup.recheck_all()) == [cid]
        verdict = control_plane_checks(_log(ctl, cid))[0]
        assert not verdict.ok and "boot_diagnostics_off" in verdict.detail
        _submit(ctl, owner, "cvm.mode", {"mode": "in-update"}, cvm=cid)
        with pytest.raises(errors.DuetError) as info:
            _submit(ctl, owner, "cvm.mode", {"mode": "in-service"}, cvm=cid)
        assert info.value.code == "control_plane_failed"
        assert ctl.record(cid).mode == "in-update"
        # The controller log: providers and credentials, each under its intent; no secret anywhere.
        checks, _ = controller_log_checks(ctl.ledger.leaves(CONTROLLER_LOG, 0, ctl.ledger.tree_head(
            CONTROLLER_LOG).size), controller_id=ctl.controller_id, expect=None)
        assert all(c.ok for c in checks), checks
        everything = json.dumps([_log(ctl, CONTROLLER_LOG), _log(ctl, cid)])
        assert SECRET not in everything and token not in everything
        _submit(ctl, owner, "cvm.delete", {}, cvm=cid)
        assert not [k for k in arm.resources if "duet-" in k]
    finally:
        for twin in twins:
            if twin.vtpm is not None:
                twin.vtpm.stop()
            for cvm_id in twin.created:  # the local guest's sshd, whatever happened
                LOOP.run_until_complete(local.delete(cvm_id))
            shutil.rmtree(twin.etc_ssh, ignore_errors=True)
        LOOP.run_until_complete(ctl.shutdown())
        LOOP.close()
        ctl.close()
