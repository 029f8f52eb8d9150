"""`pccs_url` in a provider's settings (set by `providers.set`, so logged) names where the
controller's remote collector fetches TDX collateral; without it, the controller-wide
default (Intel's PCS). A malformed URL is refused when the intent is checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from duet.attestation.simulated.tdx import SimulatedTdx
from duet.controller.evidence_remote import RemoteEvidence
from duet.controller.providers_config import default_builder, pccs_setting
from duet.cvm.errors import CvmError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))

from fake_gce import FakeGoogleCredentials
from fake_pccs import FakePccs

GCP = {"project": "proj-1", "zone": "europe-west4-a", "controller_cidr": "198.51.100.10/32"}


def test_the_setting_is_taken_out_and_checked() -> None:
    config: dict[str, object] = {**GCP, "pccs_url": "https://pccs.example.org:8081/"}
    assert pccs_setting("gcp", config) == "https://pccs.example.org:8081"
    assert "pccs_url" not in config  # the provider itself never sees it
    assert pccs_setting("gcp", dict(GCP)) is None
    for bad in ("ftp://pccs.example.org", "https://", "pccs.example.org", "https://u:p@pccs.example.org",
                "https://pccs.example.org/?x=1", 42):
        with pytest.raises(CvmError, match="pccs_url"):
            pccs_setting("gcp", {"pccs_url": bad})


def test_the_production_builder_fetches_collateral_from_the_providers_pccs(tmp_path: Path) -> None:
    tdx = SimulatedTdx.load_or_create(tmp_path / "hw")
    pccs = FakePccs(tdx.collateral()).start()
    try:
        build = default_builder("https://unused.invalid")
        _, collector = build("gcp", {**GCP, "pccs_url": pccs.url}, FakeGoogleCredentials())
        assert isinstance(collector, RemoteEvidence) and collector.tdx_collateral is not None
        got = collector.tdx_collateral(tdx.quote(b"\x01" * 64))
        assert got["tcb_info"] == tdx.collateral()["tcb_info"]
        assert any(p.startswith("/tdx/certification/v4/tcb?fmspc=") for p in pccs.requests)
        with pytest.raises(CvmError, match="pccs_url"):
            build("gcp", {**GCP, "pccs_url": "file:///etc/passwd"}, FakeGoogleCredentials())
    finally:
        pccs.stop()
