"""The manifest with the libvirt provider (-Dlibvirt=1): libvirt.so, libvirt-python and
pycdlib are named trusted files, and nothing else about the enclave changes; without the
variable (or with 0) the manifest has none of them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from test_tee_manifest import DEPLOY, SITE, render, trusted


def test_libvirt_files_are_trusted_only_in_a_libvirt_build() -> None:
    plain, zero, with_libvirt = render(), render(libvirt="0"), render(libvirt="1")
    libvirt_files = ["/usr/lib/x86_64-linux-gnu/libvirt.so.0", f"{SITE}/libvirt.py", f"{SITE}/pycdlib/"]
    assert not set(libvirt_files) & set(trusted(plain))
    assert trusted(zero) == trusted(plain)
    assert set(libvirt_files) <= set(trusted(with_libvirt))
    assert trusted(with_libvirt)[: len(trusted(plain))] == trusted(plain)
    for key in ("loader", "fs", "sys"):
        assert with_libvirt[key] == plain[key]
    assert {k: v for k, v in with_libvirt["sgx"].items() if k != "trusted_files"} == \
        {k: v for k, v in plain["sgx"].items() if k != "trusted_files"}


def test_libvirt_lock_is_hash_pinned_and_the_sdist_is_checked_before_building(tmp_path: Path) -> None:
    sys.path.insert(0, str(DEPLOY))
    try:
        spec = importlib.util.spec_from_file_location("install_libvirt", DEPLOY / "install_libvirt.py")
        assert spec is not None and spec.loader is not None
        il = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(il)
    finally:
        sys.path.remove(str(DEPLOY))
    rows = il.parse_lock(DEPLOY / "libvirt.lock")
    assert {name.split("==")[0] for _, name, _ in rows} == {"libvirt-python", "pycdlib"}
    assert all(url.startswith("https://files.pythonhosted.org/") for _, _, url in rows)
    # a tampered download never reaches the compiler
    sdist = tmp_path / "libvirt_python-12.8.0.tar.gz"
    sdist.write_bytes(b"not the pinned sdist")
    sha = next(s for s, name, _ in rows if name.startswith("libvirt-python"))
    with pytest.raises(SystemExit, match="sha256"):
        il.fetch(sha, "https://files.pythonhosted.org/x/libvirt_python-12.8.0.tar.gz", tmp_path)
    assert not sdist.exists()
    assert "libvirt.lock" in (DEPLOY / "Dockerfile").read_text()
