"""The cloud control plane is a door too: the controller reads the VM's model back from ARM
and judges it. Changes made behind the controller's back (boot diagnostics on, an
extension added, extensions allowed, the VM agent back, an NSG opened) each fail their
named check. Real Azure SDK clients against the fake ARM backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("azure.mgmt.compute")

from fake_arm import FakeArm
from test_azure import CVM, PREFIX, SPEC, provider, rg_path

from duet.ledger import control_plane


def _vm(arm: FakeArm) -> dict[str, Any]:
    return arm.resources[f"{rg_path()}/providers/Microsoft.Compute/virtualMachines/{PREFIX}".lower()]


def _nsg(arm: FakeArm) -> dict[str, Any]:
    return next(r for k, r in arm.resources.items() if "/networksecuritygroups/" in k)


def _add_extension(arm: FakeArm) -> None:
    path = f"{rg_path()}/providers/Microsoft.Compute/virtualMachines/{PREFIX}/extensions/RunCommandLinux"
    arm.resources[path.lower()] = {"id": path, "name": f"{PREFIX}/RunCommandLinux",
                                   "type": "Microsoft.Compute/virtualMachines/extensions", "properties": {}}


def _open_nsg(arm: FakeArm) -> None:
    _nsg(arm)["properties"]["securityRules"].append({"name": "oops", "properties": {
        "priority": 200, "direction": "Inbound", "access": "Allow", "protocol": "*",
        "sourceAddressPrefix": "*", "sourcePortRange": "*", "destinationAddressPrefix": "*",
        "destinationPortRange": "22"}})


MUTATIONS: dict[str, tuple[Callable[[FakeArm], None], str]] = {
    "boot diagnostics on": (lambda arm: _vm(arm)["properties"]["diagnosticsProfile"]["bootDiagnostics"].update(
        enabled=True), "boot_diagnostics_off"),
    "an extension added": (_add_extension, "no_extensions"),
    "extensions allowed": (lambda arm: _vm(arm)["properties"]["osProfile"].update(allowExtensionOperations=True),
                           "no_extensions"),
    "VM agent back": (lambda arm: _vm(arm)["properties"]["osProfile"]["linuxConfiguration"].update(
        provisionVMAgent=True), "no_vm_agent"),
    "NSG opened": (_open_nsg, "ssh_only_from_controller"),
    "secure boot off": (lambda arm: _vm(arm)["properties"]["securityProfile"]["uefiSettings"].update(
        secureBootEnabled=False), "secure_boot_vtpm"),
}


async def _inspected(arm: FakeArm, controller_key: str) -> dict[str, Any]:
    p = provider(arm, controller_cidr="198.51.100.10")
    if not arm.resources:
        await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    return await p.inspect(CVM)


async def test_a_fresh_cvm_passes_every_check(controller_key: str) -> None:
    seen = await _inspected(FakeArm(), controller_key)
    verdicts = control_plane.judge(seen["facts"])
    assert [v[0] for v in verdicts] == list(control_plane.AZURE_CHECKS)
    assert all(ok for _, ok, _ in verdicts), verdicts
    assert len(seen["model_sha256"]) == 64


@pytest.mark.parametrize("what", sorted(MUTATIONS))
async def test_a_change_behind_the_controllers_back_fails_its_check(what: str, controller_key: str) -> None:
    arm = FakeArm()
    before = await _inspected(arm, controller_key)
    mutate, check = MUTATIONS[what]
    mutate(arm)
    after = await _inspected(arm, controller_key)
    failed = {name for name, ok, _ in control_plane.judge(after["facts"]) if not ok}
    assert failed == {check}
    assert after["model_sha256"] != before["model_sha256"]


def test_unknown_providers_and_judge_versions_fail_closed() -> None:
    assert not control_plane.judge({"provider": "gcp"})[0][1]
    assert not control_plane.judge({"provider": "azure", "judge_version": 99})[0][1]
