"""Google Cloud's control plane, read back through the real google-cloud-compute client (fake
GCE backend) and judged: changes behind the controller's back each fail their check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("google.cloud.compute_v1")

from fake_gce import FakeGce
from test_gcp import CVM, PREFIX, SPEC, gce, provider  # noqa: F401  (gce is a fixture)

from duet.ledger import control_plane


def _meta(fake: FakeGce, key: str, value: str) -> None:
    items = fake.instances[PREFIX]["metadata"]["items"]
    items[:] = [i for i in items if i["key"] != key] + [{"key": key, "value": value}]


MUTATIONS: dict[str, tuple[Callable[[FakeGce], None], str]] = {
    "OS Login on": (lambda g: _meta(g, "enable-oslogin", "TRUE"), "no_os_login"),
    "project keys allowed": (lambda g: _meta(g, "block-project-ssh-keys", "FALSE"), "project_keys_blocked"),
    "serial port on": (lambda g: _meta(g, "serial-port-enable", "TRUE"), "serial_console_off"),
    "a service account": (lambda g: g.instances[PREFIX].update(
        serviceAccounts=[{"email": "x@proj-1.iam.gserviceaccount.com", "scopes": ["cloud-platform"]}]),
        "no_service_account"),
    "a network-wide allow rule": (lambda g: g.firewalls.update({"open": {
        "name": "open", "network": "global/networks/default", "direction": "INGRESS", "priority": 100,
        "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["22", "80"]}]}}),
        "ssh_only_from_controller"),
    "secure boot off": (lambda g: g.instances[PREFIX]["shieldedInstanceConfig"].update(enableSecureBoot=False),
                        "shielded_vm"),
}


async def _inspected(fake: FakeGce, controller_key: str, create: bool) -> dict[str, Any]:
    p = provider(fake, controller_cidr="198.51.100.10/32")
    if create:
        await p.create(CVM, authorized_key=controller_key, spec=SPEC)
    return await p.inspect(CVM)


async def test_a_fresh_cvm_passes_every_check(gce: FakeGce, controller_key: str) -> None:  # noqa: F811
    seen = await _inspected(gce, controller_key, True)
    verdicts = control_plane.judge(seen["facts"])
    assert [v[0] for v in verdicts] == list(control_plane.GCP_CHECKS)
    assert all(ok for _, ok, _ in verdicts), verdicts


@pytest.mark.parametrize("what", sorted(MUTATIONS))
async def test_a_change_behind_the_controllers_back_fails_its_check(
        what: str, gce: FakeGce, controller_key: str) -> None:  # noqa: F811
    before = await _inspected(gce, controller_key, True)
    mutate, check = MUTATIONS[what]
    mutate(gce)
    after = await _inspected(gce, controller_key, False)
    failed = {name for name, ok, _ in control_plane.judge(after["facts"]) if not ok}
    assert failed == {check}
    assert after["model_sha256"] != before["model_sha256"]
