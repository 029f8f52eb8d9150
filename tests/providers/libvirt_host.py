"""A real local libvirtd for the libvirt provider's slow test (Debian's libvirt-daemon-system
and libvirt-daemon-driver-qemu; `make test-slow` installs them).

Where no libvirtd answers on the system socket, one is started here (``virtlogd -d`` and
``libvirtd -d``: no systemd is needed) and stopped again when the test ends. Storage pools
are transient (they vanish with the daemon, and are destroyed at the end), and live in a
world-traversable directory under /var/tmp: QEMU runs as libvirt's unprivileged user and
cannot reach pytest's 0700 temporary directories.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SOCKET = "/var/run/libvirt/libvirt-sock"
PIDFILE = "/var/run/libvirtd.pid"


def why_not() -> str | None:
    missing = [t for t in ("libvirtd", "virtlogd", "qemu-system-x86_64") if shutil.which(t) is None]
    if missing:
        return (f"needs {', '.join(missing)} (apt install libvirt-daemon-system libvirt-daemon-driver-qemu "
                "qemu-system-x86)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (pip install -e '.[libvirt]'; needs libvirt-dev, gcc)"
    if os.geteuid() != 0 and not _answers():
        return "no libvirtd answers and starting one needs root"
    return None


def _answers() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.connect(SOCKET)
        return True
    return False


@contextlib.contextmanager
def running_libvirtd() -> Iterator[None]:
    """A libvirtd on qemu:///system for the duration of the block."""
    started: list[str] = []
    if not _answers():
        if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
            subprocess.run(["virtlogd", "-d"], check=True)
            started.append("virtlogd")
        subprocess.run(["libvirtd", "-d"], check=True)
        started.append("libvirtd")
        for _ in range(100):
            if _answers():
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("libvirtd did not come up")
    try:
        yield
    finally:
        if "libvirtd" in started:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path(PIDFILE).read_text().strip()), signal.SIGTERM)
        if "virtlogd" in started:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path("/var/run/virtlogd.pid").read_text().strip()), signal.SIGTERM)


@contextlib.contextmanager
def transient_pool(conn: object, directory: Path, *, create_dir: bool = True) -> Iterator[str]:
    """A transient directory storage pool over `directory`; its name."""
    name = f"duet-test-{secrets.token_hex(4)}"
    if create_dir:
        directory.mkdir(mode=0o755)
    pool = conn.storagePoolCreateXML(  # type: ignore[attr-defined]
        f"<pool type='dir'><name>{name}</name><target><path>{directory}</path></target></pool>", 0)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            pool.destroy()
        if create_dir:
            shutil.rmtree(directory, ignore_errors=True)
