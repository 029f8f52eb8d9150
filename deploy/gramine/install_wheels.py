"""Fetch the wheels pinned in wheels.lock, check their SHA-256, and unpack them into a
directory (the enclave's site dir) without pip: plain unzip of purelib/platlib content, so
the result depends only on the wheels' bytes (no RECORD rewrite, no INSTALLER, no
direct_url.json, no bytecode). Runs on the build image's python3 with the stdlib only.

    python3 install_wheels.py --lock wheels.lock --cache wheels/ --target /opt/duet/lib
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

_DATA = re.compile(r"^[^/]+\.data/(purelib|platlib|scripts|headers|data)/(.*)$")


_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)"
                   r" --hash=sha256:(?P<sha>[0-9a-f]{64})\s+#\s+(?P<url>https://\S+\.(?:whl|tar\.gz))$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: Path, sdists: bool = False) -> list[tuple[str, str, str]]:
    """(sha256, name==version, url) per line. A line is a pip requirement pinned by hash
    (`pip install --require-hashes -r` reads the same file) with the wheel's URL after `#`;
    the URL must name that very wheel (its file name's distribution and version), and
    whatever is fetched must have the hash anyway. `sdists`: a source archive
    (`name-version.tar.gz`) is allowed too (libvirt.lock: libvirt-python ships none)."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise SystemExit(f"bad lock line: {line}")
        file = m["url"].rsplit("/", 1)[1]
        if file.endswith(".tar.gz"):
            dist, _, version = file[: -len(".tar.gz")].rpartition("-")
            allowed = sdists
        else:
            wheel = file.split("-")
            allowed = len(wheel) >= 5
            dist, version = (wheel[0], wheel[1]) if allowed else ("", "")
        if not allowed or _norm(dist) != _norm(m["name"]) or version != m["version"]:
            raise SystemExit(f"bad lock line: the URL is not a wheel of {m['name']}=={m['version']}: {line}")
        rows.append((m["sha"], f"{m['name']}=={m['version']}", m["url"]))
    return rows


def fetch(sha: str, url: str, cache: Path) -> Path:
    path = cache / url.rsplit("/", 1)[1]
    if not path.exists():
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - https only, checked above
            data = resp.read()
        path.write_bytes(data)
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha:
        path.unlink()
        raise SystemExit(f"{path.name}: sha256 {got}, the lock says {sha}")
    return path


def unpack(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            name = info.filename
            m = _DATA.match(name)
            if m:
                if m.group(1) not in ("purelib", "platlib"):
                    continue  # console scripts, headers, data files: not used in the enclave
                name = m.group(2)
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise SystemExit(f"{wheel.name}: unsafe path {info.filename}")
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(info))
            mode = (info.external_attr >> 16) & 0o777
            out.chmod(0o755 if mode & 0o111 else 0o644)


def main(build: Callable[[Path, Path], Path] | None = None) -> int:
    """`build` (install_libvirt.py) turns a checked source archive into a wheel in the
    given directory; without it the lock may hold wheels only."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--lock", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--target", type=Path, required=True)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    args.target.mkdir(parents=True, exist_ok=True)
    for sha, name, url in parse_lock(args.lock, sdists=build is not None):
        path = fetch(sha, url, args.cache)
        if build is not None and path.name.endswith(".tar.gz"):
            path = build(path, args.cache / "built")
        unpack(path, args.target)
        print(f"installed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
