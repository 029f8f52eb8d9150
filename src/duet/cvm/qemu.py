"""The `qemu` provider: on-premises CVMs run by ``qemu-system-x86_64`` on this host.

Each CVM boots a copy-on-write overlay of a cloud image together with a cloud-init
NoCloud seed (an ISO 9660 volume labelled ``cidata``) that carries the controller's key
and the lockdown configuration of `duet.cvm.cloudinit`. SSH is forwarded from
``127.0.0.1:<port>`` on the host (user-mode networking), so nothing else on the network
reaches the guest.

Confidential launch (``spec.tee``):

* ``snp`` — a ``sev-snp-guest`` object with ``host-data`` set to the controller's per-CVM
  value (base64 of the 32 bytes; the SNP report then carries it as HOST_DATA), guest
  memory in a ``memory-backend-memfd``, ``kernel-hashes=on`` for direct kernel boot,
  and the expected launch measurement computed with `sev-snp-measure` (when the OVMF
  image is configured) and recorded in the launch parameters;
* ``tdx`` — a ``tdx-guest`` object with ``mrconfigid`` = host_data ‖ 16 zero bytes (48
  bytes, base64), so the TD quote's MRCONFIGID names the instance;
* ``none`` — plain KVM (or TCG without /dev/kvm); evidence is then marked absent.

If the host cannot launch the requested TEE (no ``kvm_amd sev_snp`` / ``kvm_intel tdx``),
`create` refuses, unless the config says ``allow_no_tee: true``; then it launches plainly
and the log says so (``tee_effective: none``, ``evidence: absent``). A plan always shows
the confidential command line that was asked for, plus what this host supports.

State lives in ``base_dir/<cvm_id>/`` (0700): ``state.json``, ``disk.qcow2`` (overlay),
``seed.iso``, ``qemu.pid``, ``serial.log`` (guest console output, host-side only: serial
logins are masked in the guest).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from duet.attestation.binding import mrconfigid_for
from duet.attestation.cvm_kinds import CvmKind, InstanceBinding, TeeOffer
from duet.cvm import cloudinit
from duet.cvm.clouds.common import host_data_of, resource_prefix, spec_str
from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.provider import Provisioned

QEMU_TEES = ("snp", "tdx", "none")
#: What an on-premises hypervisor (qemu, libvirt) offers: it sets the per-CVM value itself
#: (SNP HOST_DATA, TDX MRCONFIGID), and the guest's evidence comes through configfs-tsm.
#: `none` is a plain VM, allowed only with `allow_no_tee`.
ON_PREM_TEES: Mapping[str, TeeOffer] = {
    "snp": TeeOffer(CvmKind.SNP, InstanceBinding.HOST_DATA),
    "tdx": TeeOffer(CvmKind.TDX, InstanceBinding.MRCONFIGID),
    "none": TeeOffer(CvmKind.NONE, InstanceBinding.NONE),
}
SNP_POLICY = 0x30000
SNP_CPU = "EPYC-v4"
_STATE_VERSION = 1
_CVM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def host_tee_support() -> dict[str, bool]:
    """What this host can launch: KVM at all, SEV-SNP guests, TDX guests."""

    def flag(path: str) -> bool:
        try:
            return Path(path).read_text().strip() in ("Y", "1", "y")
        except OSError:
            return False

    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return {
        "kvm": kvm,
        "snp": kvm and flag("/sys/module/kvm_amd/parameters/sev_snp"),
        "tdx": kvm and flag("/sys/module/kvm_intel/parameters/tdx"),
    }


def seed_files(cvm_id: str, authorized_key: str, user: str) -> dict[str, str]:
    """The NoCloud seed's files (name → text).

    No ``network-config``: cloud-init's fallback (DHCP on the first NIC) works with every
    network renderer and interface naming scheme, unlike a v2 ``match`` (which the ENI
    renderer of Debian images cannot express)."""
    return {
        "meta-data": cloudinit.meta_data(f"duet-{cvm_id}", resource_prefix(cvm_id, max_len=63)),
        "user-data": cloudinit.user_data(authorized_key, cloud="qemu", user=user),
    }


def build_seed_iso(files: Mapping[str, str], dest: Path) -> None:
    """Write an ISO 9660 (Joliet + Rock Ridge) volume labelled ``cidata`` holding `files`.

    Uses pycdlib (pure Python) when installed, else genisoimage / mkisofs / xorriso."""
    try:
        import pycdlib

        have_pycdlib = True
    except ImportError:
        have_pycdlib = False
    if have_pycdlib:
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
        for i, (name, text) in enumerate(sorted(files.items())):
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name, joliet_path=f"/{name}")
        iso.write(str(dest))
        iso.close()
        return
    tool = next((t for t in ("genisoimage", "mkisofs", "xorrisofs") if shutil.which(t)), None)
    if tool is None:
        raise ProvisioningFailed("building the cloud-init seed needs pycdlib (pip install duet[qemu]) or genisoimage")
    tmp = dest.parent / "seed.d"
    tmp.mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp / name).write_text(text)
    subprocess.run([tool, "-quiet", "-output", str(dest), "-volid", "cidata", "-joliet", "-rock",
                    *[str(tmp / n) for n in sorted(files)]], check=True, stdin=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _State:
    version: int
    cvm_id: str
    instance_id: str
    port: int
    user: str
    argv: list[str]
    tee: str
    created_at: float


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def speaks_ssh(host: str, port: int) -> bool:
    """Whether an SSH server's banner comes back on host:port. User-mode networking (slirp,
    passt) accepts TCP before the guest listens, so a connection alone proves nothing."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        try:
            banner = await asyncio.wait_for(reader.readline(), 10.0)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return banner.startswith(b"SSH-")


