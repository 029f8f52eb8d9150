"""The azure provider against the real Azure SDK clients, through azure-core's transport
hook, with recorded-shape ARM responses (tests/providers/fake_arm.py). No account needed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

pytest.importorskip("azure.mgmt.compute")
pytest.importorskip("azure.mgmt.network")
pytest.importorskip("azure.mgmt.resource")

from fake_arm import FakeArm, FakeCredential
from provider_helpers import HOST_DATA

from duet.cvm.azure import API_VERSIONS, AzureProvider
from duet.cvm.errors import CvmNotFound, ProvisioningFailed

SUB = "00000000-1111-2222-3333-444444444444"
RG = "duet-rg"
CVM = "c0ffee00-1234"
PREFIX = "duet-c0ffee00-1234"
SPEC: dict[str, object] = {"tee": "snp", "host_data": HOST_DATA, "controller_cidr": "198.51.100.10"}


def provider(arm: FakeArm | None = None, **kw: Any) -> AzureProvider:
    arm = arm or FakeArm()
    args: dict[str, Any] = {
        "subscription_id": SUB,
        "resource_group": RG,
        "location": "westeurope",
        "credential": FakeCredential(),
        "transport": arm.transport(),
        "poll_interval_s": 0.0,
        "retry_total": 0,
    }
    args.update(kw)
    return AzureProvider(**args)


def rg_path() -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}"


# ---------------------------------------------------------------------- plan


def test_plan_has_every_security_setting(controller_key: str) -> None:
    plan = AzureProvider(subscription_id=SUB, resource_group=RG, location="westeurope").plan(
        CVM, authorized_key=controller_key, spec=SPEC
    )
    json.dumps(plan)  # JSON-serialisable
    assert plan["unresolved"] == []
    reqs = {r["kind"]: r for r in plan["requests"]}  # type: ignore[union-attr]
    assert [r["kind"] for r in plan["requests"]] == ["nsg", "vnet", "ip", "nic", "vm"]  # type: ignore[union-attr]
    vm = reqs["vm"]
    assert vm["method"] == "PUT"
    assert vm["url"] == (f"https://management.azure.com{rg_path()}/providers/Microsoft.Compute/virtualMachines/"
                         f"{PREFIX}?api-version={API_VERSIONS['compute']}")
    p = vm["body"]["properties"]
    assert p["hardwareProfile"]["vmSize"] == "Standard_DC2as_v5"
    assert p["securityProfile"] == {"securityType": "ConfidentialVM",
                                    "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}}
    disk = p["storageProfile"]["osDisk"]
    assert disk["managedDisk"]["securityProfile"] == {"securityEncryptionType": "DiskWithVMGuestState"}
    assert p["storageProfile"]["imageReference"]["offer"] == "0001-com-ubuntu-confidential-vm-jammy"
    osp = p["osProfile"]
    assert osp["allowExtensionOperations"] is False
    assert osp["linuxConfiguration"]["provisionVMAgent"] is False
    assert osp["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert "adminPassword" not in osp
    key = " ".join(controller_key.split()[:2])
    assert osp["linuxConfiguration"]["ssh"]["publicKeys"] == [{"path": "/home/duet/.ssh/authorized_keys",
                                                                "keyData": key}]
    user_data = base64.b64decode(osp["customData"]).decode()
    assert user_data == plan["user_data"]
    cfg = yaml.safe_load(user_data)
    assert {"path": "/etc/ssh/duet/authorized_keys", "owner": "root:root", "permissions": "0644",
            "content": key + "\n"} in cfg["write_files"]
    assert "rm -f /home/duet/.ssh/authorized_keys" in cfg["runcmd"]  # the osProfile copy goes
    assert "systemctl mask --now walinuxagent.service || true" in cfg["bootcmd"]
    assert p["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": False}}
    assert vm["body"]["tags"]["duet-host-data"] == HOST_DATA
    assert vm["body"]["tags"]["duet-cvm"] == CVM
    # NSG: SSH from the controller only, every other inbound flow denied
    rules = {r["name"]: r["properties"] for r in reqs["nsg"]["body"]["properties"]["securityRules"]}
    ssh = rules["duet-ssh-from-controller"]
    assert (ssh["access"], ssh["direction"], ssh["protocol"], ssh["destinationPortRange"],
            ssh["sourceAddressPrefix"]) == ("Allow", "Inbound", "Tcp", "22", "198.51.100.10/32")
    deny = rules["duet-deny-all-other-inbound"]
    assert (deny["access"], deny["sourceAddressPrefix"], deny["destinationPortRange"]) == ("Deny", "*", "*")
    assert reqs["nic"]["body"]["properties"]["networkSecurityGroup"]["id"].endswith(f"/{PREFIX}-nsg")
    assert [c["kind"] for c in plan["cleanup"]] == ["vm", "disk", "nic", "ip", "vnet", "nsg"]  # type: ignore[union-attr]


def test_plan_tdx_and_2404(controller_key: str) -> None:
    plan = AzureProvider(subscription_id=SUB, resource_group=RG, location="westeurope").plan(
        CVM, authorized_key=controller_key, spec={**SPEC, "tee": "tdx", "image": "ubuntu-24.04"}
    )
    vm = plan["requests"][-1]["body"]["properties"]  # type: ignore[index]
    assert vm["hardwareProfile"]["vmSize"] == "Standard_DC2es_v5"
    assert vm["storageProfile"]["imageReference"] == {"publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                                                      "sku": "cvm", "version": "latest"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"tee": "snp", "size": "Standard_DC2es_v5"}, "not an Azure SEV-SNP"),
        ({"tee": "tdx", "size": "Standard_D2s_v5"}, "not an Azure TDX"),
        ({"tee": "sgx"}, "unsupported TEE"),
        ({"image": "windows"}, "unsupported image"),
        ({"controller_cidr": "0.0.0.0/0"}, "too wide"),
        ({"host_data": "abcd"}, "host_data"),
    ],
)
def test_plan_rejects(spec: dict[str, object], match: str, controller_key: str) -> None:
    with pytest.raises(ProvisioningFailed, match=match):
        AzureProvider(subscription_id=SUB, resource_group=RG, location="x").plan(
            CVM, authorized_key=controller_key, spec={**SPEC, **spec}
        )


def test_plan_without_configuration_shows_placeholders(controller_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    plan = AzureProvider().plan(CVM, authorized_key=controller_key, spec={"host_data": HOST_DATA})
    assert plan["unresolved"] == ["subscription_id", "resource_group", "location", "controller_cidr"]
    assert "<subscription_id>" in plan["requests"][0]["url"]  # type: ignore[index]


async def test_create_refuses_an_unresolved_plan_without_sending(controller_key: str) -> None:
    arm = FakeArm()
    with pytest.raises(ProvisioningFailed, match="controller_cidr"):
        await provider(arm).create(CVM, authorized_key=controller_key, spec={"host_data": HOST_DATA})
    assert arm.sent == []


# ---------------------------------------------------------------------- create


async def test_create_sends_exactly_the_plan(controller_key: str) -> None:
    arm = FakeArm()
    cred = FakeCredential()
    p = provider(arm, credential=cred)
    plan = p.plan(CVM, authorized_key=controller_key, spec=SPEC)
    prov = await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    puts = [s for s in arm.sent if s.method == "PUT"]
    assert [(s.method, s.url, s.body) for s in puts] == [
        (r["method"], r["url"], r["body"]) for r in plan["requests"]  # type: ignore[union-attr]
    ]
    assert all(s.headers["Authorization"] == "Bearer fake-arm-token-SECRET" for s in arm.sent)
    assert cred.calls >= 1
    assert (prov.host, prov.port, prov.user) == ("203.0.113.7", 22, "duet")
    assert prov.instance_id == "6f0e9c1a-0000-4000-8000-00000000abcd"
    assert prov.launch["requests"] == plan["requests"]
    assert prov.launch["host_data"] == HOST_DATA
    text = json.dumps(prov.launch)
    assert "SECRET" not in text and "Bearer" not in text
    assert await p.status(CVM) == "running"


def _urls(node: object) -> list[str]:
    if isinstance(node, dict):
        return [u for k, v in node.items() for u in ([v] if k == "url" and isinstance(v, str) else _urls(v))]
    if isinstance(node, list):
        return [u for v in node for u in _urls(v)]
    return []


async def test_the_plan_shows_the_arm_endpoint_the_clients_use(controller_key: str) -> None:
    """With `arm_endpoint` (another cloud, a twin) every URL of the plan, and of the launch
    record the CVM log keeps, is that endpoint's, and it is where `create` sends them."""
    arm = FakeArm()
    p = provider(arm, arm_endpoint="https://arm.twin.example:8443/")
    plan = p.plan(CVM, authorized_key=controller_key, spec=SPEC)
    urls = _urls(plan)
    assert len(urls) >= 10 and all(u.startswith("https://arm.twin.example:8443/subscriptions/") for u in urls), urls
    assert "management.azure.com" not in json.dumps(plan)
    prov = await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    puts = [s for s in arm.sent if s.method == "PUT"]
    assert [(s.method, s.url, s.body) for s in puts] == [
        (r["method"], r["url"], r["body"]) for r in plan["requests"]  # type: ignore[union-attr]
    ]
    assert prov.launch["requests"] == plan["requests"]
    # Without it: Azure's public cloud, as before.
    public = provider().plan(CVM, authorized_key=controller_key, spec=SPEC)
    assert all(u.startswith(f"https://management.azure.com{rg_path()}/") for u in _urls(public))


