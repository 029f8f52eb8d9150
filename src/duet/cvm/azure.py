"""The `azure` provider: Azure confidential VMs (SEV-SNP or TDX) owned by the controller.

What it makes for one CVM (all named ``duet-<cvm id>…``, all tagged ``duet-cvm=<id>``):

* a network security group admitting TCP/22 from the controller's address only, and
  denying every other inbound flow (also the default VNet/load-balancer allows);
* a VNet with one subnet (unless the config names an existing ``subnet_id``);
* a static Standard public IP and a NIC bound to the NSG;
* the VM: ``securityType: ConfidentialVM``, secure boot and vTPM on, the OS disk
  encrypted together with the VM guest state (``DiskWithVMGuestState``),
  ``provisionVMAgent: false`` and ``allowExtensionOperations: false`` (no VMAccess / Run
  Command / custom-script side doors), password login off, the controller's key only,
  boot diagnostics (serial log and screenshot) off, and cloud-init user-data
  (`duet.cvm.cloudinit`) that masks and purges the Linux agent and serial logins.

`plan` returns the exact ARM requests (method, URL with api-version, JSON body) without
sending them; `create` sends those very bytes, in order, through the Azure SDK
(azure-mgmt-network / azure-mgmt-compute), then reads back the VM id and the public
address. Every resource is tracked before its request goes out; any failure or timeout
deletes them all in reverse order and then lists the resource group to check that
nothing named for this CVM is left.

Azure CVMs do not let the host set SNP HOST_DATA / TDX MRCONFIGID, so the controller's
per-CVM value is recorded in the VM's tags and in the launch parameters; the CVM is tied
to its evidence by the VM id (``vmId``) that Azure's attestation reports carry.

Credentials: an injected azure-core credential, else `DefaultAzureCredential` (managed
identity, environment, CLI …). They are never logged and never appear in a plan or in
`Provisioned.launch`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from duet.attestation.cvm_kinds import CvmKind, InstanceBinding, TeeOffer
from duet.cvm import cloudinit
from duet.cvm.clouds import azure_endpoints
from duet.cvm.clouds.common import (
    Tracker,
    Unresolved,
    brief,
    cidr_of,
    host_data_of,
    image_of,
    resource_prefix,
    run_sync,
    spec_str,
    tee_of,
)
from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.provider import Provisioned

#: api-versions pinned here (not the SDK's defaults), so that a plan is exactly what is sent.
API_VERSIONS: dict[str, str] = {
    "compute": "2024-07-01",
    "disks": "2024-03-02",
    "network": "2024-05-01",
    "resources": "2021-04-01",
}
DEFAULT_SIZES = {"snp": "Standard_DC2as_v5", "tdx": "Standard_DC2es_v5"}
#: DCasv5 / DCadsv5 / ECasv5 / ECadsv5 (and v6) are AMD SEV-SNP; the "e" variants are Intel TDX.
SIZE_PATTERNS = {
    "snp": re.compile(r"^Standard_(DC|EC)\d+a(d)?s_v[56]$"),
    "tdx": re.compile(r"^Standard_(DC|EC)\d+e(d)?s_v[56]$"),
}
IMAGES: dict[str, dict[str, str]] = {
    "ubuntu-22.04": {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-confidential-vm-jammy",
        "sku": "22_04-lts-cvm",
        "version": "latest",
    },
    "ubuntu-24.04": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "cvm", "version": "latest"},
}
_VNET_PREFIX = "10.77.0.0/24"


@dataclass(frozen=True)
class _Layout:
    cvm_id: str
    subscription: str
    resource_group: str
    location: str
    prefix: str
    vm: str
    disk: str
    nic: str
    ip: str
    nsg: str
    vnet: str | None
    subnet_id: str
    user: str


def _rg_path(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def _url(arm: str, path: str, api: str) -> str:
    return f"{arm}{path}?api-version={API_VERSIONS[api]}"


def _raw(pipeline_response: Any, _deserialized: Any, _headers: Any) -> Any:
    """SDK `cls` hook: return the response's JSON as sent by ARM, not a model."""
    try:
        return pipeline_response.http_response.json()
    except Exception:
        return None


