"""The machine behind the fake ARM's VM: what Azure's hypervisor would boot for a
confidential VM, here a real Debian guest under QEMU (TCG; `DUET_QEMU_ACCEL=kvm` for
KVM), for a controller in another process to reach exactly as it reaches an Azure CVM.

What the VM request becomes, and what stands in for what:
- the image: the cached Debian test image (tests/providers/debian_image.py, with
  tpm2-tools and curl as Azure's Ubuntu CVM images have them), a copy-on-write overlay
  per VM;
- `osProfile.customData`: the guest's cloud-init user-data, byte for byte, through a
  NoCloud seed (Azure hands it over through its own datasource); `osProfile`'s SSH key as
  the datasource's public key, which the user-data tells cloud-init to ignore, as on Azure;
- the vTPM: a real `swtpm`, provisioned first as Azure's paravisor provisions a CVM's
  vTPM (tests/providers/vtpm_twin.py: the AK at 0x81000003, the HCL report with a
  SIMULATED SNP report binding that AK and the VM's `vmId`, the AK certificate), then
  attached to the guest as a TPM device: the guest sees /dev/tpmrm0, and its PCRs and
  event log are the ones its firmware (SeaBIOS) and kernel really measured;
- IMDS: slirp's network is 169.254.0.0/16, and 169.254.169.254:80 in it is forwarded to
  the twin's IMDS/THIM stand-in on the host, so the collection's `curl
  http://169.254.169.254/...` runs unchanged;
- the public IP: a loopback address of its own, whose port 22 is forwarded to the
  guest's sshd.

Nothing in the guest is told it is a twin: the controller's production collection command
and lockdown checks run there as they would on Azure.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from vtpm_twin import AzureVtpmTwin, SimulatedVtpmCa

from duet.attestation.simulated.snp import SimulatedSnp
from duet.cvm.qemu import build_seed_iso
from helpers import stop_group

#: A byte pump between the guest's connection to IMDS (stdin/stdout, as slirp's
#: `guestfwd=...-cmd:` hands it over) and the twin's IMDS server on the host.
FORWARDER = """import socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while (b := sys.stdin.buffer.raw.read(65536)):
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while (b := s.recv(65536)):
    sys.stdout.buffer.write(b); sys.stdout.buffer.flush()
"""


def loopback_address() -> str:
    """A loopback address of the machine's own (its "public IP"), so its port 22 clashes
    with nothing else on this host."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


class AzureMachine:
    def __init__(self, workdir: Path, image: Any, snp: SimulatedSnp, *, address: str | None = None) -> None:
        self.dir = workdir
        self.image = image
        self.snp = snp
        self.address = address or loopback_address()
        self.vtpm: AzureVtpmTwin | None = None
        #: The SIMULATED vTPM PKI of the AK certificate (a user pins its root).
        self.vtpm_ca: SimulatedVtpmCa | None = None
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.qemu: subprocess.Popen[bytes] | None = None
        self.vm_id: str | None = None

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def boot(self, vm: dict[str, Any]) -> None:
        """Boot the machine an ARM VM request describes (its `properties`, as sent)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        props = vm["properties"]
        self.vm_id = str(props["vmId"])
        os_profile = props["osProfile"]
        try:
            self._provision_vtpm()
            self._seed(os_profile)
            self._start(os_profile)
        except BaseException:
            self.stop()
            raise

    def _provision_vtpm(self) -> None:
        assert self.vm_id is not None
        twin = AzureVtpmTwin(self.dir / "vtpm", self.snp, self.vm_id)
        (self.dir / "vtpm").mkdir(exist_ok=True)
        twin.provision()  # AK, HCL report, AK certificate; then its swtpm stops
        twin.serve_imds()
        self.vtpm, self.vtpm_ca = twin, twin.vtpm_ca
        sock = self.dir / "swtpm.sock"
        self.swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.dir / 'vtpm' / 'tpmstate'}",
             "--ctrl", f"type=unixio,path={sock}", "--log", f"file={self.dir / 'swtpm.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.swtpm.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"swtpm did not start: {(self.dir / 'swtpm.log').read_text(errors='replace')}")
            time.sleep(0.05)

    def _seed(self, os_profile: dict[str, Any]) -> None:
        keys = [k["keyData"] for k in os_profile.get("linuxConfiguration", {}).get("ssh", {}).get("publicKeys", [])]
        meta = {"instance-id": self.vm_id, "local-hostname": os_profile["computerName"], "public-keys": keys}
        files = {"user-data": base64.b64decode(os_profile["customData"]).decode(),
                 "meta-data": yaml.safe_dump(meta)}
        build_seed_iso(files, self.dir / "seed.iso")

    def _start(self, os_profile: dict[str, Any]) -> None:
        assert self.vtpm is not None and self.vtpm.imds is not None
        disk = self.dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.disk),
                        str(disk)], check=True, timeout=60)
        (self.dir / "imds_forward.py").write_text(FORWARDER)
        imds_port = self.vtpm.imds.server_address[1]
        # TCG unless asked (as test_qemu_boot.py): nested KVM is not always usable.
        kvm = os.environ.get("DUET_QEMU_ACCEL") == "kvm"
        net = (f"user,id=net0,net=169.254.0.0/16,hostfwd=tcp:{self.address}:22-:22,"
               f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} {self.dir / 'imds_forward.py'} {imds_port}")
        argv = [
            "qemu-system-x86_64", "-name", f"azure-twin-{os_profile['computerName']}", "-nodefaults",
            "-no-user-config", "-display", "none", "-vga", "none", "-machine", "q35",
            "-accel", "kvm" if kvm else "tcg", "-cpu", "host" if kvm else "max", "-m", "1024M", "-smp", "2",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", self.image.append,
            "-drive", f"file={disk},if=none,id=disk0,format=qcow2", "-device", "virtio-blk-pci,drive=disk0",
            "-drive", f"file={self.dir / 'seed.iso'},if=none,id=seed0,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=seed0",
            "-netdev", net, "-device", "virtio-net-pci,netdev=net0",
            "-chardev", f"socket,id=chrtpm,path={self.dir / 'swtpm.sock'}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-serial", f"file:{self.serial_log}",
        ]
        self.qemu = subprocess.Popen(argv, stdout=open(self.dir / "qemu.out", "wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        for proc in (self.qemu, self.swtpm):
            stop_group(proc)
        self.qemu = self.swtpm = None
        if self.vtpm is not None:
            self.vtpm.stop()
            self.vtpm = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