class QemuProvider:
    """CVMs as qemu-system-x86_64 processes on this host.

    Config (`make_provider("qemu", config)`): ``base_dir`` (required), ``image`` (base
    disk image; qcow2 or raw), ``image_format`` (auto from the suffix), ``kernel`` /
    ``initrd`` / ``append`` (direct kernel boot, measured with SNP), ``ovmf`` (firmware;
    required for SNP/TDX), ``qemu`` (binary), ``memory_mb`` (2048), ``vcpus`` (2),
    ``accel`` (``auto``|``kvm``|``tcg``), ``allow_no_tee`` (false), ``boot_timeout_s``
    (600), ``admin_user`` (``duet``).
    """

    name = "qemu"
    tees: ClassVar[Mapping[str, TeeOffer]] = ON_PREM_TEES

    def __init__(
        self,
        base_dir: Path | str,
        *,
        image: Path | str | None = None,
        image_format: str | None = None,
        kernel: Path | str | None = None,
        initrd: Path | str | None = None,
        append: str | None = None,
        ovmf: Path | str | None = None,
        qemu: str = "qemu-system-x86_64",
        memory_mb: int = 2048,
        vcpus: int = 2,
        accel: str = "auto",
        allow_no_tee: bool = False,
        boot_timeout_s: float = 600.0,
        admin_user: str = cloudinit.DEFAULT_USER,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.image = Path(image).absolute() if image else None
        self.image_format = image_format or (
            "qcow2" if self.image is not None and self.image.suffix in (".qcow2", ".img") else "raw"
        )
        self.kernel = Path(kernel).absolute() if kernel else None
        self.initrd = Path(initrd).absolute() if initrd else None
        self.append = append
        self.ovmf = Path(ovmf).absolute() if ovmf else None
        self.qemu = qemu
        self.memory_mb = int(memory_mb)
        self.vcpus = int(vcpus)
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError("accel must be auto, kvm or tcg")
        self.accel = accel
        self.allow_no_tee = bool(allow_no_tee)
        self.boot_timeout_s = float(boot_timeout_s)
        self.admin_user = admin_user
        self._locks: dict[str, asyncio.Lock] = {}

    def cvm_dir(self, cvm_id: str) -> Path:
        if not _CVM_ID_RE.match(cvm_id):
            raise ProvisioningFailed(f"invalid CVM id {cvm_id!r}")
        d = self.base_dir / cvm_id
        if "," in str(d) or "=" in str(d):  # paths go into qemu's comma-separated options
            raise ProvisioningFailed(f"qemu: {d} has characters qemu options cannot take")
        return d

    # ------------------------------------------------------------------ command line

    def _tee(self, spec: Mapping[str, object]) -> str:
        tee = (spec_str(spec, "tee", default="snp") or "snp").lower()
        if tee not in QEMU_TEES:
            raise ProvisioningFailed(f"unsupported TEE {tee!r} for qemu (want one of {', '.join(QEMU_TEES)})")
        return tee

    def _argv(self, cvm_id: str, d: Path, *, tee: str, host_data: str, port: int | str, accel: str,
              spec: Mapping[str, object]) -> list[str]:
        mem = int(str(spec_str(spec, "memory_mb", default=str(self.memory_mb))))
        vcpus = int(str(spec_str(spec, "vcpus", default=str(self.vcpus))))
        machine = "q35"
        argv: list[str] = [self.qemu, "-name", f"duet-{cvm_id},process=duet-{cvm_id}", "-nodefaults",
                           "-no-user-config", "-display", "none", "-vga", "none"]
        virtio_opts = ""
        if tee == "snp":
            machine += ",confidential-guest-support=sev0,memory-backend=ram0"
            hd = base64.b64encode(bytes.fromhex(host_data)).decode()
            snp = f"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy={SNP_POLICY:#x},host-data={hd}"
            if self.kernel is not None:
                snp += ",kernel-hashes=on"
            argv += ["-object", f"memory-backend-memfd,id=ram0,size={mem}M,share=true,prealloc=false",
                     "-object", snp, "-cpu", SNP_CPU]
            virtio_opts = ",disable-legacy=on,iommu_platform=true"
        elif tee == "tdx":
            machine += ",kernel-irqchip=split,confidential-guest-support=tdx0"
            mrc = base64.b64encode(mrconfigid_for(host_data)).decode()
            argv += ["-object", json.dumps({"qom-type": "tdx-guest", "id": "tdx0", "mrconfigid": mrc},
                                           separators=(",", ":")), "-cpu", "host"]
            virtio_opts = ",disable-legacy=on,iommu_platform=true"
        else:
            argv += ["-cpu", "host" if accel == "kvm" else "max"]
        argv += ["-machine", machine, "-accel", accel, "-m", f"{mem}M", "-smp", str(vcpus)]
        if self.ovmf is not None:
            argv += ["-bios", str(self.ovmf)]
        elif tee != "none":
            argv += ["-bios", "<ovmf: configure `ovmf` (AmdSev / TDVF build)>"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            if self.append:
                argv += ["-append", self.append]
        argv += [
            "-drive", f"file={d / 'disk.qcow2'},if=none,id=disk0,format=qcow2",
            "-device", f"virtio-blk-pci,drive=disk0{virtio_opts}",
            "-drive", f"file={d / 'seed.iso'},if=none,id=seed0,format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=seed0{virtio_opts}",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", f"virtio-net-pci,netdev=net0{virtio_opts}",
            "-serial", f"file:{d / 'serial.log'}",
            "-pidfile", str(d / "qemu.pid"),
            "-daemonize",
        ]
        return argv

    def _measurement(self, tee: str, vcpus: int) -> dict[str, object]:
        if tee == "tdx":
            return {"value": None, "why": "MRTD/RTMRs are not computed here (use a TDX measurement tool "
                                          "on the TDVF and kernel); the quote is recorded as evidence"}
        if tee != "snp":
            return {"value": None, "why": "no TEE: no launch measurement"}
        if self.ovmf is None:
            return {"value": None, "why": "no OVMF configured, so the expected measurement cannot be computed"}
        try:
            from sevsnpmeasure import guest, vcpu_types  # type: ignore[import-untyped]
            from sevsnpmeasure.sev_mode import SevMode  # type: ignore[import-untyped]
        except ImportError:
            return {"value": None, "why": "sev-snp-measure is not installed (pip install duet[qemu])"}
        try:
            digest = guest.calc_launch_digest(
                SevMode.SEV_SNP, vcpus, vcpu_types.CPU_SIGS[SNP_CPU], str(self.ovmf),
                str(self.kernel) if self.kernel else None, str(self.initrd) if self.initrd else None,
                self.append or "", 0x1,
            )
        except Exception as exc:
            return {"value": None, "why": f"sev-snp-measure failed: {exc}"}
        return {"value": digest.hex(), "tool": "sev-snp-measure", "vcpus": vcpus, "vcpu_type": SNP_CPU,
                "guest_features": 1}

    def _accel(self, tee: str, support: Mapping[str, bool]) -> str:
        if self.accel != "auto":
            return self.accel
        return "kvm" if support["kvm"] or tee != "none" else "tcg"

    def _build(self, cvm_id: str, authorized_key: str, spec: Mapping[str, object], port: int | str
               ) -> dict[str, object]:
        tee = self._tee(spec)
        host_data = host_data_of(spec)
        support = host_tee_support()
        effective = tee
        notes: list[str] = []
        if tee != "none" and not support[tee]:
            notes.append(f"this host cannot launch {tee} guests")
            if self.allow_no_tee:
                effective = "none"
                notes.append("allow_no_tee: launching without a TEE; evidence absent")
        accel = self._accel(effective, support)
        d = self.cvm_dir(cvm_id)
        try:
            files = seed_files(cvm_id, authorized_key, self.admin_user)
        except ValueError as exc:
            raise ProvisioningFailed(str(exc)) from None
        vcpus = int(str(spec_str(spec, "vcpus", default=str(self.vcpus))))
        argv = self._argv(cvm_id, d, tee=effective, host_data=host_data, port=port, accel=accel, spec=spec)
        return {
            "provider": self.name,
            "cvm_id": cvm_id,
            "tee": tee,
            "tee_effective": effective,
            "host_supports": support,
            "notes": notes,
            "accel": accel,
            "host_data": host_data,
            "host_data_binding": {"snp": "SNP HOST_DATA (sev-snp-guest host-data)",
                                  "tdx": "TDX MRCONFIGID = host_data || 16 zero bytes",
                                  "none": "none: no TEE, recorded in the launch parameters only"}[effective],
            "evidence": "absent" if effective == "none" else f"{effective} hardware report",
            "expected_measurement": self._measurement(effective, vcpus),
            "base_image": {"path": str(self.image) if self.image else None, "format": self.image_format},
            "direct_boot": {"kernel": str(self.kernel) if self.kernel else None,
                            "initrd": str(self.initrd) if self.initrd else None, "append": self.append},
            "argv": argv,
            "seed": {"format": "iso9660", "volume_label": "cidata", "files": files},
            "user": self.admin_user,
            "ssh": {"host": "127.0.0.1", "port": port},
        }

    def plan(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> dict[str, object]:
        """The exact qemu command line and seed contents `create` would use (the SSH port
        is chosen at create time unless ``spec.ssh_port`` is given)."""
        port = spec_str(spec, "ssh_port", default="<port>") or "<port>"
        return self._build(cvm_id, authorized_key, spec, port)

    # ------------------------------------------------------------------ state

    def _lock(self, cvm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cvm_id, asyncio.Lock())

    def _load(self, cvm_id: str) -> _State:
        try:
            raw = json.loads((self.cvm_dir(cvm_id) / "state.json").read_text())
        except FileNotFoundError:
            raise CvmNotFound(f"no qemu CVM {cvm_id!r} under {self.base_dir}") from None
        return _State(**raw)

    def _save(self, st: _State) -> None:
        d = self.cvm_dir(st.cvm_id)
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(st), indent=2, sort_keys=True))
        os.replace(tmp, d / "state.json")

    def _pid(self, cvm_id: str) -> int | None:
        d = self.cvm_dir(cvm_id)
        try:
            pid = int((d / "qemu.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except (OSError, ValueError):
            return None
        if stat.rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
            return None
        return pid if str(d).encode() in cmdline else None

    # ------------------------------------------------------------------ processes

    @staticmethod
    async def _run(argv: list[str], timeout_s: float = 120.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProvisioningFailed(f"{argv[0]} timed out") from None
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def _make_disk(self, d: Path) -> None:
        if self.image is None:
            raise ProvisioningFailed("qemu: no base image configured (config `image`)")
        if not self.image.exists():
            raise ProvisioningFailed(f"qemu: base image {self.image} does not exist")
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise ProvisioningFailed("qemu-img not found (apt install qemu-utils)")
        rc, out = await self._run([qemu_img, "create", "-q", "-f", "qcow2", "-F", self.image_format,
                                   "-b", str(self.image), str(d / "disk.qcow2")])
        if rc != 0:
            raise ProvisioningFailed(f"qemu-img create failed: {out}")

    async def _wait_ssh(self, port: int, cvm_id: str, deadline: float) -> None:
        """Wait until something speaks SSH on the forwarded port (slirp accepts TCP
        connections before the guest listens, so a banner is required)."""
        while time.monotonic() < deadline:
            if self._pid(cvm_id) is None:
                raise ProvisioningFailed("qemu exited during boot (see serial.log)")
            if await speaks_ssh("127.0.0.1", port):
                return
            await asyncio.sleep(2.0)
        raise ProvisioningFailed("the guest's SSH server did not come up in time")

    async def _start(self, st: _State) -> None:
        d = self.cvm_dir(st.cvm_id)
        (d / "qemu.pid").unlink(missing_ok=True)
        if shutil.which(st.argv[0]) is None:
            raise ProvisioningFailed(f"{st.argv[0]} not found (apt install qemu-system-x86)")
        rc, out = await self._run(st.argv, timeout_s=60.0)
        if rc != 0:
            raise ProvisioningFailed(f"qemu failed to start: {out[-2000:]}")

    async def _stop(self, cvm_id: str) -> None:
        pid = self._pid(cvm_id)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if self._pid(cvm_id) is None:
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if self._pid(cvm_id) is None:
                return
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ Provider API

    async def create(self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]) -> Provisioned:
        port = int(str(spec_str(spec, "ssh_port", default=str(_free_port()))))
        plan = self._build(cvm_id, authorized_key, spec, port)
        if plan["notes"] and not self.allow_no_tee:
            raise ProvisioningFailed(f"qemu: {'; '.join(plan['notes'])} (set allow_no_tee to launch "  # type: ignore[arg-type]
                                     "without a TEE, evidence then absent)")
        if plan["tee_effective"] != "none" and self.ovmf is None:
            raise ProvisioningFailed("qemu: a confidential launch needs `ovmf` (AmdSev OVMF or TDVF)")
        d = self.cvm_dir(cvm_id)
        async with self._lock(cvm_id):
            self.base_dir.mkdir(parents=True, exist_ok=True)
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                raise ProvisioningFailed(f"CVM {cvm_id} already exists in {self.base_dir}") from None
            st = _State(version=_STATE_VERSION, cvm_id=cvm_id, instance_id=f"qemu-{uuid.uuid4().hex}", port=port,
                        user=self.admin_user, argv=list(plan["argv"]),  # type: ignore[call-overload]
                        tee=str(plan["tee_effective"]), created_at=time.time())
            try:
                self._save(st)
                await self._make_disk(d)
                build_seed_iso(plan["seed"]["files"], d / "seed.iso")  # type: ignore[index]
                await self._start(st)
                await self._wait_ssh(port, cvm_id, time.monotonic() + self.boot_timeout_s)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._stop(cvm_id)
                shutil.rmtree(d, ignore_errors=True)
                if isinstance(exc, ProvisioningFailed):
                    raise
                if isinstance(exc, Exception):
                    raise ProvisioningFailed(f"qemu: creating CVM {cvm_id}: {exc}") from exc
                raise
        launch = {k: v for k, v in plan.items()}
        launch["instance_id"] = st.instance_id
        return Provisioned(instance_id=st.instance_id, host="127.0.0.1", port=port, user=st.user, launch=launch)

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        async with self._lock(cvm_id):
            st = self._load(cvm_id)
            restarted = False
            if self._pid(cvm_id) is None:
                await self._start(st)
                await self._wait_ssh(st.port, cvm_id, time.monotonic() + self.boot_timeout_s)
                restarted = True
            launch: dict[str, object] = {"provider": self.name, "instance_id": st.instance_id, "argv": st.argv,
                                         "tee_effective": st.tee, "restarted": restarted}
            return Provisioned(instance_id=st.instance_id, host="127.0.0.1", port=st.port, user=st.user,
                               launch=launch)

    async def status(self, cvm_id: str) -> str:
        if not (self.cvm_dir(cvm_id) / "state.json").exists():
            return "missing"
        return "running" if self._pid(cvm_id) is not None else "stopped"

    async def delete(self, cvm_id: str) -> None:
        async with self._lock(cvm_id):
            d = self.cvm_dir(cvm_id)
            if not d.exists():
                return
            await self._stop(cvm_id)
            shutil.rmtree(d, ignore_errors=True)
        self._locks.pop(cvm_id, None)


def config_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keywords in a `make_provider("qemu", config)` mapping."""
    allowed = ("image", "image_format", "kernel", "initrd", "append", "ovmf", "qemu", "memory_mb", "vcpus",
               "accel", "allow_no_tee", "boot_timeout_s", "admin_user")
    return {k: config[k] for k in allowed if k in config}