class AzureProvider:
    """Azure confidential VMs. See the module docstring for what is made and how.

    Config (`make_provider("azure", config)`; the spec may override the starred ones):
    ``subscription_id`` (else ``AZURE_SUBSCRIPTION_ID``), ``resource_group``*,
    ``location``*, ``controller_cidr``*, ``subnet_id`` (use an existing subnet instead of
    making a VNet), ``admin_user`` (default ``duet``), ``create_timeout_s`` (1200),
    ``poll_interval_s`` (10).
    """

    name = "azure"
    #: Azure takes no host-set HOST_DATA/MRCONFIGID; its vTPM evidence names the VM id.
    tees: ClassVar[Mapping[str, TeeOffer]] = {
        "snp": TeeOffer(CvmKind.AZURE_SNP, InstanceBinding.VM_ID),
        "tdx": TeeOffer(CvmKind.AZURE_TDX, InstanceBinding.VM_ID),
        # The same hardware judged by the owner's MAA instance (settings maa_url, maa_jwks):
        # evidence kinds of their own, so a user who asks for the direct path never gets MAA.
        "snp-maa": TeeOffer(CvmKind.AZURE_SNP_MAA, InstanceBinding.VM_ID),
        "tdx-maa": TeeOffer(CvmKind.AZURE_TDX_MAA, InstanceBinding.VM_ID),
    }

    def __init__(
        self,
        *,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        location: str | None = None,
        controller_cidr: str | None = None,
        subnet_id: str | None = None,
        admin_user: str = cloudinit.DEFAULT_USER,
        create_timeout_s: float = 1200.0,
        poll_interval_s: float = 10.0,
        boot_timeout_s: float = 600.0,
        credential: Any = None,
        transport: Any = None,
        retry_total: int = 3,
        arm_endpoint: str | None = None,
        authority_host: str | None = None,
        ca_pem: str | None = None,
    ) -> None:
        """`arm_endpoint` / `authority_host` / `ca_pem`: another cloud than Azure's public
        one, and the CA bundle its TLS chains to (`duet.cvm.clouds.azure_endpoints`; the
        authority is the credential's, made by the controller with these settings)."""
        self.subscription_id = subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
        self.resource_group = resource_group
        self.location = location
        self.controller_cidr = controller_cidr
        self.subnet_id = subnet_id
        self.admin_user = admin_user
        self.create_timeout_s = float(create_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        #: ARM reports a VM created once it runs, long before its sshd listens: how long
        #: the controller keeps trying to reach it then (duet.cvm.ssh.connect_after_boot).
        self.boot_timeout_s = float(boot_timeout_s)
        self._credential = credential
        self._transport = transport
        self._retry_total = retry_total
        self._arm_endpoint, self._ca_pem = arm_endpoint, ca_pem
        self._clients: tuple[Any, Any, Any] | None = None

    def __repr__(self) -> str:  # never show the credential
        return f"AzureProvider(subscription={self.subscription_id!r}, resource_group={self.resource_group!r})"

    # ------------------------------------------------------------------ layout and plan

    def _layout(self, cvm_id: str, spec: Mapping[str, object], unresolved: Unresolved) -> _Layout:
        sub = unresolved.get(spec_str(spec, "subscription_id") or self.subscription_id, "subscription_id")
        rg = unresolved.get(spec_str(spec, "resource_group", default=self.resource_group), "resource_group")
        loc = unresolved.get(spec_str(spec, "location", "region", default=self.location), "location")
        prefix = resource_prefix(cvm_id)
        rgp = _rg_path(sub, rg)
        subnet_id = spec_str(spec, "subnet_id", default=self.subnet_id)
        vnet = None
        if subnet_id is None:
            vnet = f"{prefix}-vnet"
            subnet_id = f"{rgp}/providers/Microsoft.Network/virtualNetworks/{vnet}/subnets/default"
        return _Layout(
            cvm_id=cvm_id,
            subscription=sub,
            resource_group=rg,
            location=loc,
            prefix=prefix,
            vm=prefix,
            disk=f"{prefix}-osdisk",
            nic=f"{prefix}-nic",
            ip=f"{prefix}-ip",
            nsg=f"{prefix}-nsg",
            vnet=vnet,
            subnet_id=subnet_id,
            user=self.admin_user,
        )

    @staticmethod
    def _paths(lay: _Layout) -> dict[str, str]:
        rgp = _rg_path(lay.subscription, lay.resource_group)
        net = f"{rgp}/providers/Microsoft.Network"
        paths = {
            "nsg": f"{net}/networkSecurityGroups/{lay.nsg}",
            "ip": f"{net}/publicIPAddresses/{lay.ip}",
            "nic": f"{net}/networkInterfaces/{lay.nic}",
            "vm": f"{rgp}/providers/Microsoft.Compute/virtualMachines/{lay.vm}",
            "disk": f"{rgp}/providers/Microsoft.Compute/disks/{lay.disk}",
        }
        if lay.vnet is not None:
            paths["vnet"] = f"{net}/virtualNetworks/{lay.vnet}"
        return paths

    def plan(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> dict[str, object]:
        """The exact ARM requests `create` sends, in order, without sending anything: to
        the ARM endpoint the clients use (`arm_endpoint`, else Azure's public cloud)."""
        arm = azure_endpoints.arm_base(self._arm_endpoint)

        def url(path: str, api: str) -> str:
            return _url(arm, path, api)

        unresolved = Unresolved()
        lay = self._layout(cvm_id, spec, unresolved)
        requested = spec_str(spec, "tee")
        # snp-maa / tdx-maa run on the same hardware; only the evidence path differs.
        tee = tee_of(spec, requested.lower().removesuffix("-maa") if requested else None)
        image = image_of(spec)
        size = spec_str(spec, "size", "vm_size", default=DEFAULT_SIZES[tee]) or DEFAULT_SIZES[tee]
        if not SIZE_PATTERNS[tee].match(size):
            raise ProvisioningFailed(
                f"size {size!r} is not an Azure {'SEV-SNP' if tee == 'snp' else 'TDX'} CVM size "
                f"(e.g. {DEFAULT_SIZES[tee]})"
            )
        host_data = host_data_of(spec)
        cidr = unresolved.get(
            cidr_of(spec_str(spec, "controller_cidr", default=self.controller_cidr)), "controller_cidr"
        )
        try:
            key = cloudinit.key_line(authorized_key)
            user_data = cloudinit.user_data(key, cloud="azure", user=lay.user)
        except ValueError as exc:
            raise ProvisioningFailed(str(exc)) from None
        paths = self._paths(lay)
        tags = {"duet-cvm": cvm_id, "duet-host-data": host_data, "duet-tee": tee, "duet-managed": "true"}
        loc = lay.location

        nsg_body = {
            "location": loc,
            "tags": tags,
            "properties": {
                "securityRules": [
                    {
                        "name": "duet-ssh-from-controller",
                        "properties": {
                            "priority": 100,
                            "direction": "Inbound",
                            "access": "Allow",
                            "protocol": "Tcp",
                            "sourceAddressPrefix": cidr,
                            "sourcePortRange": "*",
                            "destinationAddressPrefix": "*",
                            "destinationPortRange": "22",
                        },
                    },
                    {
                        "name": "duet-deny-all-other-inbound",
                        "properties": {
                            "priority": 4096,
                            "direction": "Inbound",
                            "access": "Deny",
                            "protocol": "*",
                            "sourceAddressPrefix": "*",
                            "sourcePortRange": "*",
                            "destinationAddressPrefix": "*",
                            "destinationPortRange": "*",
                        },
                    },
                ]
            },
        }
        requests: list[dict[str, object]] = [
            {"kind": "nsg", "name": lay.nsg, "method": "PUT", "url": url(paths["nsg"], "network"), "body": nsg_body}
        ]
        if lay.vnet is not None:
            vnet_body = {
                "location": loc,
                "tags": tags,
                "properties": {
                    "addressSpace": {"addressPrefixes": [_VNET_PREFIX]},
                    "subnets": [
                        {
                            "name": "default",
                            "properties": {
                                "addressPrefix": _VNET_PREFIX,
                                "networkSecurityGroup": {"id": paths["nsg"]},
                            },
                        }
                    ],
                },
            }
            requests.append(
                {"kind": "vnet", "name": lay.vnet, "method": "PUT", "url": url(paths["vnet"], "network"),
                 "body": vnet_body}
            )
        ip_body = {
            "location": loc,
            "tags": tags,
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
        }
        requests.append(
            {"kind": "ip", "name": lay.ip, "method": "PUT", "url": url(paths["ip"], "network"), "body": ip_body}
        )
        nic_body = {
            "location": loc,
            "tags": tags,
            "properties": {
                "networkSecurityGroup": {"id": paths["nsg"]},
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {
                            "primary": True,
                            "privateIPAllocationMethod": "Dynamic",
                            "subnet": {"id": lay.subnet_id},
                            "publicIPAddress": {"id": paths["ip"]},
                        },
                    }
                ],
            },
        }
        requests.append(
            {"kind": "nic", "name": lay.nic, "method": "PUT", "url": url(paths["nic"], "network"), "body": nic_body}
        )
        vm_body = {
            "location": loc,
            "tags": tags,
            "properties": {
                "hardwareProfile": {"vmSize": size},
                "securityProfile": {
                    "securityType": "ConfidentialVM",
                    "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
                },
                "storageProfile": {
                    "imageReference": dict(IMAGES[image]),
                    "osDisk": {
                        "name": lay.disk,
                        "createOption": "FromImage",
                        "deleteOption": "Delete",
                        "caching": "ReadWrite",
                        "managedDisk": {
                            "storageAccountType": "Premium_LRS",
                            "securityProfile": {"securityEncryptionType": "DiskWithVMGuestState"},
                        },
                    },
                },
                "osProfile": {
                    "computerName": lay.vm,
                    "adminUsername": lay.user,
                    "customData": base64.b64encode(user_data.encode()).decode(),
                    "allowExtensionOperations": False,
                    "linuxConfiguration": {
                        "disablePasswordAuthentication": True,
                        "provisionVMAgent": False,
                        "ssh": {"publicKeys": [{"path": f"/home/{lay.user}/.ssh/authorized_keys", "keyData": key}]},
                    },
                },
                "networkProfile": {
                    "networkInterfaces": [
                        {"id": paths["nic"], "properties": {"primary": True, "deleteOption": "Delete"}}
                    ]
                },
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": False}},
            },
        }
        requests.append(
            {"kind": "vm", "name": lay.vm, "method": "PUT", "url": url(paths["vm"], "compute"), "body": vm_body}
        )
        cleanup: list[dict[str, object]] = []
        order = ["vm", "disk", "nic", "ip"] + (["vnet"] if lay.vnet is not None else []) + ["nsg"]
        for kind in order:
            api = "compute" if kind == "vm" else "disks" if kind == "disk" else "network"
            cleanup.append({"kind": kind, "method": "DELETE", "url": url(paths[kind], api)})
        return {
            "provider": self.name,
            "cvm_id": cvm_id,
            "tee": tee,
            "image": image,
            "size": size,
            "subscription_id": lay.subscription,
            "resource_group": lay.resource_group,
            "location": loc,
            "user": lay.user,
            "host_data": host_data,
            "host_data_binding": "recorded in the VM tags (duet-host-data) and the launch parameters; Azure "
            "CVMs take no host-set HOST_DATA/MRCONFIGID, the evidence names the VM by its vmId",
            "controller_cidr": cidr,
            "requests": requests,
            "then": [
                {"method": "GET", "url": url(paths["vm"], "compute"), "why": "read the VM id (vmId)"},
                {"method": "GET", "url": url(paths["ip"], "network"), "why": "read the public address"},
            ],
            "cleanup": cleanup,
            "cleanup_check": {
                "method": "GET",
                "url": url(_rg_path(lay.subscription, lay.resource_group) + "/resources", "resources"),
                "why": f"after a failed create or a delete: no resource named {lay.prefix}* may remain",
            },
            "user_data": user_data,
            "security": {
                "securityType": "ConfidentialVM",
                "secureBootEnabled": True,
                "vTpmEnabled": True,
                "securityEncryptionType": "DiskWithVMGuestState",
                "provisionVMAgent": False,
                "allowExtensionOperations": False,
                "disablePasswordAuthentication": True,
                "bootDiagnostics": False,
                "ssh_keys": [key],
                "ssh_source": cidr,
                "guest_agents": "masked at boot, purged after (cloud-init)",
            },
            "unresolved": list(unresolved.names),
        }

    # ------------------------------------------------------------------ SDK plumbing

    def _sdk(self) -> tuple[Any, Any, Any]:
        if self._clients is not None:
            return self._clients
        try:
            from azure.mgmt.compute import ComputeManagementClient
            from azure.mgmt.network import NetworkManagementClient
            from azure.mgmt.resource.resources import ResourceManagementClient
        except ImportError as exc:
            raise ProvisioningFailed(f"the azure provider needs `pip install duet[azure]` ({exc})") from None
        if self.subscription_id is None:
            raise ProvisioningFailed("azure: no subscription_id (config or AZURE_SUBSCRIPTION_ID)")
        credential = self._credential
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            self._credential = credential
        kw: dict[str, Any] = {"polling_interval": self.poll_interval_s, "retry_total": self._retry_total,
                              **azure_endpoints.client_kwargs(self._arm_endpoint, self._ca_pem)}
        if self._transport is not None:
            kw["transport"] = self._transport
        self._clients = (
            ComputeManagementClient(credential, self.subscription_id, **kw),
            NetworkManagementClient(credential, self.subscription_id, **kw),
            ResourceManagementClient(credential, self.subscription_id, api_version=API_VERSIONS["resources"], **kw),
        )
        return self._clients

    def _ops(self, kind: str) -> tuple[Any, str]:
        compute, network, _ = self._sdk()
        table = {
            "nsg": (network.network_security_groups, "network"),
            "vnet": (network.virtual_networks, "network"),
            "ip": (network.public_ip_addresses, "network"),
            "nic": (network.network_interfaces, "network"),
            "vm": (compute.virtual_machines, "compute"),
            "disk": (compute.disks, "disks"),
        }
        return table[kind]

    @staticmethod
    def _wait(poller: Any, deadline: float, what: str) -> Any:
        poller.wait(timeout=max(0.0, deadline - time.monotonic()))
        if not poller.done():
            raise TimeoutError(f"{what} did not finish in time")
        return poller.result()

    def _put(self, req: Mapping[str, Any], rg: str, deadline: float) -> Any:
        ops, api = self._ops(str(req["kind"]))
        body = io.BytesIO(json.dumps(req["body"], separators=(",", ":")).encode())
        poller = ops.begin_create_or_update(
            rg, req["name"], body, content_type="application/json", api_version=API_VERSIONS[api], cls=_raw
        )
        return self._wait(poller, deadline, f"creating {req['kind']} {req['name']}")

    def _delete(self, kind: str, name: str, rg: str, deadline: float) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        ops, api = self._ops(kind)
        try:
            poller = ops.begin_delete(rg, name, api_version=API_VERSIONS[api])
            self._wait(poller, deadline, f"deleting {kind} {name}")
        except ResourceNotFoundError:
            return

    def _leftovers(self, lay: _Layout) -> list[str]:
        _, _, resources = self._sdk()
        left = []
        for res in resources.resources.list_by_resource_group(lay.resource_group):
            name = str(res.get("name", "") if isinstance(res, Mapping) else getattr(res, "name", ""))
            tags = (res.get("tags") if isinstance(res, Mapping) else getattr(res, "tags", None)) or {}
            if name.lower().startswith(lay.prefix) or tags.get("duet-cvm") == lay.cvm_id:
                left.append(name)
        return left

    def _destroy(self, lay: _Layout, items: list[dict[str, str]], deadline: float) -> list[str]:
        """Delete `items` (already in reverse order); return the problems met."""
        problems = []
        for item in items:
            try:
                self._delete(item["kind"], item["name"], lay.resource_group, deadline)
            except Exception as exc:
                problems.append(f"deleting {item['kind']} {item['name']}: {brief(exc)}")
        try:
            left = self._leftovers(lay)
        except Exception as exc:
            problems.append(f"listing {lay.resource_group}: {brief(exc)}")
        else:
            if left:
                problems.append("still present after clean-up: " + ", ".join(sorted(left)))
        return problems

    def _all_items(self, lay: _Layout) -> list[dict[str, str]]:
        items = [
            {"kind": "vm", "name": lay.vm},
            {"kind": "disk", "name": lay.disk},
            {"kind": "nic", "name": lay.nic},
            {"kind": "ip", "name": lay.ip},
        ]
        if lay.vnet is not None:
            items.append({"kind": "vnet", "name": lay.vnet})
        items.append({"kind": "nsg", "name": lay.nsg})
        return items

    # ------------------------------------------------------------------ synchronous bodies

    def _create_sync(self, cvm_id: str, plan: dict[str, Any], lay: _Layout) -> Provisioned:
        deadline = time.monotonic() + self.create_timeout_s
        tracker = Tracker()
        try:
            vm: Any = None
            for req in plan["requests"]:
                if req["kind"] == "vm":
                    tracker.add("disk", lay.disk, "")  # made by the VM request; deleted after it
                tracker.add(req["kind"], req["name"], req["url"])
                result = self._put(req, lay.resource_group, deadline)
                if req["kind"] == "vm":
                    vm = result
            compute, network, _ = self._sdk()
            if not isinstance(vm, Mapping) or "properties" not in vm:
                vm = compute.virtual_machines.get(
                    lay.resource_group, lay.vm, api_version=API_VERSIONS["compute"], cls=_raw
                )
            state = str(vm.get("properties", {}).get("provisioningState", ""))
            if state and state != "Succeeded":
                raise ProvisioningFailed(f"VM provisioningState is {state}")
            ip = network.public_ip_addresses.get(
                lay.resource_group, lay.ip, api_version=API_VERSIONS["network"], cls=_raw
            )
            address = (ip or {}).get("properties", {}).get("ipAddress")
            if not address:
                raise ProvisioningFailed("the public IP has no address")
        except BaseException as exc:
            cleanup_deadline = time.monotonic() + max(600.0, self.create_timeout_s / 2)
            problems = self._destroy(lay, tracker.reverse(), cleanup_deadline)
            if not isinstance(exc, Exception):
                raise
            msg = f"azure: creating CVM {cvm_id} failed: {brief(exc)}"
            if problems:
                msg += "; clean-up problems: " + "; ".join(problems)
            else:
                msg += "; every resource it made was deleted"
            raise ProvisioningFailed(msg) from exc
        vm_id = str(vm.get("properties", {}).get("vmId", ""))
        launch = self._launch(plan, lay, vm, str(address))
        return Provisioned(instance_id=vm_id or str(vm.get("id", lay.vm)), host=str(address), port=22,
                           user=lay.user, launch=launch)

    def _launch(self, plan: Mapping[str, Any], lay: _Layout, vm: Mapping[str, Any], address: str) -> dict[str, object]:
        launch: dict[str, object] = {
            "provider": self.name,
            "resource_id": vm.get("id"),
            "vm_id": vm.get("properties", {}).get("vmId"),
            "address": address,
            "port": 22,
            "user": lay.user,
            "evidence": "azure-cvm (HCL report + vTPM quote)",
        }
        if plan:
            launch.update({k: v for k, v in plan.items() if k not in ("provider", "unresolved")})
        return launch

    def _lookup(self, cvm_id: str) -> tuple[_Layout, dict[str, Any] | None]:
        from azure.core.exceptions import ResourceNotFoundError

        unresolved = Unresolved()
        lay = self._layout(cvm_id, {}, unresolved)
        if unresolved.names:
            raise ProvisioningFailed(f"azure: missing configuration: {', '.join(unresolved.names)}")
        compute, _, _ = self._sdk()
        try:
            view = compute.virtual_machines.instance_view(
                lay.resource_group, lay.vm, api_version=API_VERSIONS["compute"], cls=_raw
            )
        except ResourceNotFoundError:
            return lay, None
        return lay, view or {}

    @staticmethod
    def _power(view: Mapping[str, Any]) -> str:
        for s in view.get("statuses", []) or []:
            code = str(s.get("code", ""))
            if code.startswith("PowerState/"):
                return code.split("/", 1)[1]
        return "unknown"

    def _status_sync(self, cvm_id: str) -> str:
        _, view = self._lookup(cvm_id)
        if view is None:
            return "missing"
        return "running" if self._power(view) in ("running", "starting") else "stopped"

    def _ensure_sync(self, cvm_id: str) -> Provisioned:
        lay, view = self._lookup(cvm_id)
        if view is None:
            raise CvmNotFound(f"azure: VM {lay.vm} is gone from {lay.resource_group}")
        compute, network, _ = self._sdk()
        restarted = False
        if self._power(view) not in ("running", "starting"):
            poller = compute.virtual_machines.begin_start(lay.resource_group, lay.vm,
                                                          api_version=API_VERSIONS["compute"])
            self._wait(poller, time.monotonic() + self.create_timeout_s, f"starting {lay.vm}")
            restarted = True
        vm = compute.virtual_machines.get(lay.resource_group, lay.vm, api_version=API_VERSIONS["compute"], cls=_raw)
        ip = network.public_ip_addresses.get(lay.resource_group, lay.ip, api_version=API_VERSIONS["network"], cls=_raw)
        address = str((ip or {}).get("properties", {}).get("ipAddress", ""))
        if not address:
            raise ProvisioningFailed(f"azure: {lay.ip} has no address")
        launch = self._launch({}, lay, vm or {}, address)
        launch["restarted"] = restarted
        vm_id = str((vm or {}).get("properties", {}).get("vmId", "")) or lay.vm
        return Provisioned(instance_id=vm_id, host=address, port=22, user=lay.user, launch=launch)

    def _inspect_sync(self, cvm_id: str) -> dict[str, Any]:
        """The VM's model as ARM holds it now: the VM, its NSG and its extensions, reduced to
        the facts `duet.ledger.control_plane` judges, with a digest of all of it."""
        from duet.ledger import control_plane

        lay, view = self._lookup(cvm_id)
        if view is None:
            raise CvmNotFound(f"azure: VM {lay.vm} is gone from {lay.resource_group}")
        compute, network, resources = self._sdk()
        vm = compute.virtual_machines.get(lay.resource_group, lay.vm, api_version=API_VERSIONS["compute"],
                                          cls=_raw) or {}
        nsg = network.network_security_groups.get(lay.resource_group, lay.nsg, api_version=API_VERSIONS["network"],
                                                  cls=_raw) or {}
        extensions = []
        for res in resources.resources.list_by_resource_group(lay.resource_group):
            get = res.get if isinstance(res, Mapping) else lambda k, r=res: getattr(r, k, None)
            if str(get("type") or "").lower() == "microsoft.compute/virtualmachines/extensions" and \
                    str(get("name") or "").lower().startswith(lay.vm.lower() + "/"):
                extensions.append(str(get("name")))
        facts = control_plane.azure_facts(vm, nsg, extensions, cidr_of(self.controller_cidr) or "")
        return {"facts": facts, "model_sha256": control_plane.model_digest(vm, nsg, sorted(extensions))}

    async def inspect(self, cvm_id: str) -> dict[str, Any]:
        return await run_sync("azure", self._inspect_sync, cvm_id)

    def _delete_sync(self, cvm_id: str) -> None:
        unresolved = Unresolved()
        lay = self._layout(cvm_id, {}, unresolved)
        if unresolved.names:
            raise ProvisioningFailed(f"azure: missing configuration: {', '.join(unresolved.names)}")
        problems = self._destroy(lay, self._all_items(lay), time.monotonic() + max(900.0, self.create_timeout_s))
        if problems:
            raise ProvisioningFailed(f"azure: deleting CVM {cvm_id}: " + "; ".join(problems))

    # ------------------------------------------------------------------ Provider API

    async def create(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> Provisioned:
        plan = self.plan(cvm_id, authorized_key=authorized_key, spec=spec)
        if plan["unresolved"]:
            raise ProvisioningFailed(f"azure: missing configuration: {', '.join(plan['unresolved'])}")  # type: ignore[arg-type]
        lay = self._layout(cvm_id, spec, Unresolved())
        if lay.subscription != self.subscription_id:
            raise ProvisioningFailed("azure: the spec's subscription differs from the provider's")
        if (lay.resource_group, lay.location) != (self.resource_group, self.location):
            # status/delete find resources through the provider's configuration only
            raise ProvisioningFailed(
                "azure: spec.resource_group/location must match the provider's configuration "
                f"({self.resource_group}, {self.location})"
            )
        return await asyncio.to_thread(self._create_sync, cvm_id, plan, lay)

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        return await run_sync("azure", self._ensure_sync, cvm_id)

    async def status(self, cvm_id: str) -> str:
        return await run_sync("azure", self._status_sync, cvm_id)

    async def delete(self, cvm_id: str) -> None:
        await run_sync("azure", self._delete_sync, cvm_id)

