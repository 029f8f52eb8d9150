"""Install the libvirt provider's packages (libvirt.lock) into the enclave's site dir:
wheels are unpacked as install_wheels.py does; an sdist (libvirt-python has no wheels) is
first checked against its SHA-256, then built into a wheel with the image's pip against the
distribution's libvirt headers, with SOURCE_DATE_EPOCH and fixed paths, and unpacked.

    python3 install_libvirt.py --lock libvirt.lock --cache wheels/ --target /opt/duet/lib
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import install_wheels
from install_wheels import fetch  # noqa: F401 (the same checked fetch; the lock's test calls it here)


def parse_lock(path: Path) -> list[tuple[str, str, str]]:
    """libvirt.lock, in wheels.lock's format, where a source archive is allowed."""
    return install_wheels.parse_lock(path, sdists=True)


def build_wheel(sdist: Path, out: Path) -> Path:
    """pip wheel without network or build isolation: the build uses only the sdist and
    the image's setuptools, so the checked bytes are what gets compiled."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PIP_NO_INDEX="1", PYTHONDONTWRITEBYTECODE="1",
               CFLAGS="-O2 -g0 -ffile-prefix-map=/duet=.")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                    "-w", str(out), str(sdist)], check=True, env=env)
    [wheel] = sorted(out.glob("*.whl"))
    return wheel


def main() -> int:
    return install_wheels.main(build=build_wheel)


if __name__ == "__main__":
    sys.exit(main())
