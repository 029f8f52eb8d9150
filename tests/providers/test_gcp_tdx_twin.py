"""A Google Cloud TDX CVM end to end through the controller's own flow, on a twin, with its
DCAP collateral from a PCCS named by intent:

- `providers.set` configures gcp with `pccs_url` pointing at a local PCCS stand-in
  (tests/providers/fake_pccs.py) that serves a SIMULATED TDX platform's collateral in the
  PCCS v4 API's shape; the setting stands in the controller log's `providers` entry;
- `cvm.create --tee tdx` drives the real google-cloud-compute clients against the fake
  GCE; the instance is a local sshd guest whose configfs-tsm is the FUSE twin in TDX mode
  (a SIMULATED TD quote over the report data, `provider: tdx_guest`);
- the controller fetches the collateral for each quote from that PCCS
  (`dcap_qvl.get_collateral`, the production code path), verifies the quote under the
  simulated platform's DCAP root, and logs the collateral beside the quote;
- the CVM reaches in-service, and the user's replay (the one `duet verify` runs) passes
  the TDX expectations;
- collateral altered at the PCCS is refused: the CVM does not re-enter in-service.

As in the other twins, the lockdown checks are the local provider's host-side ones, and
the root the controller and the user are told to trust is the SIMULATED platform's."""

from __future__ import annotations

import asyncio
import base64
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
from fake_gce import FakeGce, FakeGoogleCredentials
from fake_pccs import FakePccs
from test_gcp_twin_flow import GcpTwin, GcpTwinEvidence, _mount_tsm, _unmount
from tsm_twin import guest_dirs, have_fuse

from duet.attestation.simulated.tdx import SimulatedTdx
from duet.client.expectations import load_expectations
from duet.client.replay import CvmReplay
from duet.controller import errors
from duet.controller.providers_config import pccs_setting
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.cvm.local import LocalProvider
from duet.ledger import entries
from duet.ledger.intent import sign_intent
from duet.tee.gramine import pccs_collateral
from inproc import owned_controller

GCP = {"project": "proj-1", "zone": "europe-west4-a", "controller_cidr": "198.51.100.10/32", "poll_interval_s": 0}


class GcpTdxTwinEvidence(GcpTwinEvidence):
    """The GCP twin's collector (configfs-tsm path moved to the FUSE twin), with the TDX
    collateral source and DCAP root the test hands it."""

    def __init__(self, twin: GcpTwin, tsm: Path, collateral: Any, root: bytes) -> None:
        super().__init__(twin, b"", tsm)
        self.tdx_collateral = collateral
        self.trust = type(self.trust)(tdx_roots=(root,))


def _log(ctl: Controller, log_id: str) -> list[dict[str, Any]]:
    size = ctl.ledger.tree_head(log_id).size
    return [entries.decode(leaf) for leaf in ctl.ledger.leaves(log_id, 0, size)]