async def test_failed_vm_create_deletes_everything_in_reverse(controller_key: str) -> None:
    arm = FakeArm(async_kinds={"vm"}, async_outcome={"vm": "Failed"})
    p = provider(arm)
    with pytest.raises(ProvisioningFailed, match=r"AllocationFailed|no capacity") as info:
        await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    assert "every resource it made was deleted" in str(info.value)
    deletes = [s.path.rsplit("/", 1)[1] for s in arm.sent if s.method == "DELETE"]
    assert deletes == [PREFIX, f"{PREFIX}-osdisk", f"{PREFIX}-nic", f"{PREFIX}-ip", f"{PREFIX}-vnet",
                       f"{PREFIX}-nsg"]
    for s in arm.sent:
        if s.method == "DELETE":
            api = "disks" if "/disks/" in s.path else "compute" if "virtualMachines" in s.path else "network"
            assert s.query["api-version"] == [API_VERSIONS[api]]
    assert arm.sent[-1].method == "GET" and arm.sent[-1].path.endswith("/resources")  # checked by listing
    assert arm.resources == {}


async def test_failed_nic_create_deletes_what_was_made(controller_key: str) -> None:
    arm = FakeArm(fail={("PUT", "networkInterfaces"): (400, {"error": {"code": "InvalidParameter",
                                                                         "message": "subnet is full"}})})
    with pytest.raises(ProvisioningFailed, match="subnet is full"):
        await provider(arm).create(CVM, authorized_key=controller_key, spec=SPEC)
    assert not any("virtualMachines" in s.path for s in arm.sent if s.method == "PUT")
    deletes = [s.path.rsplit("/", 1)[1] for s in arm.sent if s.method == "DELETE"]
    assert deletes == [f"{PREFIX}-nic", f"{PREFIX}-ip", f"{PREFIX}-vnet", f"{PREFIX}-nsg"]
    assert arm.resources == {}


