"""`snp_arks`: SEV-SNP roots pinned in place of AMD's ARKs, by the owner for the
controller's own check of a provider's CVMs (a provider setting, refused under --tee
gramine: tests/controller/test_providers_by_intent.py), and by a user for `duet verify`
(`cvm.snp_arks` in the expectations). Evidence signed under a development root passes
only where that root is pinned, and its report says SIMULATED; pinned elsewhere, or not
at all, it is refused."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from roots_helpers import GCP, NONCE, new_host_key, verify

from duet.attestation import cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import UntrustedRoot
from duet.attestation.simulated.snp import SimulatedSnp
from duet.client.controller_log import ControllerLogReplay, controller_log_checks
from duet.client.cvm_checks import pinned_snp_arks
from duet.client.errors import ClientError
from duet.client.expectations import load_expectations
from duet.controller.providers_config import default_builder
from duet.controller.service import CONTROLLER_LOG
from duet.cvm.errors import CvmError
from duet.ledger import entries
from duet.ledger.intent import sign_intent
from inproc import owned_controller


def _entry(snp: SimulatedSnp, host_key: str) -> dict[str, Any]:
    """A configfs-tsm SEV-SNP evidence entry (GCP's kind) signed by `snp`'s dev VCEK."""
    report = snp.report(cvm_report_data(NONCE, host_key), measurement=bytes(48))
    return {"kind": "snp", "nonce": NONCE.hex(), "evidence": base64.b64encode(report).decode(),
            "collateral": {"vcek": base64.b64encode(snp.vcek_der).decode(), "cert_chain": snp.cert_chain_pem.decode()}}


def test_the_controller_trusts_exactly_the_roots_the_setting_names(tmp_path: Path) -> None:
    dev, other = SimulatedSnp.load_or_create(tmp_path / "dev"), SimulatedSnp.load_or_create(tmp_path / "other")
    build = default_builder("https://pccs.example.org")
    host_key = new_host_key()
    entry = _entry(dev, host_key)
    _, pinned = build("gcp", {**GCP, "snp_arks": [dev.ark_pem.decode()]}, None)
    report = verify(entry, host_key, pinned.trust)  # type: ignore[attr-defined]
    assert report.simulated  # the controller's report of it says so
    _, elsewhere = build("gcp", {**GCP, "snp_arks": [other.ark_pem.decode()]}, None)
    with pytest.raises(UntrustedRoot):
        verify(entry, host_key, elsewhere.trust)  # type: ignore[attr-defined]
    _, amd_only = build("gcp", dict(GCP), None)
    with pytest.raises(UntrustedRoot):
        verify(entry, host_key, amd_only.trust)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("arks", "why"), [
    ("not a list", "non-empty list of PEM certificates"),
    ([], "non-empty list of PEM certificates"),
    (["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"], "snp_arks"),
    ("ask", "not self-signed"),
    ("two", "exactly one certificate"),
])
def test_a_pin_that_can_anchor_no_chain_is_refused_by_name(tmp_path: Path, arks: Any, why: str) -> None:
    dev = SimulatedSnp.load_or_create(tmp_path / "dev")
    if arks == "ask":
        arks = [dev.ask_pem.decode()]
    elif arks == "two":
        arks = [dev.cert_chain_pem.decode()]
    with pytest.raises(CvmError, match=why) as info:
        default_builder("https://pccs.example.org")("gcp", {**GCP, "snp_arks": arks}, None)
    assert str(info.value).startswith("provider gcp: ")


def test_the_user_pins_roots_in_the_expectations_as_text_or_files(tmp_path: Path) -> None:
    dev = SimulatedSnp.load_or_create(tmp_path / "dev")
    (tmp_path / "ark.pem").write_bytes(dev.ark_pem)
    for pin in ("ark.pem", dev.ark_pem.decode()):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"tee": "snp", "snp_arks": [pin]}}))
        arks = pinned_snp_arks(load_expectations(tmp_path / "expect.yaml"))
        assert arks is not None and len(arks) == 1
        host_key = new_host_key()
        assert verify(_entry(dev, host_key), host_key, cvm_kinds.Trust(snp_arks=arks)).simulated
    for bad, why in (([dev.ask_pem.decode()], "not self-signed"), (["missing.pem"], "cannot read"),
                     ([], "at least one")):
        (tmp_path / "expect.yaml").write_text(yaml.safe_dump({"cvm": {"snp_arks": bad}}))
        with pytest.raises(ClientError, match=why) as info:
            load_expectations(tmp_path / "expect.yaml")
        assert info.value.code == "invalid_expectations" and "snp_arks" in str(info.value)
    assert pinned_snp_arks(None) is None


def test_the_controller_log_check_says_which_settings_pinned_other_roots(tmp_path: Path) -> None:
    """A user reading the controller log learns that the controller was told to judge a
    provider's CVMs under a development root (outside an enclave), and where; it resumes
    from a saved state with the same finding."""


    ctl, owner = owned_controller(tmp_path)
    dev = SimulatedSnp.load_or_create(tmp_path / "dev")
    try:
        for settings in ({"gcp": dict(GCP)}, {"gcp": {**GCP, "snp_arks": [dev.ark_pem.decode()]}}):
            jws = sign_intent(owner, op="providers.set", aud=ctl.controller_id, args={"providers": settings},
                              iat=int(time.time()))
            asyncio.run(ctl.submit(jws))
        leaves = ctl.ledger.leaves(CONTROLLER_LOG, 0, ctl.ledger.tree_head(CONTROLLER_LOG).size)
    finally:
        ctl.close()
    pinned = [i for i, leaf in enumerate(leaves) if entries.decode(leaf).get("providers", {}).get("gcp", {})
              .get("snp_arks")]
    checks, log = controller_log_checks(leaves, controller_id=ctl.controller_id, expect=None)
    assert log.root_pins == pinned and len(pinned) == 1
    entry_check = next(c for c in checks if c.name == "controller_log_entries")
    assert entry_check.ok and f"SIMULATED: provider settings at entry {pinned[0]} pin" in entry_check.detail
    # Fed half, saved, resumed: the finding survives the incremental verifier's state.
    first = ControllerLogReplay(ctl.controller_id)
    for leaf in leaves:
        first.feed(leaf)
    resumed = ControllerLogReplay(ctl.controller_id)
    resumed.load(first.dump())
    assert resumed.log.root_pins == pinned
