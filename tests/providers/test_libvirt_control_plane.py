"""The libvirt control-plane judge (`duet.ledger.control_plane_libvirt`): duet's own domain
definitions and one libvirt 9.0 returned pass; every door a libvirtd administrator can open
through the definition alone fails the check that names it, in the live definition and in
the persistent one (the next boot)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from test_libvirt_xml import CASES, GOLDEN

from duet.cvm.libvirt_xml import QEMU_NS, domain_xml
from duet.ledger import control_plane
from duet.ledger.control_plane_libvirt import DomainXmlError, domain_facts, libvirt_facts


def expected_for(name: str) -> dict[str, object]:
    s = CASES[name]
    return {"cvm_id": s.cvm_id, "tee": s.tee, "disks": [s.disk_path, s.seed_path], "ssh_address": s.ssh_address,
            "ssh_port": str(s.ssh_port), "network": s.network}


def verdicts(live: str, persistent: str | None, expected: dict[str, object]) -> dict[str, tuple[bool, str]]:
    return {n: (ok, d) for n, ok, d in control_plane.judge(libvirt_facts(live, persistent, expected))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_duets_own_definitions_pass(name: str) -> None:
    xml = domain_xml(CASES[name])
    got = verdicts(xml, xml, expected_for(name))
    assert all(ok for ok, _ in got.values()), got
    assert set(got) == {"confidential_launch", "no_console_or_agent", "only_provisioned_disks", "ssh_only_forwarded",
                        "no_passthrough_devices", "no_qemu_passthrough"}


def test_what_libvirt_9_returned_passes() -> None:
    live = (GOLDEN / "live-libvirt-9.0-none.xml").read_text()
    expected = {"tee": "none", "disks": ["/var/tmp/duet-test-images/debian-bookworm-v2/disk.raw",
                                         "/tmp/lvexp/seed.img"],
                "ssh_address": "127.0.0.1", "ssh_port": "42222", "network": "slirp"}
    got = verdicts(live, None, expected)
    assert all(ok for ok, _ in got.values()), got


def _edit(xml: str, change: Callable[[ET.Element], None]) -> str:
    root = ET.fromstring(xml)
    change(root)
    return ET.tostring(root, encoding="unicode")


def _dev(tag: str, attrib: dict[str, str], *children: tuple[str, dict[str, str]]) -> Callable[[ET.Element], None]:
    def change(root: ET.Element) -> None:
        el = ET.SubElement(root.find("devices"), tag, attrib)  # type: ignore[arg-type]
        for ctag, cattr in children:
            ET.SubElement(el, ctag, cattr)
    return change


def _set_serial_pty(root: ET.Element) -> None:
    root.find("devices/serial").set("type", "pty")  # type: ignore[union-attr]


def _drop_launch_security(root: ET.Element) -> None:
    root.remove(root.find("launchSecurity"))  # type: ignore[arg-type]


def _debug_policy(root: ET.Element) -> None:
    root.find("launchSecurity/policy").text = "0x000b0000"  # type: ignore[union-attr]


def _second_forward(root: ET.Element) -> None:
    fwd = ET.SubElement(root.find("devices/interface"), "portForward", {"proto": "tcp"})  # type: ignore[arg-type]
    ET.SubElement(fwd, "range", {"start": "2222", "to": "2222"})


def _forward_all(root: ET.Element) -> None:
    root.find("devices/interface/portForward/range").set("end", "65535")  # type: ignore[union-attr]


def _gdb_stub(root: ET.Element) -> None:
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for arg in ("-gdb", "tcp::1234"):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})


def _swap_disk(root: ET.Element) -> None:
    root.find("devices/disk/source").set("file", "/srv/evil.qcow2")  # type: ignore[union-attr]


#: (what the administrator does, the case it is done to, the check that must fail)
ATTACKS: list[tuple[str, str, Callable[[ET.Element], None], str]] = [
    ("serial console on a pty", "none.xml", _set_serial_pty, "no_console_or_agent"),
    ("VNC display", "none.xml", _dev("graphics", {"type": "vnc", "port": "-1"}), "no_console_or_agent"),
    ("guest agent channel", "snp.xml",
     _dev("channel", {"type": "unix"}, ("target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})),
     "no_console_or_agent"),
    ("extra disk", "none.xml",
     _dev("disk", {"type": "file", "device": "disk"}, ("source", {"file": "/srv/tools.qcow2"}),
          ("target", {"dev": "vdc", "bus": "virtio"})), "only_provisioned_disks"),
    ("system disk swapped", "tdx.xml", _swap_disk, "only_provisioned_disks"),
    ("shared folder", "none.xml",
     _dev("filesystem", {"type": "mount"}, ("source", {"dir": "/srv"}), ("target", {"dir": "host"})),
     "only_provisioned_disks"),
    ("host device", "snp.xml", _dev("hostdev", {"mode": "subsystem", "type": "pci"}), "no_passthrough_devices"),
    ("vsock", "none.xml", _dev("vsock", {"model": "virtio"}), "no_passthrough_devices"),
    ("bridged NIC", "none.xml", _dev("interface", {"type": "bridge"}, ("source", {"bridge": "br0"})),
     "ssh_only_forwarded"),
    ("second port forward", "none.xml", _second_forward, "ssh_only_forwarded"),
    ("forward widened to a range", "none.xml", _forward_all, "ssh_only_forwarded"),
    ("gdb stub through qemu:commandline", "snp.xml", _gdb_stub, "no_qemu_passthrough"),
    ("gdb stub beside the slirp network", "none-slirp.xml", _gdb_stub, "no_qemu_passthrough"),
    ("launch security dropped", "snp.xml", _drop_launch_security, "confidential_launch"),
    ("TDX launch security dropped", "tdx.xml", _drop_launch_security, "confidential_launch"),
    ("SNP debug policy", "snp.xml", _debug_policy, "confidential_launch"),
]


@pytest.mark.parametrize(("what", "case", "change", "check"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_a_door_opened_through_libvirt_fails_its_check(what: str, case: str, change: Callable[[ET.Element], None],
                                                      check: str) -> None:
    good = domain_xml(CASES[case])
    bad = _edit(good, change)
    for live, persistent, where in ((bad, good, "live"), (good, bad, "next boot")):
        got = verdicts(live, persistent, expected_for(case))
        ok, detail = got[check]
        assert not ok, f"{what}: {check} passes"
        assert detail.startswith(where) or f"; {where}" in detail, detail


def test_hostile_xml_is_refused() -> None:
    bomb = '<!DOCTYPE d [<!ENTITY a "aaaa">]><domain type="kvm"><name>&a;</name></domain>'
    with pytest.raises(DomainXmlError):
        domain_facts(bomb)
    with pytest.raises(DomainXmlError):
        domain_facts("<pool/>")
    with pytest.raises(DomainXmlError):
        domain_facts("<domain>" + "x" * (1 << 20) + "</domain>")


def test_facts_of_another_judge_version_fail(tmp_path: Path) -> None:
    xml = domain_xml(CASES["none.xml"])
    facts = libvirt_facts(xml, xml, expected_for("none.xml"))
    facts["judge_version"] = 99
    [(name, ok, _)] = control_plane.judge(facts)
    assert name == "control_plane" and not ok
