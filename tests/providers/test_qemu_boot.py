"""Boot a real Debian guest with the qemu provider under TCG (software emulation), with the
cloud-init NoCloud seed carrying the controller's key, and run one command through the
controller's SSH channel (`duet.cvm.ssh.CvmConnection`). Slow: `make test-slow`.

The image is built from Debian packages (tests/providers/debian_image.py: mmdebstrap,
mke2fs -d) on first use and cached; that needs root, network access to a Debian mirror
and a few minutes. ``DUET_QEMU_ACCEL=kvm`` boots with KVM where available. `make test-slow`
installs the tools; a prerequisite that is still missing, or an image that cannot be
built, fails the test with the reason (a skipped slow test would read as a pass).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from provider_helpers import HOST_DATA

pytestmark = pytest.mark.slow


def _why_not() -> str | None:
    import debian_image

    missing = debian_image.missing_tools() + [t for t in ("qemu-img",) if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt install qemu-system-x86 qemu-utils mmdebstrap e2fsprogs)"
    if debian_image.cached() is None and os.geteuid() != 0:
        return "building the Debian test image (mmdebstrap into a directory) needs root"
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return "asyncssh (duet[controller]) is not installed"
    return None


def require_image():  # type: ignore[no-untyped-def]
    """The cached (or freshly built) Debian image; a failure, never a skip, without it."""
    reason = _why_not()
    if reason is not None:
        pytest.fail(f"cannot run: {reason}", pytrace=False)
    import debian_image

    try:
        return debian_image.build()
    except Exception as exc:  # no mirror reachable, no space, ...
        pytest.fail(f"could not build the Debian test image: {exc}", pytrace=False)


def guest_settings(image: Any) -> dict[str, object]:
    """Provider settings that boot `image` (the Debian test guest) under TCG in time."""
    return {"image": str(image.disk), "image_format": "raw", "kernel": str(image.kernel), "initrd": str(image.initrd),
            "append": image.append, "accel": os.environ.get("DUET_QEMU_ACCEL", "tcg"), "memory_mb": 1024,
            "vcpus": 2, "boot_timeout_s": 900}


async def test_boot_debian_under_tcg_and_run_a_command(tmp_path: Path) -> None:
    image = require_image()
    from duet.cvm.qemu import QemuProvider
    from duet.cvm.ssh import CvmConnection, generate_client_key, public_line

    accel = os.environ.get("DUET_QEMU_ACCEL", "tcg")
    provider = QemuProvider(
        tmp_path / "qemu",
        image=image.disk,
        image_format="raw",
        kernel=image.kernel,
        initrd=image.initrd,
        append=image.append,
        accel=accel,
        memory_mb=1024,
        vcpus=2,
        boot_timeout_s=900,
    )
    key = generate_client_key()
    prov = await provider.create("boot-1", authorized_key=public_line(key), spec={"tee": "none",
                                                                                 "host_data": HOST_DATA})
    try:
        assert prov.launch["evidence"] == "absent"
        assert prov.host == "127.0.0.1"
        assert await provider.status("boot-1") == "running"
        conn = CvmConnection(host=prov.host, port=prov.port, user=prov.user, client_key=key, pinned_host_key=None,
                             connect_timeout_s=60)
        try:
            host_key = await conn.connect()
            assert host_key.startswith("ssh-ed25519 ")
            res = await conn.run("id -un && sudo -n passwd -S root && test ! -e ~/.ssh/authorized_keys && "
                                 "stat -c '%U %a' /etc/ssh/duet/authorized_keys && "
                                 "grep -c . /etc/ssh/duet/authorized_keys", timeout_s=120)
        finally:
            await conn.close()
        out = res.stdout.decode()
        assert res.exit_status == 0, out + res.stderr.decode()
        lines = out.split()
        assert lines[0] == "duet"
        assert "root L" in out  # root's password locked
        assert "root 644" in out  # the key file is root's, outside any home
        assert lines[-1] == "1"  # the controller's key only
    finally:
        await provider.delete("boot-1")
    assert await provider.status("boot-1") == "missing"
