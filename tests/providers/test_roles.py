"""The least-privilege roles under deploy/roles hold exactly what the providers use: every
request the Azure and Google Cloud providers send (create, status, restart, control-plane
inspection, delete), against the fake clouds, maps to an action in the role, and the
role holds nothing beyond those and the few a cloud checks on referenced resources."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from fake_arm import FakeArm
from fake_gce import FakeGce
from test_azure import PREFIX, SPEC, rg_path
from test_azure import provider as azure_provider
from test_gcp import SPEC as GCP_SPEC
from test_gcp import provider as gcp_provider

ROLES = Path(__file__).resolve().parents[2] / "deploy" / "roles"
CVM = "c0ffee00-1234"

#: Checked by ARM on resources a request refers to, with no request of their own.
AZURE_LINKED = {
    "Microsoft.Network/networkSecurityGroups/join/action": "the NIC (and subnet) refer to the NSG",
    "Microsoft.Network/publicIPAddresses/join/action": "the NIC refers to the public IP",
    "Microsoft.Network/virtualNetworks/subnets/join/action": "the NIC refers to the subnet",
    "Microsoft.Network/networkInterfaces/join/action": "the VM refers to the NIC",
    "Microsoft.Compute/disks/write": "the VM create makes its OS disk",
}
#: Checked by Compute Engine on what an insert carries.
GCP_LINKED = {
    "compute.instances.setMetadata": "instances.insert with metadata",
    "compute.instances.setTags": "instances.insert with network tags",
    "compute.instances.setLabels": "instances.insert with labels",
    "compute.disks.create": "instances.insert makes the boot disk",
    "compute.subnetworks.use": "instances.insert attaches to the network",
    "compute.subnetworks.useExternalIp": "instances.insert with an access config",
    "compute.networks.updatePolicy": "firewalls.insert on the network",
}
#: Doors around the controller's SSH key: never in a role.
FORBIDDEN = re.compile(r"runCommand|extensions|/snapshots|attachDetach|serialConsole|bootDiagnostics|"
                       r"setServiceAccount|serialPort|osLogin|attachDisk|getSerialPortOutput|setIamPolicy",
                       re.IGNORECASE)


def _azure_action(method: str, path: str) -> str:
    low = path.lower()
    if low.endswith("/resources"):
        return "Microsoft.Resources/subscriptions/resourceGroups/resources/read"
    m = re.search(r"/providers/(Microsoft\.\w+)/(\w+)/[^/]+(/.*)?$", path)
    assert m, path
    base = f"{m.group(1)}/{m.group(2)}"
    tail = m.group(3) or ""
    if tail == "/instanceView":
        return f"{base}/instanceView/read"
    if tail:
        assert method == "POST", (method, path)
        return f"{base}{tail}/action"
    return f"{base}/" + {"GET": "read", "PUT": "write", "DELETE": "delete"}[method]


def _gcp_permission(method: str, path: str) -> str:
    tail = path.split("/compute/v1/projects/", 1)[1].split("/")[1:]
    tail = tail[2:] if tail[0] in ("zones", "regions") else tail[1:] if tail[0] == "global" else tail
    coll = tail[0]
    if coll == "operations":
        return ("compute.zoneOperations.get" if "/zones/" in path else "compute.globalOperations.get")
    verb = {("POST", 1): "create", ("GET", 1): "list", ("GET", 2): "get", ("DELETE", 2): "delete"}.get(
        (method, len(tail)))
    if verb is None and method == "POST" and len(tail) == 3:
        verb = tail[2]
    assert verb, (method, path)
    return f"compute.{coll}.{verb}"


async def test_the_azure_role_is_exactly_what_the_provider_uses(controller_key: str) -> None:
    arm = FakeArm()
    p = azure_provider(arm, controller_cidr="198.51.100.10")
    await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    arm.resources[f"{rg_path()}/providers/Microsoft.Compute/virtualMachines/{PREFIX}".lower()]["_power"] = "deallocated"
    await p.status(CVM)
    await p.ensure_running(CVM)
    await p.inspect(CVM)
    await p.delete(CVM)
    used = {_azure_action(s.method, s.path) for s in arm.sent}
    role: dict[str, Any] = json.loads((ROLES / "azure-duet-controller.json").read_text())
    actions = set(role["Actions"])
    assert not role["DataActions"] and not role["NotActions"] and all("*" not in a for a in actions)
    assert used <= actions, sorted(used - actions)
    assert actions - used == set(AZURE_LINKED), sorted(actions - used)
    assert not [a for a in actions if FORBIDDEN.search(a)]


async def test_the_gcp_role_is_exactly_what_the_provider_uses(controller_key: str) -> None:
    gce = FakeGce().start()
    try:
        p = gcp_provider(gce)
        await p.create(CVM, authorized_key=controller_key, spec=GCP_SPEC)
        for inst in gce.instances.values():
            inst["status"] = "TERMINATED"
        await p.status(CVM)
        await p.ensure_running(CVM)
        await p.inspect(CVM)
        await p.delete(CVM)
    finally:
        gce.stop()
    used = {_gcp_permission(s.method, s.path) for s in gce.sent if not s.path.endswith("/wait")}
    used |= {"compute.zoneOperations.get" for s in gce.sent if s.path.endswith("/wait") and "/zones/" in s.path}
    used |= {"compute.globalOperations.get" for s in gce.sent if s.path.endswith("/wait") and "/global/" in s.path}
    assert "compute.instances.start" in used  # the restart really ran
    role = yaml.safe_load((ROLES / "gcp-duet-controller.yaml").read_text())
    perms = set(role["includedPermissions"])
    assert used <= perms, sorted(used - perms)
    assert perms - used == set(GCP_LINKED), sorted(perms - used)
    assert not [a for a in perms if FORBIDDEN.search(a)]