def test_a_gcp_tdx_cvm_with_collateral_from_a_pccs_set_by_intent(tmp_path: Path) -> None:
    if not have_fuse():
        pytest.fail("the configfs-tsm twin needs /dev/fuse, libfuse3, root and mfusepy (pip install -e '.[dev]')")
    base = guest_dirs("duet-gcp-tdx-")
    tdx = SimulatedTdx.load_or_create(tmp_path / "gcp-tdx-hw")
    pccs = FakePccs(tdx.collateral()).start()
    fuse_proc = _mount_tsm(base / "tsm", tmp_path / "gcp-tdx-hw", "tdx")
    gce = FakeGce().start()
    loop = asyncio.new_event_loop()
    os.chmod(tmp_path, 0o755)
    ctl, owner = owned_controller(tmp_path)
    local = ctl.providers["local"]
    assert isinstance(local, LocalProvider)
    twins: list[GcpTwin] = []
    pccs_urls: list[str | None] = []

    def builder(name: str, settings: Mapping[str, object], credential: Any) -> Any:
        # What the production builder does with the setting: taken out of the provider's
        # settings, it names the collateral source of this provider's TDX quotes.
        config = dict(settings)
        url = pccs_setting(name, config)
        pccs_urls.append(url)
        assert url is not None
        # No credentials were sealed: what the workload identity would give.
        twin = GcpTwin(config, credential or FakeGoogleCredentials(), local, base / "etc")
        twins.append(twin)
        return twin, GcpTdxTwinEvidence(twin, base / "tsm", pccs_collateral(url), tdx.root_ca_der)

    ctl.setup.builder = builder

    def submit(op: str, args: dict[str, Any], cvm: str | None = None) -> Any:
        jws = sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))
        return loop.run_until_complete(ctl.submit(jws))[1]

    try:
        settings = {**GCP, "api_endpoint": gce.endpoint, "pccs_url": pccs.url}
        submit("providers.set", {"providers": {"gcp": settings}})
        assert pccs_urls == [pccs.url]
        providers = [e for e in _log(ctl, CONTROLLER_LOG) if e["type"] == "providers"]
        assert providers[-1]["providers"]["gcp"]["pccs_url"] == pccs.url  # by intent, in the public log
        cvm = submit("cvm.create", {"provider": "gcp", "tee": "tdx",
                                    "spec": {"controller_cidr": "198.51.100.10/32"}})["cvm"]
        cid = cvm["id"]
        assert cvm["evidence_kind"] == "tdx" and cvm["instance_binding"] == "none"
        assert any(r.path.startswith("/tdx/certification/v4/tcb") for r in [_R(p) for p in pccs.requests])
        assert submit("cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        log = _log(ctl, cid)
        evidence = [e for e in log if e["type"] == "evidence"]
        assert [e["kind"] for e in evidence] == ["tdx", "tdx"]
        # The collateral the PCCS served is logged beside each quote, as served.
        for e in evidence:
            assert e["collateral"]["tcb_info"] == tdx.collateral()["tcb_info"]
            assert e["collateral"]["qe_identity"] == tdx.collateral()["qe_identity"]
        # The user's side: the replay `duet verify` runs, with TDX expectations.
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {
            "tee": "tdx", "instance_binding": "none", "mode": "in-service", "mrtd": "00" * 48,
            "accepted_tcb_statuses": ["UpToDate"], "max_evidence_age": "1h"}}))
        expect = load_expectations(tmp_path / "expect.yaml")
        replay = CvmReplay(ctl.controller_id, base64.b64encode(ctl.public_key.public_bytes_raw()).decode(), cid,
                           expect=expect, trust_simulated=True, tdx_roots=(tdx.root_ca_der,),
                           now=datetime.now(UTC))
        for leaf in ctl.ledger.leaves(cid, 0, ctl.ledger.tree_head(cid).size):
            replay.feed(leaf)
        checks = replay.finish(datetime.now(UTC)).checks
        failed = {c.name: c.detail for c in checks if not c.ok}
        assert not failed, failed
        assert any(c.name == "evidence" for c in checks)
        # Without the platform's root the same log does not verify (Intel's root only).
        strict = CvmReplay(ctl.controller_id, base64.b64encode(ctl.public_key.public_bytes_raw()).decode(), cid,
                           expect=expect, trust_simulated=True, now=datetime.now(UTC))
        for leaf in ctl.ledger.leaves(cid, 0, ctl.ledger.tree_head(cid).size):
            strict.feed(leaf)
        assert not next(c for c in strict.finish(datetime.now(UTC)).checks if c.name == "evidence").ok

        # Altered collateral at the PCCS (or a host in the way): refused, and the CVM
        # does not re-enter in-service.
        submit("cvm.mode", {"mode": "in-update"}, cvm=cid)
        pccs.tamper = True
        with pytest.raises(errors.DuetError) as info:
            submit("cvm.mode", {"mode": "in-service"}, cvm=cid)
        assert "does not verify" in str(info.value) and "tcb_info" in str(info.value).lower()
        assert ctl.record(cid).mode == "in-update"
        assert [e["kind"] for e in _log(ctl, cid) if e["type"] == "evidence"] == ["tdx", "tdx"]
        pccs.tamper = False
        assert submit("cvm.mode", {"mode": "in-service"}, cvm=cid)["cvm"]["mode"] == "in-service"
        submit("cvm.delete", {}, cvm=cid)
        assert json.dumps(_log(ctl, CONTROLLER_LOG))  # the controller log stays well-formed
    finally:
        for twin in twins:
            for cvm_id in twin.created:
                loop.run_until_complete(local.delete(cvm_id))
        loop.run_until_complete(ctl.shutdown())
        loop.close()
        ctl.close()
        gce.stop()
        pccs.stop()
        _unmount(base / "tsm", fuse_proc)
        shutil.rmtree(base, ignore_errors=True)


class _R:
    def __init__(self, path: str) -> None:
        self.path = path
