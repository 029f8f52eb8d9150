"""The `gcp` provider: Google Cloud Confidential VMs (SEV-SNP on N2D, TDX on C3).

What it makes for one CVM (named ``duet-<cvm id>…``, labelled ``duet-cvm``):

* two firewall rules on the VPC network, both aimed at the instance's network tag:
  allow TCP/22 from the controller's address only (priority 900) and deny every other
  ingress (priority 1000) — which overrides a default network's ``default-allow-ssh``
  (0.0.0.0/0, priority 65534);
* the instance: ``confidentialInstanceConfig.confidentialInstanceType`` ``SEV_SNP`` (N2D,
  ``minCpuPlatform: AMD Milan``) or ``TDX`` (C3), shielded VM (secure boot, vTPM,
  integrity monitoring), host maintenance ``TERMINATE``, no service account (so nothing
  in the guest gets cloud API tokens), display off, and in its metadata:
  ``enable-oslogin: FALSE``, ``block-project-ssh-keys: TRUE``, ``serial-port-enable:
  FALSE``, the controller's key as the instance's only ``ssh-keys`` entry, and the
  cloud-init user-data (`duet.cvm.cloudinit`) that masks and purges the guest agents
  and serial logins.

`plan` returns the exact REST requests (method, URL, JSON body as the google-cloud-compute
REST transport serialises it); `create` sends those bodies through the real clients
(`FirewallsClient`, `InstancesClient`) and waits on the returned operations. Every
resource (including the boot disk) is tracked before its request goes out; any failure
or timeout deletes them all in reverse order, then lists firewalls, instances and disks
to check nothing named for this CVM is left.

GCP does not let the host set SNP HOST_DATA / TDX MRCONFIGID either: the controller's
per-CVM value goes into the instance metadata (``duet-host-data``), two labels
(``duet-hd-0``/``-1``, labels hold 63 characters) and the launch parameters; the instance
id (in the vTPM's AK certificate) ties evidence to the instance.

Credentials: injected google-auth credentials, else Application Default Credentials
(`google.auth.default()`); never logged, never in a plan or `Provisioned.launch`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from duet.attestation.cvm_kinds import CvmKind, InstanceBinding, TeeOffer
from duet.cvm import cloudinit
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

API = "https://compute.googleapis.com/compute/v1"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_SIZES = {"snp": "n2d-standard-2", "tdx": "c3-standard-4"}
SIZE_PREFIXES = {"snp": ("n2d-",), "tdx": ("c3-",)}
CONFIDENTIAL_TYPES = {"snp": "SEV_SNP", "tdx": "TDX"}
IMAGES = {
    "ubuntu-22.04": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
    "ubuntu-24.04": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
}
_RUNNING = ("RUNNING", "PROVISIONING", "STAGING", "REPAIRING")


@dataclass(frozen=True)
class _Layout:
    cvm_id: str
    project: str
    zone: str
    network: str
    prefix: str
    instance: str
    disk: str
    fw_allow: str
    fw_deny: str
    user: str


class GcpProvider:
    """Google Cloud Confidential VMs. See the module docstring for what is made and how.

    Config (`make_provider("gcp", config)`; starred ones may come from the spec):
    ``project``* (else the ADC project), ``zone``*, ``network`` (default
    ``global/networks/default``), ``controller_cidr``*, ``admin_user`` (``duet``),
    ``disk_size_gb`` (20), ``create_timeout_s`` (900), ``api_endpoint`` (e.g. a private
    endpoint; tests point it at a local recorded-shape server).
    """

    name = "gcp"
    #: GCP can set neither HOST_DATA nor MRCONFIGID, and its raw SNP/TDX evidence names
    #: no instance: the host-key binding only, which users must accept explicitly.
    tees: ClassVar[Mapping[str, TeeOffer]] = {
        "snp": TeeOffer(CvmKind.SNP, InstanceBinding.NONE),
        "tdx": TeeOffer(CvmKind.TDX, InstanceBinding.NONE),
    }

    def __init__(
        self,
        *,
        project: str | None = None,
        zone: str | None = None,
        network: str = "global/networks/default",
        controller_cidr: str | None = None,
        admin_user: str = cloudinit.DEFAULT_USER,
        disk_size_gb: int = 20,
        create_timeout_s: float = 900.0,
        poll_interval_s: float = 2.0,
        boot_timeout_s: float = 600.0,
        credentials: Any = None,
        api_endpoint: str | None = None,
    ) -> None:
        self.project = project
        self.zone = zone
        self.network = network
        self.controller_cidr = controller_cidr
        self.admin_user = admin_user
        self.disk_size_gb = int(disk_size_gb)
        self.create_timeout_s = float(create_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        #: GCE reports an instance RUNNING long before its sshd listens: how long the
        #: controller keeps trying to reach it then (duet.cvm.ssh.connect_after_boot).
        self.boot_timeout_s = float(boot_timeout_s)
        self.api_endpoint = api_endpoint
        self._credentials = credentials
        self._clients: dict[str, Any] | None = None

    def _api(self) -> str:
        """The Compute API root the clients use: `api_endpoint` (a host, or a URL as the
        client options take it), else Google's public one; what a plan shows."""
        if self.api_endpoint is None:
            return API
        root = self.api_endpoint.rstrip("/")
        return f"{root if '://' in root else 'https://' + root}/compute/v1"

    def __repr__(self) -> str:  # never show the credentials
        return f"GcpProvider(project={self.project!r}, zone={self.zone!r})"

    # ------------------------------------------------------------------ layout and plan

    def _layout(self, cvm_id: str, spec: Mapping[str, object], unresolved: Unresolved) -> _Layout:
        project = unresolved.get(spec_str(spec, "project", default=self.project), "project")
        zone = unresolved.get(spec_str(spec, "zone", "location", default=self.zone), "zone")
        prefix = resource_prefix(cvm_id)
        return _Layout(
            cvm_id=cvm_id,
            project=project,
            zone=zone,
            network=spec_str(spec, "network", default=self.network) or self.network,
            prefix=prefix,
            instance=prefix,
            disk=prefix,
            fw_allow=f"{prefix}-ssh",
            fw_deny=f"{prefix}-deny",
            user=self.admin_user,
        )

    def plan(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> dict[str, object]:
        """The exact REST requests `create` sends, in order, without sending anything."""
        unresolved = Unresolved()
        lay = self._layout(cvm_id, spec, unresolved)
        tee = tee_of(spec)
        image = image_of(spec)
        size = spec_str(spec, "size", "machine_type", default=DEFAULT_SIZES[tee]) or DEFAULT_SIZES[tee]
        if not size.startswith(SIZE_PREFIXES[tee]):
            raise ProvisioningFailed(
                f"machine type {size!r} cannot run a {CONFIDENTIAL_TYPES[tee]} Confidential VM "
                f"(e.g. {DEFAULT_SIZES[tee]})"
            )
        host_data = host_data_of(spec)
        cidr = unresolved.get(
            cidr_of(spec_str(spec, "controller_cidr", default=self.controller_cidr)), "controller_cidr"
        )
        try:
            key = cloudinit.key_line(authorized_key)
            user_data = cloudinit.user_data(key, cloud="gcp", user=lay.user)
        except ValueError as exc:
            raise ProvisioningFailed(str(exc)) from None
        proj = f"{self._api()}/projects/{lay.project}"
        zone_url = f"{proj}/zones/{lay.zone}"
        fw_allow = {
            "name": lay.fw_allow,
            "description": f"duet: SSH to CVM {cvm_id} from its controller only",
            "network": lay.network,
            "direction": "INGRESS",
            "priority": 900,
            "sourceRanges": [cidr],
            "targetTags": [lay.prefix],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        }
        fw_deny = {
            "name": lay.fw_deny,
            "description": f"duet: no other ingress to CVM {cvm_id}",
            "network": lay.network,
            "direction": "INGRESS",
            "priority": 1000,
            "sourceRanges": ["0.0.0.0/0"],
            "targetTags": [lay.prefix],
            "denied": [{"IPProtocol": "all"}],
        }
        metadata = [
            {"key": "enable-oslogin", "value": "FALSE"},
            {"key": "block-project-ssh-keys", "value": "TRUE"},
            {"key": "serial-port-enable", "value": "FALSE"},
            {"key": "serial-port-logging-enable", "value": "FALSE"},
            {"key": "enable-guest-attributes", "value": "FALSE"},
            {"key": "enable-osconfig", "value": "FALSE"},
            {"key": "ssh-keys", "value": f"{lay.user}:{key} {lay.user}"},
            {"key": "user-data", "value": user_data},
            {"key": "duet-cvm", "value": cvm_id},
            {"key": "duet-host-data", "value": host_data},
        ]
        instance: dict[str, Any] = {
            "name": lay.instance,
            "description": f"duet CVM {cvm_id}",
            "machineType": f"zones/{lay.zone}/machineTypes/{size}",
            "confidentialInstanceConfig": {"confidentialInstanceType": CONFIDENTIAL_TYPES[tee]},
            "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": True},
            "shieldedInstanceConfig": {"enableSecureBoot": True, "enableVtpm": True, "enableIntegrityMonitoring": True},
            "displayDevice": {"enableDisplay": False},
            "canIpForward": False,
            "disks": [
                {
                    "boot": True,
                    "autoDelete": True,
                    "type": "PERSISTENT",
                    "mode": "READ_WRITE",
                    "deviceName": "boot",
                    "initializeParams": {
                        "diskName": lay.disk,
                        "sourceImage": IMAGES[image],
                        "diskSizeGb": str(self.disk_size_gb),  # int64: a string in proto JSON
                        "diskType": f"zones/{lay.zone}/diskTypes/pd-balanced",
                    },
                }
            ],
            "networkInterfaces": [
                {"network": lay.network, "accessConfigs": [{"name": "external-nat", "type": "ONE_TO_ONE_NAT"}]}
            ],
            "metadata": {"items": metadata},
            "labels": {
                "duet-cvm": lay.prefix,
                "duet-tee": tee,
                "duet-hd-0": host_data[:32],
                "duet-hd-1": host_data[32:],
            },
            "tags": {"items": [lay.prefix]},
        }
        if tee == "snp":
            instance["minCpuPlatform"] = "AMD Milan"
        requests: list[dict[str, object]] = [
            {"kind": "firewall", "name": lay.fw_allow, "method": "POST", "url": f"{proj}/global/firewalls",
             "body": fw_allow},
            {"kind": "firewall", "name": lay.fw_deny, "method": "POST", "url": f"{proj}/global/firewalls",
             "body": fw_deny},
            {"kind": "instance", "name": lay.instance, "method": "POST", "url": f"{zone_url}/instances",
             "body": instance},
        ]
        cleanup = [
            {"kind": "instance", "method": "DELETE", "url": f"{zone_url}/instances/{lay.instance}"},
            {"kind": "disk", "method": "DELETE", "url": f"{zone_url}/disks/{lay.disk}"},
            {"kind": "firewall", "method": "DELETE", "url": f"{proj}/global/firewalls/{lay.fw_deny}"},
            {"kind": "firewall", "method": "DELETE", "url": f"{proj}/global/firewalls/{lay.fw_allow}"},
        ]
        return {
            "provider": self.name,
            "cvm_id": cvm_id,
            "tee": tee,
            "image": image,
            "size": size,
            "project": lay.project,
            "zone": lay.zone,
            "user": lay.user,
            "host_data": host_data,
            "host_data_binding": "recorded in instance metadata (duet-host-data), labels duet-hd-0/1 and the "
            "launch parameters; GCP takes no host-set HOST_DATA/MRCONFIGID, the evidence names the instance id",
            "controller_cidr": cidr,
            "requests": requests,
            "then": [
                {"method": "POST", "url": f"{proj}/global/operations/<op>/wait", "why": "wait for firewalls"},
                {"method": "POST", "url": f"{zone_url}/operations/<op>/wait", "why": "wait for the instance"},
                {"method": "GET", "url": f"{zone_url}/instances/{lay.instance}", "why": "read id and address"},
            ],
            "cleanup": cleanup,
            "cleanup_check": {
                "what": "list firewalls, instances and disks",
                "why": f"after a failed create or a delete: nothing named {lay.prefix}* may remain",
            },
            "user_data": user_data,
            "security": {
                "confidentialInstanceType": CONFIDENTIAL_TYPES[tee],
                "enable-oslogin": "FALSE",
                "block-project-ssh-keys": "TRUE",
                "serial-port-enable": "FALSE",
                "secureBoot": True,
                "vTpm": True,
                "service_account": "none (serviceAccounts omitted)",
                "ssh_keys": [key],
                "ssh_source": cidr,
                "guest_agents": "masked at boot, purged after (cloud-init)",
            },
            "unresolved": list(unresolved.names),
        }

    # ------------------------------------------------------------------ SDK plumbing

    def _sdk(self) -> dict[str, Any]:
        if self._clients is not None:
            return self._clients
        try:
            from google.cloud import compute_v1
        except ImportError as exc:
            raise ProvisioningFailed(f"the gcp provider needs `pip install duet[gcp]` ({exc})") from None
        creds = self._credentials
        if creds is None:
            import google.auth

            creds, default_project = google.auth.default(scopes=list(SCOPES))
            self._credentials = creds
            if self.project is None and default_project:
                self.project = str(default_project)
        kw: dict[str, Any] = {"credentials": creds}
        if self.api_endpoint is not None:
            kw["client_options"] = {"api_endpoint": self.api_endpoint}
        self._clients = {
            "firewalls": compute_v1.FirewallsClient(**kw),
            "instances": compute_v1.InstancesClient(**kw),
            "disks": compute_v1.DisksClient(**kw),
            "global_ops": compute_v1.GlobalOperationsClient(**kw),
            "zone_ops": compute_v1.ZoneOperationsClient(**kw),
        }
        return self._clients

    def _wait_op(self, op: Any, lay: _Layout, deadline: float, what: str) -> None:
        c = self._sdk()
        while True:
            if str(op.status) in ("DONE", "Status.DONE") or getattr(op.status, "name", "") == "DONE":
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what} did not finish in time")
            remaining = max(1.0, deadline - time.monotonic())
            if op.zone:
                op = c["zone_ops"].wait(project=lay.project, zone=lay.zone, operation=op.name,
                                        timeout=min(remaining, 130.0))
            else:
                op = c["global_ops"].wait(project=lay.project, operation=op.name, timeout=min(remaining, 130.0))
            if str(getattr(op.status, "name", op.status)) != "DONE" and self.poll_interval_s > 0:
                time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))
        errors = list(op.error.errors) if op.error else []
        if errors:
            detail = "; ".join(f"{e.code}: {e.message}" for e in errors)
            raise ProvisioningFailed(f"{what} failed: {detail}")

    def _send(self, req: Mapping[str, Any], lay: _Layout, deadline: float) -> None:
        from google.cloud import compute_v1

        c = self._sdk()
        body = json.dumps(req["body"])
        if req["kind"] == "firewall":
            op = c["firewalls"].insert_unary(project=lay.project, firewall_resource=compute_v1.Firewall.from_json(body))
        else:
            op = c["instances"].insert_unary(
                project=lay.project, zone=lay.zone, instance_resource=compute_v1.Instance.from_json(body)
            )
        self._wait_op(op, lay, deadline, f"creating {req['kind']} {req['name']}")

    def _delete_one(self, kind: str, name: str, lay: _Layout, deadline: float) -> None:
        from google.api_core.exceptions import NotFound

        c = self._sdk()
        try:
            if kind == "instance":
                op = c["instances"].delete_unary(project=lay.project, zone=lay.zone, instance=name)
            elif kind == "disk":
                op = c["disks"].delete_unary(project=lay.project, zone=lay.zone, disk=name)
            else:
                op = c["firewalls"].delete_unary(project=lay.project, firewall=name)
            self._wait_op(op, lay, deadline, f"deleting {kind} {name}")
        except NotFound:
            return

    def _leftovers(self, lay: _Layout) -> list[str]:
        c = self._sdk()
        left: list[str] = []
        for fw in c["firewalls"].list(project=lay.project):
            if fw.name in (lay.fw_allow, lay.fw_deny):
                left.append(f"firewall {fw.name}")
        for inst in c["instances"].list(project=lay.project, zone=lay.zone):
            if inst.name == lay.instance:
                left.append(f"instance {inst.name}")
        for disk in c["disks"].list(project=lay.project, zone=lay.zone):
            if disk.name == lay.disk:
                left.append(f"disk {disk.name}")
        return left

    def _destroy(self, lay: _Layout, items: list[dict[str, str]], deadline: float) -> list[str]:
        problems = []
        for item in items:
            try:
                self._delete_one(item["kind"], item["name"], lay, deadline)
            except Exception as exc:
                problems.append(f"deleting {item['kind']} {item['name']}: {brief(exc)}")
        try:
            left = self._leftovers(lay)
        except Exception as exc:
            problems.append(f"listing: {brief(exc)}")
        else:
            if left:
                problems.append("still present after clean-up: " + ", ".join(left))
        return problems

    @staticmethod
    def _all_items(lay: _Layout) -> list[dict[str, str]]:
        return [
            {"kind": "instance", "name": lay.instance},
            {"kind": "disk", "name": lay.disk},
            {"kind": "firewall", "name": lay.fw_deny},
            {"kind": "firewall", "name": lay.fw_allow},
        ]

    def _read(self, lay: _Layout) -> Any:
        from google.api_core.exceptions import NotFound

        try:
            return self._sdk()["instances"].get(project=lay.project, zone=lay.zone, instance=lay.instance)
        except NotFound:
            return None

    @staticmethod
    def _address(inst: Any) -> str:
        for nic in inst.network_interfaces:
            for ac in nic.access_configs:
                if ac.nat_i_p:
                    return str(ac.nat_i_p)
        raise ProvisioningFailed("the instance has no external address")

    # ------------------------------------------------------------------ synchronous bodies

    def _create_sync(self, cvm_id: str, plan: dict[str, Any], lay: _Layout) -> Provisioned:
        deadline = time.monotonic() + self.create_timeout_s
        tracker = Tracker()
        try:
            for req in plan["requests"]:
                if req["kind"] == "instance":
                    tracker.add("disk", lay.disk, "")  # the boot disk is made by the instance insert
                tracker.add(req["kind"], req["name"], req["url"])
                self._send(req, lay, deadline)
            inst = self._read(lay)
            if inst is None:
                raise ProvisioningFailed("the instance vanished right after creation")
            address = self._address(inst)
        except BaseException as exc:
            problems = self._destroy(lay, tracker.reverse(), time.monotonic() + max(600.0, self.create_timeout_s))
            if not isinstance(exc, Exception):
                raise
            msg = f"gcp: creating CVM {cvm_id} failed: {brief(exc)}"
            if problems:
                msg += "; clean-up problems: " + "; ".join(problems)
            else:
                msg += "; every resource it made was deleted"
            raise ProvisioningFailed(msg) from exc
        launch = self._launch(plan, inst, address, lay)
        return Provisioned(instance_id=str(inst.id), host=address, port=22, user=lay.user, launch=launch)

    def _launch(self, plan: Mapping[str, Any], inst: Any, address: str, lay: _Layout) -> dict[str, object]:
        launch: dict[str, object] = {
            "provider": self.name,
            "instance_id": str(inst.id),
            "self_link": str(inst.self_link),
            "address": address,
            "port": 22,
            "user": lay.user,
            "evidence": "gcp confidential VM (SEV-SNP report / TDX quote, vTPM)",
        }
        launch.update({k: v for k, v in plan.items() if k not in ("provider", "unresolved")})
        return launch

    def _configured(self, cvm_id: str) -> _Layout:
        self._sdk()  # may fill the project from ADC
        unresolved = Unresolved()
        lay = self._layout(cvm_id, {}, unresolved)
        if unresolved.names:
            raise ProvisioningFailed(f"gcp: missing configuration: {', '.join(unresolved.names)}")
        return lay

    def _status_sync(self, cvm_id: str) -> str:
        inst = self._read(self._configured(cvm_id))
        if inst is None:
            return "missing"
        return "running" if str(inst.status) in _RUNNING else "stopped"

    def _ensure_sync(self, cvm_id: str) -> Provisioned:
        lay = self._configured(cvm_id)
        inst = self._read(lay)
        if inst is None:
            raise CvmNotFound(f"gcp: instance {lay.instance} is gone from {lay.project}/{lay.zone}")
        restarted = False
        if str(inst.status) not in _RUNNING:
            op = self._sdk()["instances"].start_unary(project=lay.project, zone=lay.zone, instance=lay.instance)
            self._wait_op(op, lay, time.monotonic() + self.create_timeout_s, f"starting {lay.instance}")
            restarted = True
            inst = self._read(lay)
            if inst is None:
                raise CvmNotFound(f"gcp: instance {lay.instance} vanished while starting")
        address = self._address(inst)
        launch = self._launch({}, inst, address, lay)
        launch["restarted"] = restarted
        return Provisioned(instance_id=str(inst.id), host=address, port=22, user=lay.user, launch=launch)

    def _inspect_sync(self, cvm_id: str) -> dict[str, Any]:
        """The instance and every firewall rule that applies to it, as GCE holds them now,
        reduced to the facts `duet.ledger.control_plane` judges, with a digest of all of it."""
        from google.cloud import compute_v1

        from duet.ledger import control_plane

        lay = self._configured(cvm_id)
        inst = self._read(lay)
        if inst is None:
            raise CvmNotFound(f"gcp: instance {lay.instance} is gone")
        instance = json.loads(compute_v1.Instance.to_json(inst, use_integers_for_enums=False))
        firewalls = [json.loads(compute_v1.Firewall.to_json(fw, use_integers_for_enums=False))
                     for fw in self._sdk()["firewalls"].list(project=lay.project)]
        facts = control_plane.gcp_facts(instance, firewalls, cidr_of(self.controller_cidr) or "")
        return {"facts": facts, "model_sha256": control_plane.model_digest(instance, firewalls)}

    async def inspect(self, cvm_id: str) -> dict[str, Any]:
        return await run_sync("gcp", self._inspect_sync, cvm_id)

    def _delete_sync(self, cvm_id: str) -> None:
        lay = self._configured(cvm_id)
        problems = self._destroy(lay, self._all_items(lay), time.monotonic() + max(900.0, self.create_timeout_s))
        if problems:
            raise ProvisioningFailed(f"gcp: deleting CVM {cvm_id}: " + "; ".join(problems))

    # ------------------------------------------------------------------ Provider API

    async def create(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> Provisioned:
        if self.project is None and self._credentials is None:
            await asyncio.to_thread(self._sdk)  # the project may come from ADC
        plan = self.plan(cvm_id, authorized_key=authorized_key, spec=spec)
        if plan["unresolved"]:
            raise ProvisioningFailed(f"gcp: missing configuration: {', '.join(plan['unresolved'])}")  # type: ignore[arg-type]
        lay = self._layout(cvm_id, spec, Unresolved())
        if (lay.project, lay.zone, lay.network) != (self.project, self.zone, self.network):
            raise ProvisioningFailed(
                "gcp: spec.project/zone/network must match the provider's configuration "
                f"({self.project}, {self.zone}, {self.network})"
            )
        return await asyncio.to_thread(self._create_sync, cvm_id, plan, lay)

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        return await run_sync("gcp", self._ensure_sync, cvm_id)

    async def status(self, cvm_id: str) -> str:
        return await run_sync("gcp", self._status_sync, cvm_id)

    async def delete(self, cvm_id: str) -> None:
        await run_sync("gcp", self._delete_sync, cvm_id)

