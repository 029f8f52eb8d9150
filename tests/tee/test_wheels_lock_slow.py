"""`make test-slow`: pip itself resolves wheels.lock for the image's interpreter, in
hash-checking mode, and the image's installer unpacks it into a site dir that holds every
module duet imports. Needs PyPI (pip runs `--isolated`: no local mirror or constraints)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_wheels_lock import (
    DEPLOY,
    LOCK,
    NOT_IN_ENCLAVE,
    deploy_module,
    installer,
    lock_names,
    norm,
    third_party_imports,
)

pytestmark = pytest.mark.slow


def make_lock() -> ModuleType:
    return deploy_module("make_lock")


def pip_resolve(lock: Path, tmp: Path) -> tuple[int, str, dict[str, object] | None]:
    """`pip install --dry-run --report - --require-hashes -r lock` for the image (CPython
    3.12, manylinux x86_64, wheels only): (exit status, stderr, report)."""
    ml = make_lock()
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", "-", "--require-hashes", "--only-binary=:all:", "--python-version", ml.PYTHON_VERSION,
           "--implementation", "cp", "--target", str(tmp / "unused"), "-r", str(lock)]
    for p in ml.PLATFORMS:
        cmd += ["--platform", p]
    for a in ml.ABIS:
        cmd += ["--abi", a]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return r.returncode, r.stderr, json.loads(r.stdout) if r.returncode == 0 else None


def test_pip_resolves_the_lock_exactly_in_hash_checking_mode(tmp_path: Path) -> None:
    rc, err, report = pip_resolve(LOCK, tmp_path)
    assert rc == 0, err
    assert report is not None
    installs: list[dict[str, Any]] = report["install"]  # type: ignore[assignment]
    got = {norm(i["metadata"]["name"]):
           (i["metadata"]["version"], i["download_info"]["archive_info"]["hashes"]["sha256"]) for i in installs}
    want = {norm(name.split("==")[0]): (name.split("==")[1], sha) for sha, name, _ in installer().parse_lock(LOCK)}
    assert got == want


def test_pip_refuses_a_lock_missing_a_dependency_or_with_a_wrong_hash(tmp_path: Path) -> None:
    lines = LOCK.read_text().splitlines()
    (tmp_path / "drop.lock").write_text("\n".join(ln for ln in lines if not ln.startswith("idna==")) + "\n")
    rc, err, _ = pip_resolve(tmp_path / "drop.lock", tmp_path)
    assert rc != 0 and "idna" in err and "pinned" in err
    httpx = next(ln for ln in lines if ln.startswith("httpx=="))
    sha = httpx.split("--hash=sha256:")[1][:64]
    forged = httpx.replace(sha, ("0" if sha[0] != "0" else "1") + sha[1:])
    (tmp_path / "forged.lock").write_text("\n".join(forged if ln == httpx else ln for ln in lines) + "\n")
    rc, err, _ = pip_resolve(tmp_path / "forged.lock", tmp_path)
    assert rc != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in err.upper()


def test_the_installer_unpacks_every_module_duet_imports(tmp_path: Path) -> None:
    """What the Dockerfile runs; PYTHONPATH (not a site dir) is how the enclave finds the
    packages, so nothing may rely on a .pth file (namespace packages such as azure and
    google must be plain directories)."""
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, str(DEPLOY / "install_wheels.py"), "--lock", str(LOCK), "--cache",
                        str(tmp_path / "cache"), "--target", str(site)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == len(lock_names())
    assert not list(site.glob("*.pth"))
    for module in third_party_imports():
        if module.split(".")[0] in NOT_IN_ENCLAVE:
            continue
        rel = site.joinpath(*module.split("."))
        candidates = [rel / "__init__.py", rel.with_suffix(".py"), *rel.parent.glob(rel.name + ".*.so")]
        assert any(c.is_file() for c in candidates), module
