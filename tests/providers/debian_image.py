"""Build a small bootable Debian (bookworm) image for the qemu provider's boot test, from
Debian packages only: mmdebstrap into a directory, `mke2fs -d` into a raw ext4 image, and
the kernel and initrd taken out for direct kernel boot (no bootloader, no partitions).

The image has cloud-init limited to the NoCloud datasource, so the provider's seed is
what configures it. The result is cached (``DUET_TEST_IMAGE_DIR``, default
``/var/tmp/duet-test-images``) and rebuilt only when missing.

Run as a script to (re)build the cache: ``python tests/providers/debian_image.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
PACKAGES = [
    "systemd-sysv", "udev", "linux-image-cloud-amd64", "openssh-server", "cloud-init", "ifupdown",
    "isc-dhcp-client", "sudo", "netbase", "iproute2", "dbus", "procps", "python3", "libpam-systemd",
    # What an Azure CVM's image has for the evidence collection (the Azure twin machine).
    "tpm2-tools", "curl",
]
VERSION = "3"


@dataclass(frozen=True)
class DebianImage:
    disk: Path
    kernel: Path
    initrd: Path
    append: str


def cache_dir() -> Path:
    return Path(os.environ.get("DUET_TEST_IMAGE_DIR", "/var/tmp/duet-test-images")) / f"debian-{SUITE}-v{VERSION}"


def cached() -> DebianImage | None:
    d = cache_dir()
    img = DebianImage(d / "disk.raw", d / "vmlinuz", d / "initrd.img", "root=/dev/vda rw console=ttyS0 net.ifnames=0")
    if all(p.exists() for p in (img.disk, img.kernel, img.initrd, d / "done")):
        return img
    return None


def missing_tools() -> list[str]:
    return [t for t in ("mmdebstrap", "mke2fs", "qemu-system-x86_64") if shutil.which(t) is None]


def build() -> DebianImage:
    done = cached()
    if done is not None:
        return done
    d = cache_dir()
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    root = d / "root"
    subprocess.run(
        ["mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES), SUITE, str(root)],
        check=True, stdin=subprocess.DEVNULL,
    )
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("debian\n")
    cfgd = root / "etc/cloud/cloud.cfg.d"
    cfgd.mkdir(parents=True, exist_ok=True)
    (cfgd / "90-duet-test.cfg").write_text("datasource_list: [ NoCloud, None ]\n")
    # no machine-id: a fresh one per boot of a copy
    (root / "etc/machine-id").write_text("")
    kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
    shutil.copyfile(kernel, d / "vmlinuz")
    shutil.copyfile(initrd, d / "initrd.img")
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(d / "disk.raw"), "3G"],
                   check=True)
    shutil.rmtree(root)
    (d / "done").write_text("ok\n")
    result = cached()
    assert result is not None
    return result


if __name__ == "__main__":
    img = build()
    print(img, file=sys.stderr)
