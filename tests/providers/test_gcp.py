"""The gcp provider against the real google-cloud-compute clients (REST transport), with
injected credentials and a local recorded-shape Compute Engine API. No account needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

pytest.importorskip("google.cloud.compute_v1")

from fake_gce import FakeGce, FakeGoogleCredentials
from provider_helpers import HOST_DATA

from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.gcp import GcpProvider

CVM = "c0ffee00-1234"
PREFIX = "duet-c0ffee00-1234"
SPEC: dict[str, object] = {"tee": "snp", "host_data": HOST_DATA, "controller_cidr": "198.51.100.10/32"}
P = "/compute/v1/projects/proj-1"


@pytest.fixture
def gce() -> Iterator[FakeGce]:
    fake = FakeGce().start()
    yield fake
    fake.stop()


def provider(gce: FakeGce, **kw: Any) -> GcpProvider:
    args: dict[str, Any] = {"project": "proj-1", "zone": "europe-west4-a", "credentials": FakeGoogleCredentials(),
                            "api_endpoint": gce.endpoint, "poll_interval_s": 0.0}
    args.update(kw)
    return GcpProvider(**args)


def meta(body: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["value"] for i in body["metadata"]["items"]}


def test_plan_has_every_security_setting(controller_key: str) -> None:
    plan = GcpProvider(project="proj-1", zone="europe-west4-a").plan(CVM, authorized_key=controller_key, spec=SPEC)
    json.dumps(plan)
    assert plan["unresolved"] == []
    reqs = plan["requests"]
    assert [(r["method"], r["url"]) for r in reqs] == [  # type: ignore[index]
        ("POST", "https://compute.googleapis.com/compute/v1/projects/proj-1/global/firewalls"),
        ("POST", "https://compute.googleapis.com/compute/v1/projects/proj-1/global/firewalls"),
        ("POST", "https://compute.googleapis.com/compute/v1/projects/proj-1/zones/europe-west4-a/instances"),
    ]
    allow, deny, inst = (r["body"] for r in reqs)  # type: ignore[index,union-attr]
    assert allow["sourceRanges"] == ["198.51.100.10/32"]
    assert allow["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert allow["targetTags"] == deny["targetTags"] == [PREFIX]
    assert deny["denied"] == [{"IPProtocol": "all"}] and deny["priority"] > allow["priority"]
    assert deny["priority"] < 65534  # beats a default network's default-allow-ssh
    assert inst["confidentialInstanceConfig"] == {"confidentialInstanceType": "SEV_SNP"}
    assert inst["machineType"].endswith("/n2d-standard-2") and inst["minCpuPlatform"] == "AMD Milan"
    assert inst["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert inst["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableVtpm": True,
                                              "enableIntegrityMonitoring": True}
    assert "serviceAccounts" not in inst
    m = meta(inst)
    key = " ".join(controller_key.split()[:2])
    assert m["enable-oslogin"] == "FALSE"
    assert m["block-project-ssh-keys"] == "TRUE"
    assert m["serial-port-enable"] == "FALSE"
    assert m["ssh-keys"] == f"duet:{key} duet"
    assert m["duet-host-data"] == HOST_DATA
    assert inst["labels"]["duet-hd-0"] + inst["labels"]["duet-hd-1"] == HOST_DATA
    cfg = yaml.safe_load(m["user-data"])
    assert {"path": "/etc/ssh/duet/authorized_keys", "owner": "root:root", "permissions": "0644",
            "content": key + "\n"} in cfg["write_files"]
    assert "systemctl mask --now google-guest-agent.service || true" in cfg["bootcmd"]
    assert inst["disks"][0]["autoDelete"] is True
    assert inst["disks"][0]["initializeParams"]["sourceImage"].endswith("/ubuntu-2204-lts")


def test_plan_urls_follow_api_endpoint(controller_key: str) -> None:
    """A bare host, as the client options take it too, means https."""
    plan = GcpProvider(project="proj-1", zone="europe-west4-a", api_endpoint="compute.example.org/").plan(
        CVM, authorized_key=controller_key, spec=SPEC)
    urls = [r["url"] for r in plan["requests"] + plan["cleanup"]]  # type: ignore[operator]
    assert urls and all(u.startswith("https://compute.example.org/compute/v1/projects/proj-1/") for u in urls)


def test_plan_tdx(controller_key: str) -> None:
    plan = GcpProvider(project="p", zone="us-central1-a").plan(
        CVM, authorized_key=controller_key, spec={**SPEC, "tee": "tdx", "image": "ubuntu-24.04"})
    inst = plan["requests"][-1]["body"]  # type: ignore[index]
    assert inst["confidentialInstanceConfig"] == {"confidentialInstanceType": "TDX"}
    assert inst["machineType"].endswith("/c3-standard-4") and "minCpuPlatform" not in inst
    with pytest.raises(ProvisioningFailed, match="cannot run a TDX"):
        GcpProvider(project="p", zone="z").plan(CVM, authorized_key=controller_key,
                                                spec={**SPEC, "tee": "tdx", "size": "n2d-standard-2"})


async def test_create_sends_exactly_the_plan(gce: FakeGce, controller_key: str) -> None:
    creds = FakeGoogleCredentials()
    p = provider(gce, credentials=creds)
    plan = p.plan(CVM, authorized_key=controller_key, spec=SPEC)
    prov = await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    posts = [s for s in gce.mutations()]
    # The plan shows the endpoint the clients use (api_endpoint), not Google's public one.
    assert all(r["url"].startswith(f"{gce.endpoint}/compute/v1/projects/")  # type: ignore[index]
               for r in plan["requests"])  # type: ignore[union-attr]
    assert "googleapis" not in json.dumps(plan)
    assert [(s.method, gce.endpoint + s.path, s.body) for s in posts] == [
        (r["method"], r["url"], r["body"])  # type: ignore[index]
        for r in plan["requests"]  # type: ignore[union-attr]
    ]
    assert all({k.lower(): v for k, v in s.headers.items()}["authorization"] == "Bearer fake-gcp-token-SECRET"
               for s in gce.sent)
    assert (prov.host, prov.port, prov.user, prov.instance_id) == ("198.51.100.77", 22, "duet", "4815162342000001")
    assert prov.launch["requests"] == plan["requests"]
    assert "SECRET" not in json.dumps(prov.launch)
    assert await p.status(CVM) == "running"


async def test_failed_instance_create_deletes_everything(gce: FakeGce, controller_key: str) -> None:
    gce.instance_insert = "ERROR"
    with pytest.raises(ProvisioningFailed, match="ZONE_RESOURCE_POOL_EXHAUSTED") as info:
        await provider(gce).create(CVM, authorized_key=controller_key, spec=SPEC)
    assert "every resource it made was deleted" in str(info.value)
    deletes = [s.path.removeprefix(P) for s in gce.sent if s.method == "DELETE"]
    assert deletes == [f"/zones/europe-west4-a/instances/{PREFIX}", f"/zones/europe-west4-a/disks/{PREFIX}",
                       f"/global/firewalls/{PREFIX}-deny", f"/global/firewalls/{PREFIX}-ssh"]
    lists = [s.path.removeprefix(P) for s in gce.sent if s.method == "GET"][-3:]
    assert lists == ["/global/firewalls", "/zones/europe-west4-a/instances", "/zones/europe-west4-a/disks"]
    assert gce.firewalls == gce.instances == gce.disks == {}


async def test_failed_firewall_create_deletes_the_first(gce: FakeGce, controller_key: str) -> None:
    # the first firewall is made, the second is refused
    calls = {"n": 0}
    orig = gce.route

    def route(r: Any) -> tuple[int, Any]:
        if r.method == "POST" and r.path.endswith("/global/firewalls"):
            calls["n"] += 1
            if calls["n"] == 2:
                return 403, FakeGce._err(403, "QUOTA_EXCEEDED: firewalls")
        return orig(r)

    gce.route = route  # type: ignore[method-assign]
    with pytest.raises(ProvisioningFailed, match="QUOTA_EXCEEDED"):
        await provider(gce).create(CVM, authorized_key=controller_key, spec=SPEC)
    assert not any(s.path.endswith("/instances") for s in gce.sent if s.method == "POST")
    deletes = [s.path.removeprefix(P) for s in gce.sent if s.method == "DELETE"]
    assert deletes == [f"/global/firewalls/{PREFIX}-deny", f"/global/firewalls/{PREFIX}-ssh"]
    assert gce.firewalls == {}


async def test_timeout_deletes_everything(gce: FakeGce, controller_key: str) -> None:
    gce.instance_insert = "HANG"
    with pytest.raises(ProvisioningFailed, match="did not finish in time"):
        await provider(gce, create_timeout_s=0.5, poll_interval_s=0.05).create(
            CVM, authorized_key=controller_key, spec=SPEC)
    assert gce.firewalls == gce.instances == gce.disks == {}


async def test_status_restart_loss_and_delete(gce: FakeGce, controller_key: str) -> None:
    p = provider(gce)
    await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    gce.instances[PREFIX]["status"] = "TERMINATED"
    assert await p.status(CVM) == "stopped"
    prov = await p.ensure_running(CVM)
    assert prov.launch["restarted"] is True
    assert await p.status(CVM) == "running"
    del gce.instances[PREFIX]  # deleted in the console under the controller
    assert await p.status(CVM) == "missing"
    with pytest.raises(CvmNotFound):
        await p.ensure_running(CVM)
    await p.delete(CVM)
    assert gce.firewalls == gce.instances == gce.disks == {}
    await p.delete(CVM)  # idempotent


async def test_create_refuses_unresolved_or_moved(gce: FakeGce, controller_key: str) -> None:
    p = provider(gce)
    with pytest.raises(ProvisioningFailed, match="controller_cidr"):
        await p.create(CVM, authorized_key=controller_key, spec={"host_data": HOST_DATA})
    with pytest.raises(ProvisioningFailed, match="must match"):
        await p.create(CVM, authorized_key=controller_key, spec={**SPEC, "zone": "elsewhere-1a"})
    assert gce.sent == []
