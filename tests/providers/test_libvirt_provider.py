"""The libvirt provider without a libvirtd: URI rules (qemu+tls only; local URIs never in
an enclave), TLS credentials (sealed path, never printed), the create/inspect/delete flow
against an in-memory stand-in for libvirt-python's connection, and the evidence kinds
(the same configfs-tsm kinds as the qemu provider). The real libvirtd runs in the slow
test (test_libvirt_controller.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from provider_helpers import HOST_DATA

from duet.attestation.cvm_kinds import CvmKind, resolve_offer
from duet.client.cvm_checks import control_plane_checks
from duet.controller import errors
from duet.controller.providers_config import ProviderSetup, parse_credentials, sdk_credential
from duet.cvm import libvirt as lv
from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.guest.collect import collect_command
from duet.cvm.plan import make_provider, plan_for
from duet.cvm.qemu import QemuProvider
from duet.ledger import control_plane

CA = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nU0VDUkVULUtFWS1NQVRFUklBTA==\n-----END PRIVATE KEY-----\n"


# ---------------------------------------------------------------------- URIs


@pytest.mark.parametrize(("uri", "why"), [
    ("qemu+ssh://root@host/system", "spawns ssh"),
    ("qemu+libssh2://host/system", "known_hosts"),
    ("qemu+ext://host/system?command=/bin/x", "external program"),
    ("qemu+tcp://host/system", "unencrypted"),
    ("qemu+unix:///system", "untrusted host"),
    ("qemu:///embed?root=/tmp/x", "untrusted host"),
    ("xen+tls://host/", "TLS transport only"),
    ("test:///default", "TLS transport only"),
    ("qemu+tls://host/system?no_verify=1", "no parameters"),
    ("qemu+tls://host/system?pkipath=/etc/x", "no parameters"),
    ("qemu+tls://user@host/system", "no parameters"),
    ("qemu+tls:///system", "host name"),
    ("qemu+tls://host/embed", "/system or /session"),
])
def test_refused_uris_say_why(uri: str, why: str) -> None:
    with pytest.raises(lv.LibvirtConfigError) as info:
        lv.check_uri(uri, in_enclave=False)
    assert why in str(info.value)


def test_tls_uri_is_accepted_and_local_only_outside_an_enclave() -> None:
    assert lv.check_uri("qemu+tls://kvm1.example.org/system", in_enclave=True)
    assert lv.check_uri("qemu+tls://kvm1.example.org:16514/system", in_enclave=False)
    for uri in lv.LOCAL_URIS:
        assert lv.check_uri(uri, in_enclave=False) == uri
        with pytest.raises(lv.LibvirtConfigError) as info:
            lv.check_uri(uri, in_enclave=True)
        assert "--tee gramine" in str(info.value) and "outside an enclave" in str(info.value)


def test_enclave_controller_refuses_a_local_libvirt(tmp_path: Path) -> None:
    from duet.controller.state import StateStore
    from duet.controller.statekey import StateKey

    state = StateStore(tmp_path / "state")
    state.cipher = StateKey.generate()  # as build_controller opens it before the providers
    setup = ProviderSetup(state, in_enclave=True)
    with pytest.raises(errors.InvalidRequest) as info:
        setup.build({"libvirt": {"uri": "qemu:///system"}})
    assert "untrusted" in str(info.value)
    with pytest.raises(errors.InvalidRequest):
        setup.build({"libvirt": {"uri": "qemu+ssh://host/system"}})
    providers, _ = setup.build({"libvirt": {"uri": "qemu+tls://kvm1.example.org/system"}})
    assert isinstance(providers["libvirt"], lv.LibvirtProvider)
    # outside an enclave the local URI builds (tests)
    state2 = StateStore(tmp_path / "state2")
    state2.cipher = StateKey.generate()
    outside = ProviderSetup(state2, in_enclave=False)
    assert "libvirt" in outside.build({"libvirt": {"uri": "qemu:///system"}})[0]


# ---------------------------------------------------------------------- credentials


def test_credentials_file_and_object_never_show_the_key() -> None:
    doc = json.dumps({"ca_cert": CA, "client_cert": CERT, "client_key": KEY}).encode()
    fields = parse_credentials("libvirt", doc)
    creds = sdk_credential("libvirt", fields)
    assert isinstance(creds, lv.TlsCredentials)
    assert "SECRET" not in repr(creds) and "U0VDUkVU" not in repr(creds)
    with pytest.raises(errors.InvalidRequest) as info:
        parse_credentials("libvirt", json.dumps({"ca_cert": CA, "client_cert": CERT, "client_key": KEY,
                                                 "extra": "x"}).encode())
    assert "U0VDUkVU" not in str(info.value)
    with pytest.raises(lv.LibvirtConfigError) as bad:
        lv.TlsCredentials.from_fields({"ca_cert": CA, "client_cert": CERT, "client_key": "U0VDUkVU not pem"})
    assert "U0VDUkVU" not in str(bad.value)


def test_pki_dir_is_private_and_gone_after_connecting() -> None:
    creds = lv.TlsCredentials(CA, CERT, KEY)
    with lv.pki_dir(creds) as d:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert sorted(os.listdir(d)) == ["cacert.pem", "clientcert.pem", "clientkey.pem"]
        assert stat.S_IMODE(os.stat(Path(d) / "clientkey.pem").st_mode) == 0o600
        assert (Path(d) / "clientkey.pem").read_text() == KEY
    assert not os.path.exists(d)


def test_tls_without_credentials_is_a_config_error() -> None:
    try:
        lv._open_libvirt("qemu+tls://kvm1.example.org/system", None)
    except lv.LibvirtConfigError as exc:
        assert "credentials set --provider libvirt" in str(exc)
    except ProvisioningFailed as exc:  # libvirt-python not installed here
        assert "libvirt-python" in str(exc)
    else:
        raise AssertionError("connected without credentials")


async def test_a_host_name_needs_an_address_to_bind(controller_key: str) -> None:
    p = lv.LibvirtProvider("qemu+tls://kvm1.example.org/system", connect=lambda *_: FakeConn(FakeHost()))
    with pytest.raises(lv.LibvirtConfigError, match="ssh_listen"):
        await p.create("c9", authorized_key=controller_key, spec={"tee": "none", "host_data": HOST_DATA})
    with pytest.raises(lv.LibvirtConfigError, match="IP address"):
        lv.LibvirtProvider("qemu+tls://kvm1.example.org/system", ssh_listen="kvm1.example.org")
    bound = lv.LibvirtProvider("qemu+tls://kvm1.example.org/system", ssh_listen="192.0.2.10")
    assert (bound.ssh_address, bound.ssh_listen) == ("kvm1.example.org", "192.0.2.10")


def test_make_provider_rejects_unknown_keys_and_foreign_credentials() -> None:
    with pytest.raises(ProvisioningFailed):
        make_provider("libvirt", {"uri": "qemu+tls://h/system", "imgae": "/x"})
    with pytest.raises(ProvisioningFailed):
        make_provider("libvirt", {"pool": "default"})
    with pytest.raises(ProvisioningFailed):
        make_provider("libvirt", {"uri": "qemu+tls://h/system"}, credential=object())


# ---------------------------------------------------------------------- evidence kinds


def test_evidence_kinds_are_the_qemu_providers_configfs_tsm_kinds() -> None:
    assert dict(lv.LibvirtProvider.tees) == dict(QemuProvider.tees)
    assert resolve_offer("libvirt", lv.LibvirtProvider.tees, "snp")[1].evidence_kind == CvmKind.SNP
    assert resolve_offer("libvirt", lv.LibvirtProvider.tees, "tdx")[1].evidence_kind == CvmKind.TDX
    assert resolve_offer("libvirt", lv.LibvirtProvider.tees, None)[0] == "snp"
    for kind in ("snp", "tdx"):
        assert "/sys/kernel/config/tsm/report" in collect_command(kind, b"\0" * 32)
    assert "libvirt" in control_plane.JUDGES


# ---------------------------------------------------------------------- a stand-in libvirt


class FakeError(Exception):
    def __init__(self, code: int, msg: str = "") -> None:
        super().__init__(msg or f"error {code}")
        self.code = code

    def get_error_code(self) -> int:
        return self.code


class FakeVol:
    def __init__(self, pool: FakePool, xml: str) -> None:
        root = ET.fromstring(xml)
        self.pool, self.name = pool, root.findtext("name") or ""
        self.xml, self.data = xml, b""

    def path(self) -> str:
        return f"{self.pool.dir}/{self.name}"

    def info(self) -> list[int]:
        return [0, 3 << 30, 0]

    def upload(self, stream: FakeStream, offset: int, length: int, flags: int) -> None:
        stream.target = self

    def delete(self, flags: int) -> None:
        del self.pool.vols[self.name]


class FakeStream:
    target: FakeVol | None = None

    def send(self, data: bytes) -> int:
        assert self.target is not None
        self.target.data += data
        return len(data)

    def finish(self) -> None:
        pass


class FakePool:
    def __init__(self, d: str) -> None:
        self.dir, self.vols = d, {}  # type: ignore[var-annotated]

    def refresh(self, flags: int) -> None:
        pass

    def createXML(self, xml: str, flags: int) -> FakeVol:
        vol = FakeVol(self, xml)
        self.vols[vol.name] = vol
        return vol

    def storageVolLookupByName(self, name: str) -> FakeVol:
        if name not in self.vols:
            raise FakeError(lv.VIR_ERR_NO_STORAGE_VOL)
        return self.vols[name]  # type: ignore[no-any-return]


class FakeDomain:
    def __init__(self, host: FakeHost, xml: str) -> None:
        self.host, self.xml, self.active = host, xml, False
        self.next_boot: str | None = None  # a persistent definition other than the live one
        self.name = ET.fromstring(xml).findtext("name") or ""

    def create(self) -> None:
        self.active = True

    def isActive(self) -> bool:
        return self.active

    def isPersistent(self) -> bool:
        return True

    def XMLDesc(self, flags: int) -> str:
        if flags & lv.VIR_DOMAIN_XML_INACTIVE and self.next_boot is not None:
            return self.next_boot
        return self.xml

    def UUIDString(self) -> str:
        return "6f1c2a3e-0000-4000-8000-000000000001"

    def destroy(self) -> None:
        self.active = False

    def undefineFlags(self, flags: int) -> None:
        del self.host.domains[self.name]

    def undefine(self) -> None:
        del self.host.domains[self.name]


class FakeHost:
    """What a libvirtd holds: one pool, a base image volume, domains."""

    def __init__(self, sectypes: tuple[str, ...] = ()) -> None:
        self.pool = FakePool("/var/lib/libvirt/images")
        self.domains: dict[str, FakeDomain] = {}
        self.sectypes = sectypes
        self.connects: list[tuple[str, Any]] = []


class FakeConn:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def close(self) -> None:
        pass

    def storagePoolLookupByName(self, name: str) -> FakePool:
        return self.host.pool

    def storageVolLookupByPath(self, path: str) -> FakeVol:
        if path != "/var/lib/libvirt/images/base.qcow2":
            raise FakeError(50)
        return FakeVol(self.host.pool, "<volume><name>base.qcow2</name></volume>")

    def newStream(self, flags: int) -> FakeStream:
        return FakeStream()

    def defineXMLFlags(self, xml: str, flags: int) -> FakeDomain:
        assert flags == lv.VIR_DOMAIN_DEFINE_VALIDATE
        dom = FakeDomain(self.host, xml)
        self.host.domains[dom.name] = dom
        return dom

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.host.domains:
            raise FakeError(lv.VIR_ERR_NO_DOMAIN)
        return self.host.domains[name]

    def listAllDomains(self, flags: int) -> list[FakeDomain]:
        return list(self.host.domains.values())

    def getDomainCapabilities(self, *args: object) -> str:
        values = "".join(f"<value>{t}</value>" for t in self.host.sectypes)
        return (f"<domainCapabilities><features><launchSecurity supported='yes'><enum name='sectype'>{values}"
                "</enum></launchSecurity></features></domainCapabilities>")

    def getLibVersion(self) -> int:
        return 10005000

    def getVersion(self) -> int:
        return 9001000


@pytest.fixture
async def ssh_banner() -> AsyncIterator[int]:
    """Something that speaks SSH's first line, standing in for the guest's forwarded sshd."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2 stand-in\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def provider(host: FakeHost, port: int, **kw: Any) -> lv.LibvirtProvider:
    def connect(uri: str, creds: Any) -> FakeConn:
        host.connects.append((uri, creds))
        return FakeConn(host)

    return lv.LibvirtProvider("qemu+tls://kvm1.example.org/system", credentials=lv.TlsCredentials(CA, CERT, KEY),
                              image="/var/lib/libvirt/images/base.qcow2", ssh_address="127.0.0.1",
                              ssh_ports=(port, port), connect=connect, boot_timeout_s=20, **kw)


