"""Azure endpoint settings (`arm_endpoint`, `authority_host`, `ca_pem`): checked when the
providers intent is, handed to the SDK credential from the settings being built (never
from the sealed file), and refused in an enclave (test_providers_by_intent.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from duet.controller.providers_config import credential_fields, sdk_credential
from duet.cvm.errors import ProvisioningFailed
from duet.cvm.plan import make_provider

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))

from arm_server import _tls

AZURE = {"subscription_id": "00000000-1111-2222-3333-444444444444", "resource_group": "rg", "location": "westeurope",
         "controller_cidr": "198.51.100.10/32"}
FIELDS = {"tenant_id": "11111111-2222-3333-4444-555555555555", "client_id": "c", "client_secret": "s"}


def test_malformed_endpoints_are_refused(tmp_path: Path) -> None:
    ca_pem, _, _ = _tls(tmp_path)
    make_provider("azure", {**AZURE, "arm_endpoint": "https://arm.example.org", "authority_host":
                            "https://login.example.org/", "ca_pem": ca_pem})
    for bad in ({"arm_endpoint": "http://arm.example.org"}, {"arm_endpoint": "https://arm.example.org/x"},
                {"authority_host": "https://u:p@login.example.org"}, {"arm_endpoint": "arm.example.org"},
                {"ca_pem": "not a certificate"}, {"ca_pem": 7}):
        with pytest.raises(ProvisioningFailed, match=r"arm_endpoint|authority_host|ca_pem"):
            make_provider("azure", {**AZURE, **bad})


def test_the_credential_takes_authority_and_ca_from_the_settings(tmp_path: Path) -> None:
    ca_pem, _, _ = _tls(tmp_path)
    settings = {**AZURE, "authority_host": "https://login.example.org", "ca_pem": ca_pem}
    merged = credential_fields("azure", FIELDS, settings)
    assert merged == {**FIELDS, "authority_host": "https://login.example.org", "ca_pem": ca_pem}
    assert credential_fields("azure", FIELDS, AZURE) == FIELDS
    assert credential_fields("gcp", {"type": "service_account"}, settings) == {"type": "service_account"}
    cred = sdk_credential("azure", merged)
    assert type(cred).__name__ == "ClientSecretCredential"
    assert cred._authority == "https://login.example.org"  # type: ignore[attr-defined]
    assert cred._instance_discovery is False  # type: ignore[attr-defined]  # no call to the public cloud


def test_a_ca_file_planted_in_the_shared_temp_dir_is_never_trusted(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user of the host's temporary directory plants files under the names a
    bundle's digest would give (its own CA; a symlink where a temporary file would go): the
    bundle the TLS checks use is still exactly the owner's."""
    import hashlib
    import tempfile

    from duet.cvm.clouds import azure_endpoints

    shared = tmp_path / "tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    ca_pem, _, _ = _tls(tmp_path)
    attacker_pem, _, _ = _tls(tmp_path)
    name = f"duet-azure-ca-{hashlib.sha256(ca_pem.encode()).hexdigest()[:16]}"
    (shared / f"{name}.pem").write_text(attacker_pem)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (shared / f"{name}.tmp").symlink_to(victim)
    path = azure_endpoints.ca_file(ca_pem)
    assert Path(path).read_text() == ca_pem
    assert victim.read_text() == "precious"
    assert azure_endpoints.ca_file(ca_pem) == path  # written once per bundle
