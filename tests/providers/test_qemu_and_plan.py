"""qemu command lines and seeds, `plan_for` / `python -m duet.cvm.plan`, `make_provider`."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from provider_helpers import HOST_DATA

from duet.cvm import qemu as qemu_mod
from duet.cvm.errors import ProvisioningFailed
from duet.cvm.plan import make_provider, plan_for
from duet.cvm.qemu import QemuProvider, build_seed_iso, mrconfigid_for, seed_files


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_qemu_plan_snp(tmp_path: Path, controller_key: str) -> None:
    p = QemuProvider(tmp_path, ovmf="/usr/share/ovmf/OVMF.amdsev.fd")
    plan = p.plan("cvm1", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    json.dumps(plan)
    argv = plan["argv"]
    assert isinstance(argv, list)
    objects = _opt(argv, "-object")
    snp = next(o for o in objects if o.startswith("sev-snp-guest,"))
    fields = dict(kv.split("=", 1) for kv in snp.split(",")[1:])
    assert base64.b64decode(fields["host-data"]).hex() == HOST_DATA
    assert fields["policy"] == "0x30000"
    assert any(o.startswith("memory-backend-memfd,id=ram0") for o in objects)
    machine = _opt(argv, "-machine")[0]
    assert "confidential-guest-support=sev0" in machine and "memory-backend=ram0" in machine
    assert _opt(argv, "-accel") == ["kvm"]
    assert _opt(argv, "-bios") == ["/usr/share/ovmf/OVMF.amdsev.fd"]
    assert _opt(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:<port>-:22"]
    assert plan["host_data_binding"].startswith("SNP HOST_DATA")  # type: ignore[union-attr]
    seed = plan["seed"]["files"]  # type: ignore[index]
    cfg = yaml.safe_load(seed["user-data"])
    akf = next(f for f in cfg["write_files"] if f["path"] == "/etc/ssh/duet/authorized_keys")
    assert akf["content"] == " ".join(controller_key.split()[:2]) + "\n"
    assert cfg["ssh_pwauth"] is False
    assert yaml.safe_load(seed["meta-data"])["instance-id"] == "duet-cvm1"


def test_qemu_plan_tdx_and_none(tmp_path: Path, controller_key: str) -> None:
    p = QemuProvider(tmp_path, ovmf="/x/OVMF.tdx.fd")
    plan = p.plan("cvm1", authorized_key=controller_key, spec={"tee": "tdx", "host_data": HOST_DATA})
    argv = plan["argv"]
    assert isinstance(argv, list)
    tdx = json.loads(next(o for o in _opt(argv, "-object") if "tdx-guest" in o))
    raw = base64.b64decode(tdx["mrconfigid"])
    assert len(raw) == 48 and raw == mrconfigid_for(HOST_DATA) and raw[:32].hex() == HOST_DATA
    assert "confidential-guest-support=tdx0" in _opt(argv, "-machine")[0]
    assert plan["expected_measurement"]["value"] is None  # type: ignore[index]

    plain = QemuProvider(tmp_path, accel="tcg").plan("cvm1", authorized_key=controller_key,
                                                     spec={"tee": "none", "host_data": HOST_DATA})
    pargv = plain["argv"]
    assert isinstance(pargv, list)
    assert not any("guest" in o for o in _opt(pargv, "-object"))
    assert "confidential" not in " ".join(pargv)
    assert plain["evidence"] == "absent"
    assert _opt(pargv, "-accel") == ["tcg"]


def test_seed_iso_contents(tmp_path: Path, controller_key: str) -> None:
    pycdlib = pytest.importorskip("pycdlib")
    files = seed_files("cvm1", controller_key, "duet")
    build_seed_iso(files, tmp_path / "seed.iso")
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "seed.iso"))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, text in files.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue().decode() == text
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue().decode() == text
    finally:
        iso.close()


async def test_refuses_tee_the_host_lacks(tmp_path: Path, controller_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_mod, "host_tee_support", lambda: {"kvm": True, "snp": False, "tdx": False})
    p = QemuProvider(tmp_path / "q", image=tmp_path / "img.raw")
    with pytest.raises(ProvisioningFailed, match="cannot launch snp guests"):
        await p.create("cvm1", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    assert not (tmp_path / "q" / "cvm1").exists()
    plan = p.plan("cvm1", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    assert plan["host_supports"] == {"kvm": True, "snp": False, "tdx": False}


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
async def test_failed_start_leaves_nothing(tmp_path: Path, controller_key: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_mod, "host_tee_support", lambda: {"kvm": False, "snp": False, "tdx": False})
    img = tmp_path / "img.raw"
    img.write_bytes(b"\0" * 1024 * 1024)
    p = QemuProvider(tmp_path / "q", image=img, qemu="false", allow_no_tee=True)
    with pytest.raises(ProvisioningFailed, match="qemu failed to start"):
        await p.create("cvm1", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    assert list((tmp_path / "q").iterdir()) == []
    assert await p.status("cvm1") == "missing"


# ---------------------------------------------------------------------- plan_for / make_provider


def test_plan_for_each_provider(controller_key: str) -> None:
    az = plan_for("azure", tee="snp", spec={"controller_cidr": "198.51.100.10"}, authorized_key=controller_key)
    vm = az["requests"][-1]["body"]["properties"]  # type: ignore[index]
    assert vm["securityProfile"]["securityType"] == "ConfidentialVM"
    assert any("random stand-in" in n for n in az["notes"])  # type: ignore[union-attr]
    gcp = plan_for("gcp", tee="tdx", spec={"project": "p", "zone": "z", "host_data": HOST_DATA},
                   authorized_key=controller_key)
    assert gcp["requests"][-1]["body"]["confidentialInstanceConfig"] == {"confidentialInstanceType": "TDX"}  # type: ignore[index]
    assert gcp["unresolved"] == ["controller_cidr"]
    q = plan_for("qemu", tee="snp", spec={"host_data": HOST_DATA}, authorized_key=controller_key)
    assert any(o.startswith("sev-snp-guest") for o in _opt(q["argv"], "-object"))  # type: ignore[arg-type]
    with pytest.raises(ProvisioningFailed, match="no plan"):
        plan_for("aws", tee="snp", spec={}, authorized_key=controller_key)


def test_plan_module_cli(controller_key: str) -> None:
    env = {**os.environ, "AZURE_SUBSCRIPTION_ID": ""}
    out = subprocess.run(
        [sys.executable, "-m", "duet.cvm.plan", "--provider", "azure", "--tee", "snp", "--key", controller_key,
         "--spec", json.dumps({"controller_cidr": "198.51.100.10", "location": "westeurope"})],
        check=True, capture_output=True, text=True, env=env,
    )
    plan = json.loads(out.stdout)
    vm = plan["requests"][-1]["body"]["properties"]
    assert vm["securityProfile"] == {"securityType": "ConfidentialVM",
                                     "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}}
    assert vm["osProfile"]["allowExtensionOperations"] is False
    assert vm["osProfile"]["linuxConfiguration"]["provisionVMAgent"] is False
    assert vm["diagnosticsProfile"]["bootDiagnostics"]["enabled"] is False
    bad = subprocess.run([sys.executable, "-m", "duet.cvm.plan", "--provider", "gcp", "--tee", "sgx"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unsupported TEE" in bad.stderr


def test_make_provider(tmp_path: Path) -> None:
    az = make_provider("azure", {"subscription_id": "s", "resource_group": "rg", "location": "l"})
    assert az.name == "azure"
    gcp = make_provider("gcp", {"project": "p", "zone": "z"})
    assert gcp.name == "gcp"
    q = make_provider("qemu", {"base_dir": str(tmp_path), "accel": "tcg"})
    assert q.name == "qemu"
    with pytest.raises(ProvisioningFailed, match="unknown config keys: client_secret"):
        make_provider("azure", {"client_secret": "x"})
    with pytest.raises(ProvisioningFailed, match="unknown provider"):
        make_provider("aws", {})
