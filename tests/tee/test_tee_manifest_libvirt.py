"""The manifest with the libvirt provider (-Dlibvirt=1): libvirt.so, libvirt-python and
pycdlib are named trusted files, and nothing else about the enclave changes; without the
variable (or with 0) the manifest has none of them."""

from __future__ import annotations

from test_tee_manifest import SITE, render, trusted


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