async def test_timeout_deletes_everything(controller_key: str) -> None:
    arm = FakeArm(async_kinds={"vm"}, async_outcome={"vm": "InProgress"})
    p = provider(arm, create_timeout_s=0.5, poll_interval_s=0.05)
    with pytest.raises(ProvisioningFailed, match="did not finish in time"):
        await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    assert any(s.method == "DELETE" and s.path.endswith(f"/virtualMachines/{PREFIX}") for s in arm.sent)
    assert arm.resources == {}


async def test_cleanup_leftover_is_reported(controller_key: str) -> None:
    conflict = (409, {"error": {"code": "InUseSubnetCannotBeDeleted", "message": "in use"}})
    arm = FakeArm(async_kinds={"vm"}, async_outcome={"vm": "Failed"},
                  fail={("DELETE", "virtualNetworks"): conflict})
    with pytest.raises(ProvisioningFailed, match=f"still present after clean-up: {PREFIX}-vnet"):
        await provider(arm).create(CVM, authorized_key=controller_key, spec=SPEC)


async def test_spec_may_not_move_the_cvm_elsewhere(controller_key: str) -> None:
    arm = FakeArm()
    with pytest.raises(ProvisioningFailed, match="must match"):
        await provider(arm).create(CVM, authorized_key=controller_key, spec={**SPEC, "resource_group": "other"})
    assert arm.sent == []


# ---------------------------------------------------------------------- status, restart, loss, delete


async def test_status_restart_loss_and_delete(controller_key: str) -> None:
    arm = FakeArm()
    p = provider(arm)
    await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    vm_key = f"{rg_path()}/providers/Microsoft.Compute/virtualMachines/{PREFIX}".lower()
    arm.resources[vm_key]["_power"] = "deallocated"
    assert await p.status(CVM) == "stopped"
    prov = await p.ensure_running(CVM)
    assert prov.launch["restarted"] is True and prov.host == "203.0.113.7"
    assert any(s.method == "POST" and s.path.endswith("/start") for s in arm.sent)
    assert await p.status(CVM) == "running"
    # deleted in the portal under the controller: detected
    del arm.resources[vm_key]
    assert await p.status(CVM) == "missing"
    with pytest.raises(CvmNotFound):
        await p.ensure_running(CVM)
    await p.delete(CVM)
    assert arm.resources == {}
    await p.delete(CVM)  # idempotent


async def test_status_missing_for_unknown() -> None:
    assert await provider().status("never-made") == "missing"
