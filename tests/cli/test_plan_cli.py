"""`duet cvm create --plan` prints the exact provider requests; nothing is sent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def plan(*args: str) -> dict[str, object]:
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "create", "--plan", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _walk(obj: object):  # type: ignore[no-untyped-def]
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _values(obj: object, key: str) -> list[object]:
    return [v for k, v in _walk(obj) if k == key]


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_azure_plan_has_every_hardening_setting(tee: str) -> None:
    p = plan("--provider", "azure", "--tee", tee, "--spec", '{"controller_cidr": "203.0.113.7/32"}')
    assert "PLAN ONLY" in str(p["note"])
    assert _values(p, "securityType").count("ConfidentialVM") >= 1
    assert "DiskWithVMGuestState" in _values(p, "securityEncryptionType")
    assert _values(p, "secureBootEnabled") and all(v is True for v in _values(p, "secureBootEnabled"))
    assert _values(p, "vTpmEnabled") and all(v is True for v in _values(p, "vTpmEnabled"))
    assert False in _values(p, "provisionVMAgent") and False in _values(p, "allowExtensionOperations")
    assert True in _values(p, "disablePasswordAuthentication")
    assert "203.0.113.7/32" in _values(p, "sourceAddressPrefix")
    boot = _values(p, "bootDiagnostics")
    assert boot and all(b is False or (isinstance(b, dict) and b.get("enabled") is False) for b in boot)


@pytest.mark.parametrize("tee,kind", [("snp", "SEV_SNP"), ("tdx", "TDX")])
def test_gcp_plan_blocks_other_doors(tee: str, kind: str) -> None:
    p = plan("--provider", "gcp", "--tee", tee, "--spec", '{"controller_cidr": "203.0.113.7/32"}')
    text = json.dumps(p)
    assert kind in _values(p, "confidentialInstanceType") or kind in text
    items = {i["key"]: i["value"] for i in _values(p, "items")[0] if isinstance(i, dict) and "key" in i} \
        if _values(p, "items") else {}
    assert str(items.get("enable-oslogin", "")).upper() == "FALSE"
    assert str(items.get("block-project-ssh-keys", "")).upper() == "TRUE"
    assert str(items.get("serial-port-enable", "")).upper() in ("FALSE", "0")
    assert "203.0.113.7/32" in text


def test_qemu_plan_sets_host_data() -> None:
    host_data = "ab" * 32
    p = plan("--provider", "qemu", "--tee", "snp", "--spec", json.dumps({"host_data": host_data}))
    text = json.dumps(p)
    assert "sev-snp-guest" in text and "host-data" in text
