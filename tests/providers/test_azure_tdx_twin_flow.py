"""An Azure TDX CVM end to end through the controller's own flow, on the Azure twin
(tests/providers/test_azure_twin_flow.py) with a TDX vTPM:

- `providers.set` configures azure with `pccs_url` (a PCCS stand-in,
  tests/providers/fake_pccs.py, serving a SIMULATED TDX platform's collateral) and
  `tdx_roots` (that platform's development DCAP root, in place of Intel's), both in the
  controller log; the owner seals a service principal's credentials to the controller;
- `cvm.create --tee tdx` drives the real azure-mgmt-* clients against the fake ARM; the
  machine is a local sshd guest whose vTPM is a real swtpm provisioned as an Azure TDX
  CVM's (tests/providers/vtpm_twin.py, `tdx=`): an HCL report of the TDX type carrying a
  SIMULATED TDREPORT whose REPORTDATA hashes the runtime claims (with the AK), and an IMDS
  stand-in whose `POST /acc/tdquote` turns that TDREPORT into a SIMULATED TD quote;
- the evidence is the controller's own `azure-tdx` collection (every `tpm2_*` command and
  the IMDS request unchanged), the TD quote's collateral is fetched from the PCCS and logged
  beside it, and the registry verifies the whole chain under the pinned root, binding
  `vm_id`; a command runs and the CVM enters in-service;
- the user's checks (`duet verify --expect` with `cvm.tee: azure-tdx` and `cvm.tdx_roots`)
  pass, and say SIMULATED; without the pin the same log fails;
- an attack: IMDS answers with another TD's quote (one the same platform really signed,
  whose report body is not the HCL report's TDREPORT). The controller refuses it, the CVM
  stays out of in-service and the user's `mode` expectation fails; and a log in which a
  controller had logged such evidence fails the user's evidence check.

As in the SNP twin, the lockdown checks are the local provider's host-side ones, the TPM
and IMDS are reached at loopback addresses, and the roots the controller and the user are
told to trust (DCAP, vTPM) are SIMULATED ones."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fake_arm import FakeArm
from fake_pccs import FakePccs
from provider_helpers import sealed_credentials
from test_azure_twin_flow import AZURE, AzureTwin, AzureTwinEvidence, TokenCredential
from vtpm_twin import CMDLINE, TD_MRTD, have_tools, td_quote, tdreport

from duet.attestation import cvm_kinds
from duet.attestation.errors import BindingError
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.client.audit import audit_log
from duet.client.cvm_checks import evidence_checks, user_trust
from duet.client.expectations import load_expectations
from duet.client.replay import CvmReplay
from duet.controller import errors
from duet.controller.providers_config import pccs_setting, roots_setting
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.cvm.local import LocalProvider
from duet.ledger import entries
from duet.ledger.intent import sign_intent
from duet.tee.gramine import pccs_collateral
from inproc import owned_controller

SECRET = "twin-tdx-SECRET-" + "7" * 20


def _log(ctl: Controller, log_id: str) -> list[dict[str, Any]]:
    size = ctl.ledger.tree_head(log_id).size
    return [entries.decode(leaf) for leaf in ctl.ledger.leaves(log_id, 0, size)]


def _replay(ctl: Controller, cid: str, expect: Any) -> dict[str, Any]:
    """The checks of the streaming replay `duet verify` runs, by name."""
    replay = CvmReplay(ctl.controller_id, ctl.info()["public_key"], cid, expect=expect, now=datetime.now(UTC))
    for leaf in ctl.ledger.leaves(cid, 0, ctl.ledger.tree_head(cid).size):
        replay.feed(leaf)
    return {c.name: c for c in replay.finish(datetime.now(UTC)).checks}


def _with_td_quote(entry: dict[str, Any], quote: bytes) -> dict[str, Any]:
    """`entry` as a controller would have logged it had it taken `quote` as the TD quote."""
    envelope = json.loads(base64.b64decode(entry["evidence"]))
    envelope["td_quote"] = base64.urlsafe_b64encode(quote).decode().rstrip("=")
    return {**entry, "evidence": base64.b64encode(json.dumps(envelope, sort_keys=True).encode()).decode()}


def test_an_azure_tdx_cvm_on_the_twin(tmp_path: Path) -> None:
    if not have_tools():
        pytest.fail("swtpm and tpm2-tools are needed (make setup installs them: scripts/ensure-vtpm.sh)")
    loop = asyncio.new_event_loop()
    os.chmod(tmp_path, 0o755)
    ctl, owner = owned_controller(tmp_path)
    arm = FakeArm()
    tdx = SimulatedTdx.load_or_create(tmp_path / "azure-tdx-hw")
    pccs = FakePccs(tdx.collateral()).start()
    root_pem = x509.load_der_x509_certificate(tdx.root_ca_der).public_bytes(Encoding.PEM)
    local = ctl.providers["local"]
    assert isinstance(local, LocalProvider)
    twins: list[AzureTwin] = []
    built: list[tuple[str | None, list[bytes] | None]] = []

    def builder(name: str, settings: Mapping[str, object], credential: Any) -> Any:
        # What the production builder does with the settings (providers_config.default_builder):
        # the PCCS names the collateral source, tdx_roots the DCAP roots trusted instead of Intel's.
        config = dict(settings)
        url, roots = pccs_setting(name, config), roots_setting(name, config, "tdx_roots")
        built.append((url, roots))
        assert name == "azure" and url is not None and config == AZURE
        (tmp_path / "twin").mkdir(exist_ok=True)
        twin = AzureTwin(arm, local, tmp_path / "twin", None, credential, tdx=tdx, settings=config)
        twins.append(twin)
        return twin, AzureTwinEvidence(twin, tdx_collateral=pccs_collateral(url), trusted_tdx_roots=roots)

    ctl.setup.builder = builder
    ctl.setup.credential_maker = lambda name, fields: TokenCredential(fields)

    def submit(op: str, args: dict[str, Any], cvm: str | None = None, sealed: bytes | None = None) -> Any:
        jws = sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))
        return loop.run_until_complete(ctl.submit(jws, sealed=sealed))[1]

    try:
        submit("providers.set", {"providers": {"azure": {**AZURE, "pccs_url": pccs.url,
                                                         "tdx_roots": [root_pem.decode()]}}})
        assert built == [(pccs.url, [tdx.root_ca_der])]
        logged = [e for e in _log(ctl, CONTROLLER_LOG) if e["type"] == "providers"][-1]["providers"]["azure"]
        assert logged["pccs_url"] == pccs.url and logged["tdx_roots"] == [root_pem.decode()]  # by intent, public
        plaintext = json.dumps({"tenant_id": "t", "client_id": "c", "client_secret": SECRET}).encode()
        args, blob = sealed_credentials(ctl, "azure", plaintext)
        submit("credentials.set", args, sealed=blob)
        cvm = submit("cvm.create", {"provider": "azure", "tee": "tdx",
                                    "spec": {"controller_cidr": "198.51.100.10/32"}})["cvm"]
        cid = cvm["id"]
        assert cvm["evidence_kind"] == "azure-tdx" and cvm["instance_binding"] == "vm_id"
        token = TokenCredential({"client_secret": SECRET}).token
        assert arm.mutations() and all(s.headers.get("Authorization") == f"Bearer {token}" for s in arm.sent)
        vm = next(r for k, r in arm.resources.items() if "/virtualmachines/" in k)
        assert vm["properties"]["hardwareProfile"]["vmSize"] == "Standard_DC2es_v5"  # a TDX size
        vtpm = next(t.vtpm for t in twins if t.vtpm is not None)
        assert vtpm.imds_requests and {r["path"] for r in vtpm.imds_requests} == {"/acc/tdquote"}
        assert any(p.startswith("/tdx/certification/v4/tcb") for p in pccs.requests)
        assert submit("cvm.run", {"command": "echo on the tdx twin"}, cvm=cid)["exit_status"] == 0
        assert submit("cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        log = _log(ctl, cid)
        evidence = [e for e in log if e["type"] == "evidence"]
        assert [e["kind"] for e in evidence] == ["azure-tdx", "azure-tdx"]
        for e in evidence:  # the PCCS's collateral, logged beside each TD quote as served
            assert e["binds"]["vm_id"] == cvm["instance_id"]
            assert e["collateral"]["tdx"]["tcb_info"] == tdx.collateral()["tcb_info"]

        # The user: `duet verify --expect`, the development DCAP root pinned in the file.
        (tmp_path / "dev-dcap-root.der").write_bytes(tdx.root_ca_der)
        user = {"tee": "azure-tdx", "tdx_roots": ["dev-dcap-root.der"], "mrtd": TD_MRTD.hex(),
                "accepted_tcb_statuses": ["UpToDate"], "azure_ak_roots": [vtpm.vtpm_ca.pins.decode()],
                "require_event_log": True, "kernel_cmdline": CMDLINE, "max_evidence_age": "1h",
                "mode": "in-service"}
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": user}))
        expect = load_expectations(tmp_path / "expect.yaml")
        checks = _replay(ctl, cid, expect)
        assert not {n: c.detail for n, c in checks.items() if not c.ok}
        assert checks["evidence"].simulated and checks["cvm_claims"].simulated  # SIMULATED in the report
        assert "azure-tdx" in checks["cvm_tee"].detail
        assert "chains to a pinned vTPM root" in checks["evidence"].detail
        audit = audit_log([entries.encode(e) for e in log], controller_id=ctl.controller_id,
                          controller_key_b64=ctl.info()["public_key"], cvm_id=cid)
        verdict = {c.name: c for c in evidence_checks(audit.decoded, audit.state, trust_simulated=False,
                                                      now=ctl.clock.now(), expect=expect)[0]}
        assert verdict["evidence"].ok and verdict["evidence"].simulated and verdict["cvm_claims"].ok, verdict
        report = cvm_kinds.verify_evidence(dict(evidence[-1]), host_key=ctl.record(cid).host_key or "",
                                           now=ctl.clock.now(), trust=user_trust(expect, simulated=False),
                                           binding="vm_id", instance_id=cvm["instance_id"]).report
        assert report.simulated and report.hardware.simulated and report.to_dict()["simulated"]
        # Without the pin (Intel's root only) the same log fails.
        (tmp_path / "intel.yaml").write_text(yaml.safe_dump({"cvm": {k: v for k, v in user.items()
                                                                     if k != "tdx_roots"}}))
        unpinned = _replay(ctl, cid, load_expectations(tmp_path / "intel.yaml"))
        assert not unpinned["evidence"].ok and "trusted root" in unpinned["evidence"].detail

        # The attack: IMDS answers with another TD's quote, which the same platform really
        # signed (it verifies under the pinned root) but whose body is not this HCL
        # report's TDREPORT.
        other = td_quote(tdx, tdreport(hashlib.sha256(b"another TD's runtime claims").digest().ljust(64, b"\0")))
        submit("cvm.mode", {"mode": "in-update"}, cvm=cid)
        vtpm.answer_with = other
        with pytest.raises(errors.DuetError) as info:
            submit("cvm.mode", {"mode": "in-service"}, cvm=cid)
        assert "report_data differs from the HCL TDREPORT" in str(info.value)
        assert ctl.record(cid).mode == "in-update"
        assert [e["kind"] for e in _log(ctl, cid) if e["type"] == "evidence"] == ["azure-tdx", "azure-tdx"]
        after = _replay(ctl, cid, expect)
        assert not after["mode"].ok and "in-update" in after["mode"].detail
        assert not [n for n, c in after.items() if not c.ok and n != "mode"]  # the log itself is sound
        # Had a controller logged it, the user's own check refuses it.
        forged = _with_td_quote(dict(evidence[-1]), other)
        with pytest.raises(BindingError, match="differs from the HCL TDREPORT"):
            cvm_kinds.verify_evidence(forged, host_key=ctl.record(cid).host_key or "", now=ctl.clock.now(),
                                      trust=user_trust(expect, simulated=False), binding="vm_id",
                                      instance_id=cvm["instance_id"])
        decoded = [forged if d is audit.decoded[audit.state.evidence_indices[-1]] else d for d in audit.decoded]
        failed = {c.name: c for c in evidence_checks(decoded, audit.state, trust_simulated=False,
                                                     now=ctl.clock.now(), expect=expect)[0]}
        assert not failed["evidence"].ok and "differs from the HCL TDREPORT" in failed["evidence"].detail
        # The honest quote service again: in-service again.
        vtpm.answer_with = None
        assert submit("cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        everything = json.dumps([_log(ctl, CONTROLLER_LOG), _log(ctl, cid)])
        assert SECRET not in everything and token not in everything
        submit("cvm.delete", {}, cvm=cid)
        assert not [k for k in arm.resources if "duet-" in k]
    finally:
        for twin in twins:
            if twin.vtpm is not None:
                twin.vtpm.stop()
            for cvm_id in twin.created:
                loop.run_until_complete(local.delete(cvm_id))
            shutil.rmtree(twin.etc_ssh, ignore_errors=True)
        loop.run_until_complete(ctl.shutdown())
        loop.close()
        ctl.close()
        pccs.stop()
