"""The libvirt control plane: a libvirtd administrator is as powerful as a cloud's control
plane, so a duet domain's definition is read back and judged like an Azure or GCE VM model.

Through libvirt alone (no SSH) the administrator can add a serial console or a pty a user
can type into, a guest-agent channel (``guest-exec``: commands as root), a shared folder,
another disk, a host device, raw QEMU arguments (``<qemu:commandline>``: a gdb stub, a
monitor socket), or a second network path to the guest, and can drop the launch security
for the next boot. On every entry into in-service (and periodically) the controller reads
the domain's live definition and the persistent one (what the next boot uses), reduces
both to the facts below, logs them in a `control_plane` entry with a digest of both
documents, and judges them. The judge is pure and lives in the ledger package so that
`duet verify` judges the logged facts again.

What the facts cannot show: whether the guest really runs in the TEE, and with which
per-CVM value. That is the evidence's job (an SNP report or TD quote the host cannot
forge); the launch-security check here only catches a definition changed for the next boot.
The expected values (the CVM's two volumes, its SSH forward, its TEE) come from the
provider's own naming and the ``duet:cvm`` metadata written at create, except that a running
guest's launch security, which cannot change in place, overrides the metadata's TEE (the
metadata is writable); a host that rewrites the rest consistently changes only what the
evidence then contradicts.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

JUDGE_VERSION = 1
MAX_XML = 1 << 20
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DUET_NS = "https://duet.example/libvirt/1"

CHECKS = (
    "confidential_launch",
    "no_console_or_agent",
    "only_provisioned_disks",
    "ssh_only_forwarded",
    "no_passthrough_devices",
    "no_qemu_passthrough",
)

#: Device elements a duet domain may have (libvirt adds the controllers, PS/2 input, a
#: null audio backend). Anything else (hostdev, filesystem, channel, vsock, shmem, tpm,
#: redirdev, smartcard, rng, graphics, hub, ...) fails `no_passthrough_devices`.
ALLOWED_DEVICES = frozenset({"emulator", "disk", "controller", "interface", "serial", "console", "input", "audio",
                             "video", "memballoon", "panic"})
#: Character device backends that give the host no way in: output discarded, or written
#: to a file. A pty, socket, tcp, udp, spiceport, ... is a console the host can type into.
SAFE_CHARDEVS = frozenset({"null", "file"})

Verdict = tuple[str, bool, str]


class DomainXmlError(ValueError):
    """The domain definition read from libvirt is not something we parse."""


def parse(xml_text: str) -> ET.Element:
    """Parse a domain definition from libvirt (the host's output: untrusted)."""
    return parse_document(xml_text, "domain")


def parse_document(xml_text: str, root_tag: str) -> ET.Element:
    """Parse an XML document libvirt returned: no DTDs, no entities, bounded size."""
    if len(xml_text) > MAX_XML:
        raise DomainXmlError(f"the {root_tag} document is larger than 1 MiB")
    if "<!DOCTYPE" in xml_text or "<!ENTITY" in xml_text:
        raise DomainXmlError(f"the {root_tag} document carries a DTD or entities")
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 (no DTD, no entities: checked above)
    except ET.ParseError as exc:
        raise DomainXmlError(f"the {root_tag} document is not XML: {exc}") from None
    if root.tag != root_tag:
        raise DomainXmlError(f"expected a <{root_tag}>, got <{root.tag}>")
    return root


def _text(el: ET.Element | None) -> str | None:
    return None if el is None or el.text is None else el.text.strip()


def duet_metadata(root: ET.Element) -> dict[str, str]:
    """The ``duet:cvm`` element a create wrote into the domain's metadata."""
    el = root.find(f"metadata/{{{DUET_NS}}}cvm")
    return dict(el.attrib) if el is not None else {}


def _chardev(el: ET.Element) -> dict[str, Any]:
    target = el.find("target")
    source = el.find("source")
    return {"device": el.tag, "type": el.get("type"),
            "target_type": target.get("type") if target is not None else None,
            "target_name": target.get("name") if target is not None else None,
            "source_path": source.get("path") if source is not None else None}


def _disk(el: ET.Element) -> dict[str, Any]:
    source = el.find("source")
    src = None
    if source is not None:
        src = (source.get("file") or source.get("dev") or source.get("dir") or source.get("name")
               or source.get("volume") or source.get("protocol"))
    driver = el.find("driver")
    target = el.find("target")
    return {"type": el.get("type"), "device": el.get("device"), "source": src,
            "format": driver.get("type") if driver is not None else None,
            "readonly": el.find("readonly") is not None, "target": target.get("dev") if target is not None else None}


def _video_model(el: ET.Element) -> str:
    model = el.find("model")
    return str(model.get("type")) if model is not None else "default"


def _interface(el: ET.Element) -> dict[str, Any]:
    backend = el.find("backend")
    forwards = []
    for fwd in el.findall("portForward"):
        forwards.append({"proto": fwd.get("proto"), "address": fwd.get("address"), "dev": fwd.get("dev"),
                         "ranges": [dict(sorted(r.attrib.items())) for r in fwd.findall("range")]})
    source = el.find("source")
    return {"type": el.get("type"), "backend": backend.get("type") if backend is not None else None,
            "source": dict(sorted(source.attrib.items())) if source is not None else None,
            "port_forwards": forwards}


def domain_facts(xml_text: str) -> dict[str, Any]:
    """The security-relevant fields of one domain definition (pure)."""
    root = parse(xml_text)
    devices = root.find("devices")
    devs = list(devices) if devices is not None else []
    ls = root.find("launchSecurity")
    launch = None
    if ls is not None:
        launch = {"type": ls.get("type"), "policy": _text(ls.find("policy")),
                  "host_data": _text(ls.find("hostData")), "mr_config_id": _text(ls.find("mrConfigId")),
                  "kernel_hashes": ls.get("kernelHashes")}
    qemu_args = [a.get("value") for a in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    qemu_env = [e.get("name") for e in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}env")]
    qemu_other = sorted({c.tag.split("}", 1)[1] for c in root if c.tag.startswith(f"{{{QEMU_NS}}}")
                         and c.tag != f"{{{QEMU_NS}}}commandline"})
    os_el = root.find("os")
    return {
        "domain_type": root.get("type"),
        "name": _text(root.find("name")),
        "metadata": duet_metadata(root),
        "launch_security": launch,
        "kernel": _text(os_el.find("kernel")) if os_el is not None else None,
        "cmdline": _text(os_el.find("cmdline")) if os_el is not None else None,
        "disks": [_disk(d) for d in devs if d.tag == "disk"],
        "filesystems": sum(1 for d in devs if d.tag == "filesystem"),
        "interfaces": [_interface(d) for d in devs if d.tag == "interface"],
        "chardevs": [_chardev(d) for d in devs if d.tag in ("serial", "console", "parallel", "channel")],
        "graphics": sorted(str(d.get("type")) for d in devs if d.tag == "graphics"),
        "video_models": sorted(_video_model(d) for d in devs if d.tag == "video"),
        "other_devices": sorted({d.tag for d in devs if d.tag not in ALLOWED_DEVICES}),
        "qemu_args": qemu_args,
        "qemu_env": qemu_env,
        "qemu_other": qemu_other,
    }


def libvirt_facts(live_xml: str, persistent_xml: str | None, expected: Mapping[str, Any]) -> dict[str, Any]:
    """Facts for `duet.ledger.control_plane.judge`: the live definition, the persistent one
    (None for a transient domain), and what the provider made (`expected`: ``tee``,
    ``disks`` (paths), ``ssh_address``, ``ssh_port``, ``network``)."""
    return {
        "provider": "libvirt",
        "judge_version": JUDGE_VERSION,
        "expected": dict(expected),
        "live": domain_facts(live_xml),
        "persistent": domain_facts(persistent_xml) if persistent_xml is not None else None,
    }


def expected_slirp_args(address: str, port: object, confidential: bool) -> list[str]:
    """The only QEMU arguments duet passes around libvirt (``network: slirp``, which
    `duet.cvm.libvirt_xml` writes from here): QEMU's user-mode network with one forward of
    guest TCP 22, as the qemu provider's, for a libvirt without the passt backend (Debian
    12's 9.0), whose own ``user`` interface cannot forward a port. The judge accepts
    exactly these arguments and no others."""
    device = "virtio-net-pci,netdev=duetnet0,bus=pcie.0,addr=0x1e"
    if confidential:
        device += ",disable-legacy=on,iommu_platform=true"
    return ["-netdev", f"user,id=duetnet0,hostfwd=tcp:{address}:{port}-:22", "-device", device]


def _launch(d: Mapping[str, Any], exp: Mapping[str, Any]) -> str | None:
    tee = exp.get("tee")
    ls = d.get("launch_security")
    if tee == "none":
        return None
    want = {"snp": "sev-snp", "tdx": "tdx"}.get(str(tee))
    if want is None:
        return f"unknown TEE {tee!r}"
    if not isinstance(ls, Mapping) or ls.get("type") != want:
        return f"launch security is {ls.get('type') if isinstance(ls, Mapping) else 'absent'}, not {want}"
    try:
        policy = int(str(ls.get("policy")), 0)
    except ValueError:
        return f"unreadable policy {ls.get('policy')!r}"
    debug = (1 << 19) if tee == "snp" else 1
    if policy & debug:
        return f"the guest policy {ls.get('policy')} allows debugging (the host can read guest memory)"
    if tee == "snp" and not ls.get("host_data"):
        return "no hostData: the SNP report would not name this CVM"
    if tee == "tdx" and not ls.get("mr_config_id"):
        return "no mrConfigId: the TD quote would not name this CVM"
    return None


def _consoles(d: Mapping[str, Any]) -> str | None:
    bad = [f"{c.get('device')} type {c.get('type')}" for c in d.get("chardevs") or []
           if c.get("device") in ("channel", "parallel") or c.get("type") not in SAFE_CHARDEVS]
    if d.get("graphics"):
        bad.append(f"graphics {', '.join(d['graphics'])}")
    bad += [f"video {m}" for m in d.get("video_models") or [] if m != "none"]
    return ", ".join(bad) or None


def _disks(d: Mapping[str, Any], exp: Mapping[str, Any]) -> str | None:
    want = sorted(str(p) for p in exp.get("disks") or [])
    disks = d.get("disks") or []
    got = sorted(str(x.get("source")) for x in disks)
    problems = []
    if got != want:
        extra = sorted(set(got) - set(want))
        missing = sorted(set(want) - set(got))
        problems.append("disks differ from the provisioned ones"
                        + (f"; extra: {', '.join(extra)}" if extra else "")
                        + (f"; missing: {', '.join(missing)}" if missing else "")
                        + ("; a volume is attached twice" if not extra and not missing else ""))
    if any(x.get("type") != "file" or x.get("device") != "disk" for x in disks):
        problems.append("a disk is not a plain file disk")
    if d.get("filesystems"):
        problems.append(f"{d['filesystems']} shared folder(s)")
    return "; ".join(problems) or None


def _network(d: Mapping[str, Any], exp: Mapping[str, Any]) -> str | None:
    address, port, network = exp.get("ssh_address"), str(exp.get("ssh_port")), exp.get("network")
    nics = d.get("interfaces") or []
    confidential = exp.get("tee") != "none"
    if network == "slirp":
        if nics:
            return f"{len(nics)} libvirt interface(s) besides the forwarded SSH port"
        if d.get("qemu_args") != expected_slirp_args(str(address), port, confidential):
            return "the user-mode network arguments are not duet's (one forward of TCP 22)"
        return None
    if len(nics) != 1:
        return f"{len(nics)} interfaces; want exactly the one user-mode interface"
    nic = nics[0]
    if nic.get("type") != "user" or nic.get("backend") != "passt":
        return f"interface type {nic.get('type')} (backend {nic.get('backend')}), not user-mode passt"
    want = [{"proto": "tcp", "address": address, "dev": None, "ranges": [{"start": port, "to": "22"}]}]
    if nic.get("port_forwards") != want:
        return f"port forwards {nic.get('port_forwards')} are not only TCP {address}:{port} -> 22"
    return None


def _passthrough(d: Mapping[str, Any]) -> str | None:
    other = d.get("other_devices") or []
    return f"devices duet did not add: {', '.join(other)}" if other else None


def _qemu(d: Mapping[str, Any], exp: Mapping[str, Any]) -> str | None:
    problems = []
    if d.get("qemu_env"):
        problems.append(f"QEMU environment {', '.join(d['qemu_env'])}")
    if d.get("qemu_other"):
        problems.append(f"QEMU pass-through {', '.join(d['qemu_other'])}")
    args = d.get("qemu_args") or []
    if args and (exp.get("network") != "slirp" or args != expected_slirp_args(
            str(exp.get("ssh_address")), str(exp.get("ssh_port")), exp.get("tee") != "none")):
        problems.append("raw QEMU arguments other than duet's network")
    return "; ".join(problems) or None


def judge(facts: Mapping[str, Any]) -> list[Verdict]:
    """Each check over the live definition and the persistent one (the next boot)."""
    exp = facts.get("expected") if isinstance(facts.get("expected"), Mapping) else {}
    assert isinstance(exp, Mapping)
    views = [("live", facts.get("live"))]
    if facts.get("persistent") is not None:
        views.append(("next boot", facts.get("persistent")))
    rules: list[tuple[str, Callable[[Mapping[str, Any]], str | None], str]] = [
        ("confidential_launch", lambda d: _launch(d, exp),
         "no TEE requested: a plain VM" if exp.get("tee") == "none" else f"{exp.get('tee')} launch security, no debug"),
        ("no_console_or_agent", _consoles, "serial output discarded or written to a file; no graphics, no channels"),
        ("only_provisioned_disks", lambda d: _disks(d, exp), "only the CVM's disk and its cloud-init seed"),
        ("ssh_only_forwarded", lambda d: _network(d, exp),
         f"one user-mode NIC: only TCP {exp.get('ssh_address')}:{exp.get('ssh_port')} -> 22"),
        ("no_passthrough_devices", _passthrough, "no host devices, shared memory, vsock, TPM or other devices"),
        ("no_qemu_passthrough", lambda d: _qemu(d, exp), "no raw QEMU arguments beyond duet's network"),
    ]
    out: list[Verdict] = []
    for name, rule, good in rules:
        problems = []
        for label, view in views:
            if not isinstance(view, Mapping):
                problems.append(f"{label}: no definition")
                continue
            why = rule(view)
            if why:
                problems.append(f"{label}: {why}")
        out.append((name, not problems, "; ".join(problems) if problems else good))
    return out