async def test_create_inspect_delete_against_a_stand_in(ssh_banner: int, controller_key: str) -> None:
    host = FakeHost()
    p = provider(host, ssh_banner, accel="tcg")
    prov = await p.create("c1", authorized_key=controller_key, spec={"tee": "none", "host_data": HOST_DATA})
    assert (prov.host, prov.port, prov.user) == ("127.0.0.1", ssh_banner, "duet")
    assert prov.instance_id == "libvirt-6f1c2a3e-0000-4000-8000-000000000001"
    launch = prov.launch
    json.dumps(launch)
    assert launch["evidence"] == "absent" and launch["tee_effective"] == "none"
    assert "PRIVATE KEY" not in json.dumps(launch) and "U0VDUkVU" not in json.dumps(launch)
    assert all(creds.client_key == KEY for _, creds in host.connects)

    # volumes: a qcow2 overlay over the base image, and the uploaded seed (an ISO labelled cidata)
    disk = host.pool.vols["duet-c1-disk.qcow2"]
    assert ET.fromstring(disk.xml).findtext("backingStore/path") == "/var/lib/libvirt/images/base.qcow2"
    seed = host.pool.vols["duet-c1-seed.iso"]
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(seed.data))
    assert iso.pvd.volume_identifier.decode().strip() == "cidata"
    iso.close()

    dom = host.domains["duet-c1"]
    assert dom.active and launch["domain_xml"] == dom.xml
    root = ET.fromstring(dom.xml)
    assert [d.find("source").get("file") for d in root.findall("devices/disk")] == [  # type: ignore[union-attr]
        disk.path(), seed.path()]
    assert root.get("type") == "qemu"  # accel tcg

    seen = await p.inspect("c1")
    verdicts = control_plane.judge(seen["facts"])
    assert all(ok for _, ok, _ in verdicts), verdicts
    assert len(seen["model_sha256"]) == 64

    # the administrator attaches a disk behind the controller's back
    dom.xml = dom.xml.replace("</devices>", "<disk type='file' device='disk'><source file='/srv/x.img'/>"
                              "<target dev='vdc' bus='virtio'/></disk></devices>")
    bad = {n for n, ok, _ in control_plane.judge((await p.inspect("c1"))["facts"]) if not ok}
    assert bad == {"only_provisioned_disks"}

    assert await p.status("c1") == "running"
    dom.active = False
    assert await p.status("c1") == "stopped"
    again = await p.ensure_running("c1")
    assert again.launch["restarted"] is True and again.port == ssh_banner and dom.active

    await p.delete("c1")
    assert await p.status("c1") == "missing"
    assert host.pool.vols == {} and host.domains == {}
    with pytest.raises(CvmNotFound):
        await p.inspect("c1")


