"""The control-plane check in the controller's flow and in the user's verifier: a cloud
model that opens a door keeps the CVM out of in-service (logged), and `duet verify` judges
the logged facts again, so a log that says "ok" over bad facts still fails."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest

from duet.client.cvm_checks import control_plane_checks
from duet.controller.evidence import Collector, ControlPlaneFailed
from duet.ledger import control_plane

CIDR = "198.51.100.10/32"
VM: dict[str, Any] = {"properties": {
    "securityProfile": {"securityType": "ConfidentialVM", "uefiSettings": {"secureBootEnabled": True,
                                                                             "vTpmEnabled": True}},
    "storageProfile": {"osDisk": {"managedDisk": {"securityProfile": {
        "securityEncryptionType": "DiskWithVMGuestState"}}}},
    "osProfile": {"allowExtensionOperations": False, "linuxConfiguration": {
        "provisionVMAgent": False, "disablePasswordAuthentication": True}},
    "diagnosticsProfile": {"bootDiagnostics": {"enabled": False}},
}}
NSG: dict[str, Any] = {"properties": {"securityRules": [
    {"name": "ssh", "properties": {"direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                                   "sourceAddressPrefix": CIDR, "destinationPortRange": "22"}},
    {"name": "deny", "properties": {"direction": "Inbound", "access": "Deny", "protocol": "*",
                                    "sourceAddressPrefix": "*", "destinationPortRange": "*"}},
]}}


def facts(boot_diagnostics: bool = False) -> dict[str, Any]:
    vm = copy.deepcopy(VM)
    vm["properties"]["diagnosticsProfile"]["bootDiagnostics"]["enabled"] = boot_diagnostics
    return control_plane.azure_facts(vm, NSG, [], CIDR)


class Port:
    def __init__(self) -> None:
        self.rec = SimpleNamespace(id="c1", provider="azure")
        self.log: list[dict[str, Any]] = []

    def append(self, items: Any) -> int:
        self.log.extend(item.to_dict() for item in items)
        return len(self.log) - len(items)


class Cloud(Collector):
    async def run_lockdown(self, port: Any, intent_index: Any) -> Any:
        raise AssertionError("not used")

    async def fetch(self, port: Any, kind: str, nonce: bytes, *, intent_index: Any) -> Any:
        raise AssertionError("not used")


def collector(result: dict[str, Any] | Exception) -> Cloud:
    c = Cloud()

    async def inspect(cvm_id: str) -> dict[str, Any]:
        if isinstance(result, Exception):
            raise result
        return result

    c.inspector = inspect
    return c


async def test_a_clean_model_is_logged_with_its_verdicts() -> None:
    port = Port()
    index = await collector({"facts": facts(), "model_sha256": "ab" * 32}).control_plane(port, purpose="in-service")
    entry = port.log[index]  # type: ignore[index]
    assert entry["type"] == "control_plane" and entry["ok"] is True and entry["model_sha256"] == "ab" * 32
    assert [c["name"] for c in entry["checks"]] == list(control_plane.AZURE_CHECKS)


@pytest.mark.parametrize("result", [{"facts": facts(boot_diagnostics=True), "model_sha256": "cd" * 32},
                                    TimeoutError("ARM did not answer")], ids=["door open", "unreadable"])
async def test_an_open_door_or_an_unreadable_model_is_refused_and_logged(result: Any) -> None:
    port = Port()
    with pytest.raises(ControlPlaneFailed):
        await collector(result).control_plane(port, purpose="in-service")
    assert port.log[-1]["type"] == "error" and port.log[-1]["code"] == "control_plane_failed"


def _log(*inspections: tuple[int, dict[str, Any], bool]) -> list[dict[str, Any]]:
    """genesis, then (position, facts, logged ok) inspections around an in-update and an
    in-service mode entry at positions 2 and 5."""
    log: list[dict[str, Any]] = [{"type": "genesis", "provider": "azure"}, {"type": "intent"},
                                 {"type": "mode", "mode": "in-update"}, {"type": "intent"}, {"type": "lockdown"},
                                 {"type": "mode", "mode": "in-service"}]
    for position, f, ok in sorted(inspections, key=lambda x: -x[0]):
        log.insert(position, {"type": "control_plane", "facts": f, "ok": ok})
    return log


def test_the_verifier_judges_the_facts_again() -> None:
    assert control_plane_checks([{"type": "genesis", "provider": "local"}]) == []
    assert not control_plane_checks(_log())[0].ok  # never inspected
    assert control_plane_checks(_log((1, facts(), True), (5, facts(), True)))[0].ok
    lying = control_plane_checks(_log((1, facts(), True), (5, facts(boot_diagnostics=True), True)))[0]
    assert not lying.ok and "boot_diagnostics_off" in lying.detail
    stale = control_plane_checks(_log((1, facts(), True)))[0]  # only at provisioning
    assert not stale.ok and "without inspecting the control plane" in stale.detail
