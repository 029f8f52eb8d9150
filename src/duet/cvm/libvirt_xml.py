"""libvirt domain and volume XML for duet's CVMs: pure (no libvirt-python; the qemu
provider's launch constants and the judge's namespaces and slirp arguments are shared, not
copied), so plans, golden-file tests and the control-plane facts need neither libvirt nor
a host.

The domain mirrors what the `qemu` provider puts on its command line (`duet.cvm.qemu`),
in libvirt's vocabulary:

* ``snp`` — ``<launchSecurity type='sev-snp'>`` with the guest ``policy`` (0x30000: no
  debug, no migration agent, SMT allowed), ``hostData`` = base64 of the controller's
  32-byte per-CVM value (the SNP report's HOST_DATA), ``kernelHashes='yes'`` with direct
  kernel boot, guest RAM in a shared memfd, the AmdSev OVMF as a ROM (``-bios``), the
  EPYC-v4 CPU model that `sev-snp-measure` assumes. Schema: libvirt >= 10.5 (the first
  with ``sev-snp``), QEMU >= 9.1.
* ``tdx`` — ``<launchSecurity type='tdx'>`` with ``policy`` 0x10000000 (SEPT_VE_DISABLE,
  no DEBUG bit, as QEMU's tdx-guest default), ``mrConfigId`` = base64 of host_data || 16
  zero bytes (48 bytes; the TD quote's MRCONFIGID), the TD's quote generation service
  (libvirt's default socket) so configfs-tsm can produce quotes, a split irqchip
  (``<ioapic driver='qemu'/>``), TDVF as a ROM. Schema: libvirt's ``tdx`` launch security
  (libvirt >= 11.6, QEMU >= 10.1).
* ``none`` — a plain KVM (or TCG: domain type ``qemu``) guest; evidence is absent.

Every device the guest gets is listed here and nothing else: the copy-on-write system
disk, the cloud-init NoCloud seed (read-only), one user-mode (passt) NIC whose only
inbound path is a port forward of guest TCP 22 from one address of the libvirt host (as
the qemu provider's ``hostfwd``), a serial port that is either discarded or written to a
host file (never a pty a host user could type into), no graphics, no guest agent channel,
no balloon. Confidential guests get IOMMU-platform, non-transitional virtio devices.

The NIC is libvirt's passt backend with a ``<portForward>`` (``network: passt``, the
default). ``network: slirp`` is for a libvirt built without passt (Debian 12's 9.0): the
same forward as QEMU arguments (``<qemu:commandline>``), the one pass-through duet makes
and the control-plane judge accepts only in exactly this form.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from duet.attestation.binding import mrconfigid_for
from duet.cvm.qemu import SNP_CPU, SNP_POLICY
from duet.ledger.control_plane_libvirt import DUET_NS, QEMU_NS, expected_slirp_args

SNP_CBITPOS = 51
SNP_REDUCED_PHYS_BITS = 1
#: TD attributes: SEPT_VE_DISABLE (bit 28); bit 0 (DEBUG) clear.
TDX_POLICY = 0x10000000
SNP_POLICY_DEBUG = 1 << 19
TDX_POLICY_DEBUG = 1 << 0
#: Which schema each TEE's recorded domain XML follows (tests/providers/libvirt_golden/).
SCHEMA_TARGETS = {
    "snp": "libvirt >= 10.5 (launchSecurity type='sev-snp'), QEMU >= 9.1",
    "tdx": "libvirt >= 11.6 (launchSecurity type='tdx'), QEMU >= 10.1",
    "none": "libvirt >= 9.0 (passt portForward), QEMU >= 7.2",
}

ET.register_namespace("duet", DUET_NS)
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class DomainSpec:
    """Everything a duet domain's XML depends on (all values are the libvirt host's)."""

    cvm_id: str
    name: str
    tee: str
    host_data: str
    domain_type: str  # kvm | qemu (TCG)
    memory_mb: int
    vcpus: int
    disk_path: str
    disk_format: str
    seed_path: str
    ssh_address: str
    ssh_port: int | str
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    firmware: str | None = None
    emulator: str | None = None
    machine: str = "q35"
    serial_log: str | None = None
    snp_cbitpos: int = SNP_CBITPOS
    network: str = "passt"  # passt | slirp


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: DomainSpec) -> str:
    """The domain definition a create sends to libvirt (``defineXML``)."""
    if spec.tee not in ("snp", "tdx", "none"):
        raise ValueError(f"unsupported TEE {spec.tee!r}")
    if spec.domain_type not in ("kvm", "qemu"):
        raise ValueError("domain type must be kvm or qemu")
    if spec.tee != "none" and spec.domain_type != "kvm":
        raise ValueError("a confidential guest needs KVM")
    confidential = spec.tee != "none"
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.name)
    meta = _sub(dom, "metadata")
    _sub(meta, f"{{{DUET_NS}}}cvm", id=spec.cvm_id, tee=spec.tee, ssh_address=spec.ssh_address,
         ssh_port=str(spec.ssh_port))
    _sub(dom, "memory", str(spec.memory_mb), unit="MiB")
    if spec.tee == "snp":
        mb = _sub(dom, "memoryBacking")
        _sub(mb, "source", type="memfd")
        _sub(mb, "access", mode="shared")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    if spec.firmware is not None:
        _sub(os_el, "loader", spec.firmware, type="rom", readonly="yes")
    if spec.kernel is not None:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd is not None:
            _sub(os_el, "initrd", spec.initrd)
        if spec.append:
            _sub(os_el, "cmdline", spec.append)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.tee == "tdx":
        _sub(features, "ioapic", driver="qemu")
    if spec.tee == "snp":
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", SNP_CPU, fallback="forbid")
    elif spec.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough", check="none", migratable="off")
    else:
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", "qemu64", fallback="allow")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    # A confidential guest cannot be reset in place: a reboot ends it, and the controller
    # starts it again (ensure_running), with a fresh launch.
    _sub(dom, "on_reboot", "destroy" if confidential else "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    if spec.emulator is not None:
        _sub(devices, "emulator", spec.emulator)
    model = {"model": "virtio-non-transitional"} if confidential else {}
    iommu = {"iommu": "on"} if confidential else {}
    for path, fmt, target, readonly in ((spec.disk_path, spec.disk_format, "vda", False),
                                        (spec.seed_path, "raw", "vdb", True)):
        disk = _sub(devices, "disk", type="file", device="disk", **model)
        _sub(disk, "driver", name="qemu", type=fmt, **iommu)
        _sub(disk, "source", file=path)
        _sub(disk, "target", dev=target, bus="virtio")
        if readonly:
            _sub(disk, "readonly")
    if spec.network == "passt":
        nic = _sub(devices, "interface", type="user")
        _sub(nic, "backend", type="passt")
        fwd = _sub(nic, "portForward", proto="tcp", address=spec.ssh_address)
        _sub(fwd, "range", start=str(spec.ssh_port), to="22")
        _sub(nic, "model", type="virtio-non-transitional" if confidential else "virtio")
        if confidential:
            _sub(nic, "driver", iommu="on")
    if spec.serial_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=spec.serial_log)
    else:
        serial = _sub(devices, "serial", type="null")
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    video = _sub(devices, "video")
    _sub(video, "model", type="none")
    _sub(devices, "memballoon", model="none")

    if spec.tee == "snp":
        ls = _sub(dom, "launchSecurity", type="sev-snp")
        if spec.kernel is not None:
            ls.set("kernelHashes", "yes")
        _sub(ls, "cbitpos", str(spec.snp_cbitpos))
        _sub(ls, "reducedPhysBits", str(SNP_REDUCED_PHYS_BITS))
        _sub(ls, "policy", f"0x{SNP_POLICY:08x}")
        _sub(ls, "hostData", base64.b64encode(bytes.fromhex(spec.host_data)).decode())
    elif spec.tee == "tdx":
        ls = _sub(dom, "launchSecurity", type="tdx")
        _sub(ls, "policy", f"0x{TDX_POLICY:08x}")
        _sub(ls, "mrConfigId", base64.b64encode(mrconfigid_for(spec.host_data)).decode())
        _sub(ls, "quoteGenerationService")
    if spec.network == "slirp":
        cmd = _sub(dom, f"{{{QEMU_NS}}}commandline")
        for arg in expected_slirp_args(spec.ssh_address, spec.ssh_port, confidential):
            _sub(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    elif spec.network != "passt":
        raise ValueError("network must be passt or slirp")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def volume_xml(name: str, *, capacity: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    """A storage volume (``storagePool.createXML``): the CVM's copy-on-write disk over the
    base image (`backing` = (path, format)), or the raw seed the controller uploads."""
    vol = ET.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(int(capacity)), unit="bytes")
    target = _sub(vol, "target")
    _sub(target, "format", type=fmt)
    _sub(_sub(target, "permissions"), "mode", "0600")
    if backing is not None:
        bs = _sub(vol, "backingStore")
        _sub(bs, "path", backing[0])
        _sub(bs, "format", type=backing[1])
    ET.indent(vol)
    return ET.tostring(vol, encoding="unicode") + "\n"


def canonical(xml_text: str) -> object:
    """A comparable form of an XML document: (tag, attributes, text, children), with
    whitespace-only text dropped: what the golden-file tests compare, so that indentation
    and attribute order do not matter but every element, attribute and value does."""

    def walk(el: ET.Element) -> object:
        text = (el.text or "").strip() or None
        return (el.tag, tuple(sorted(el.attrib.items())), text, tuple(walk(c) for c in el))

    return walk(ET.fromstring(xml_text))  # noqa: S314 (our own or libvirt's XML, no entities)