async def test_tee_the_host_cannot_launch_is_refused(ssh_banner: int, controller_key: str) -> None:
    host = FakeHost(sectypes=("sev",))
    p = provider(host, ssh_banner, firmware="/usr/share/ovmf/OVMF.amdsev.fd")
    with pytest.raises(ProvisioningFailed) as info:
        await p.create("c2", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    assert "cannot launch snp" in str(info.value)
    assert host.domains == {} and host.pool.vols == {}

    snp_host = FakeHost(sectypes=("sev", "sev-snp"))
    p = provider(snp_host, ssh_banner, firmware="/usr/share/ovmf/OVMF.amdsev.fd")
    prov = await p.create("c3", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    ls = ET.fromstring(snp_host.domains["duet-c3"].xml).find("launchSecurity")
    assert ls is not None and ls.get("type") == "sev-snp"
    assert prov.launch["host_data"] == HOST_DATA and prov.launch["tee_effective"] == "snp"
    await p.delete("c3")


async def test_rewritten_metadata_does_not_hide_a_next_boot_without_the_tee(ssh_banner: int,
                                                                            controller_key: str) -> None:
    """The libvirtd admin drops SNP from the definition the next boot uses and, to match,
    rewrites duet's metadata (``virsh metadata --live --config``) to say no TEE was asked
    for: the running guest's launch security, which no one can change in place, still
    says what the next boot owes."""
    host = FakeHost(sectypes=("sev-snp",))
    p = provider(host, ssh_banner, firmware="/usr/share/ovmf/OVMF.amdsev.fd")
    await p.create("c5", authorized_key=controller_key, spec={"tee": "snp", "host_data": HOST_DATA})
    dom = host.domains["duet-c5"]
    assert all(ok for _, ok, _ in control_plane.judge((await p.inspect("c5"))["facts"]))
    dom.xml = dom.xml.replace('tee="snp"', 'tee="none"')
    root = ET.fromstring(dom.xml)
    root.remove(root.find("launchSecurity"))  # type: ignore[arg-type]
    dom.next_boot = ET.tostring(root, encoding="unicode")
    verdicts = {n: (ok, why) for n, ok, why in control_plane.judge((await p.inspect("c5"))["facts"])}
    assert verdicts["confidential_launch"][0] is False and "next boot" in verdicts["confidential_launch"][1]
    # The admin then restarts the guest from that definition: nothing running names a TEE
    # any more, and the model alone reads as a plain VM that asked for none. The user's
    # check holds it to the TEE the controller logged at provisioning.
    dom.xml = dom.next_boot
    facts = (await p.inspect("c5"))["facts"]
    assert all(ok for _, ok, _ in control_plane.judge(facts))
    log = [{"type": "genesis", "provider": "libvirt"},
           {"type": "provisioned", "launch": {"provider": "libvirt", "tee_effective": "snp"}},
           {"type": "control_plane", "facts": facts}]
    (check,) = control_plane_checks(log)
    assert not check.ok and "judged as a none launch, but the CVM was provisioned as snp" in check.detail
    await p.delete("c5")


async def test_a_failed_boot_leaves_nothing_behind(controller_key: str) -> None:
    host = FakeHost()
    p = provider(host, 1024, accel="tcg")  # nothing listens on 127.0.0.1:1024
    p.boot_timeout_s = 0.5
    with pytest.raises(ProvisioningFailed):
        await p.create("c4", authorized_key=controller_key, spec={"tee": "none", "host_data": HOST_DATA})
    assert host.domains == {} and host.pool.vols == {}


def test_plan_needs_no_libvirt(controller_key: str) -> None:
    plan = plan_for("libvirt", tee="tdx", spec={}, authorized_key=controller_key,
                    config={"uri": "qemu+tls://kvm1.example.org/system", "firmware": "/usr/share/ovmf/OVMF.tdx.fd"})
    json.dumps(plan)
    assert "<launchSecurity type=\"tdx\">" in str(plan["domain_xml"])
    assert plan["ssh"] == {"host": "kvm1.example.org", "port": "<port>", "forwarded_from": "<ssh_listen>"}
    assert "libvirt >= 11.6" in str(plan["schema"])
