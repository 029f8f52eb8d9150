"""The Gramine manifest template renders (Jinja2, with a stand-in for gramine-manifest's
helpers) into TOML that satisfies duet's rules for the enclave."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import pytest

import duet
from duet.tee.gramine import SEALED_DATA_DIR

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "gramine"
TEMPLATE = DEPLOY / "duet-controller.manifest.template"
SITE = "/opt/duet/lib"
PYTHON = "/usr/bin/python3.12"
STDLIB = "/usr/lib/python3.12"
ARCH_LIBDIR = "/lib/x86_64-linux-gnu"


class _Runtimedir:
    """Like graminelibos' Runtimedir: callable, and str() gives the glibc runtime dir."""

    def __call__(self, libc: str = "glibc") -> PurePosixPath:
        return PurePosixPath("/usr/lib/x86_64-linux-gnu/gramine/runtime") / libc

    def __str__(self) -> str:
        return str(self())


def render(entrypoint: str = PYTHON, duet_site: str = SITE, **defines: Any) -> dict[str, Any]:
    # The same Environment settings as gramine-manifest (graminelibos.gen_jinja_env).
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.globals["gramine"] = {
        "libos": PurePosixPath("/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"),
        "runtimedir": _Runtimedir(),
    }
    env.globals["python"] = {
        "stdlib": PurePosixPath(STDLIB),
        "platstdlib": PurePosixPath(STDLIB),
        "purelib": PurePosixPath("/usr/local/lib/python3.12/dist-packages"),
        "get_sys_path": lambda interpreter: iter(()),
    }
    env.globals["env"] = {}
    text = env.from_string(TEMPLATE.read_text()).render(
        entrypoint=entrypoint, arch_libdir=ARCH_LIBDIR, duet_site=duet_site, **defines
    )
    return tomllib.loads(text)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return render()


def trusted(manifest: dict[str, Any]) -> list[str]:
    out = []
    for tf in manifest["sgx"]["trusted_files"]:
        uri = tf if isinstance(tf, str) else tf["uri"]
        assert uri.startswith("file:")
        out.append(uri[len("file:"):])
    return out


def covered(path: str, entries: list[str]) -> bool:
    return any(path == e or (e.endswith("/") and path.startswith(e)) for e in entries)


def test_encrypted_mount_keyed_by_mrenclave_for_the_data_dir(manifest: dict[str, Any]) -> None:
    enc = [m for m in manifest["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert len(enc) == 1
    assert enc[0]["key_name"] == "_sgx_mrenclave"
    assert enc[0]["path"] == str(SEALED_DATA_DIR)
    assert enc[0]["uri"].startswith("file:/")
    # No hard-coded (insecure) keys, and no other mount over the data dir.
    assert "insecure__keys" not in manifest["fs"]
    assert [m for m in manifest["fs"]["mounts"] if m["path"] == str(SEALED_DATA_DIR)] == enc


def test_dcap_remote_attestation_production_enclave(manifest: dict[str, Any]) -> None:
    sgx = manifest["sgx"]
    assert sgx["remote_attestation"] == "dcap"
    assert sgx["debug"] is False
    assert sgx.get("file_check_policy", "strict") == "strict"
    assert manifest["loader"]["log_level"] in ("none", "error")
    assert not any(k.startswith("insecure__") or k == "enable_stats" for k in sgx)
    assert "profile" not in sgx and "vtune_profile" not in sgx


def test_no_allowed_files(manifest: dict[str, Any]) -> None:
    assert "allowed_files" not in manifest["sgx"]


def test_argv_and_environment_are_fixed(manifest: dict[str, Any]) -> None:
    loader = manifest["loader"]
    for key in ("insecure__use_cmdline_argv", "argv_src_file", "insecure__use_host_env", "env_src_file"):
        assert key not in loader, key
    argv = loader["argv"]
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert argv[0] == manifest["libos"]["entrypoint"] == PYTHON
    assert argv[argv.index("--tee") + 1] == "gramine"
    assert argv[argv.index("--data") + 1] == str(SEALED_DATA_DIR)
    assert "controller" in argv and "serve" in argv
    # No owner key or policy file from the host: those come through signed intents / sealed state.
    assert "--owner-key" not in argv and "--policy" not in argv
    for name, value in loader["env"].items():
        assert isinstance(value, str) or "passthrough" not in value, f"{name} is passed through from the host"
    assert loader["env"]["PYTHONPATH"] == SITE
    assert "-s" in argv and "-B" in argv


def test_trusted_files_cover_interpreter_stdlib_site_packages_and_duet(manifest: dict[str, Any]) -> None:
    entries = trusted(manifest)
    assert covered(PYTHON, entries)
    assert covered(f"{STDLIB}/ssl.py", entries)
    assert covered(f"{STDLIB}/lib-dynload/_ssl.cpython-312-x86_64-linux-gnu.so", entries)
    assert covered(f"{SITE}/cryptography/__init__.py", entries)
    assert covered(f"{SITE}/fastapi/__init__.py", entries)
    package = Path(duet.__file__).parent
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for path in files:
        inside = f"{SITE}/duet/{path.relative_to(package).as_posix()}"
        assert covered(inside, entries), inside
    # Every mount that Python reads code from is trusted (encrypted/tmpfs mounts aside).
    for m in manifest["fs"]["mounts"]:
        if m.get("type", "chroot") == "chroot":
            assert covered(m["uri"][len("file:"):] + "/", entries) or covered(m["uri"][len("file:"):], entries), m
    # The interpreter's search path holds nothing but trusted dirs.
    assert covered(manifest["loader"]["env"]["PYTHONPATH"] + "/", entries)


def test_build_variables_change_only_what_they_should() -> None:
    assert render(isvsvn=7)["sgx"]["isvsvn"] == 7
    with pytest.raises(jinja2.UndefinedError):
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TEMPLATE.read_text()).render()


def test_dockerfile_is_pinned() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = [line for line in text.splitlines() if line.startswith("ARG BASE_IMAGE=")]
    assert base and "@sha256:" in base[0]
    assert "SOURCE_DATE_EPOCH" in text and "--date 0000-00-00" in text
    lock = [line.split() for line in (DEPLOY / "wheels.lock").read_text().splitlines() if line and line[0] != "#"]
    assert lock and all(len(row) == 4 and row[1].startswith("--hash=sha256:") and "==" in row[0] for row in lock)
    names = {row[0].split("==")[0] for row in lock}
    assert {"cryptography", "dcap-qvl", "fastapi", "uvicorn", "httpx", "pydantic", "rfc8785"} <= names


def test_the_sealing_key_masks_are_pinned(manifest: dict[str, Any]) -> None:
    """The masks are key-derivation material: written out (Gramine 1.9's values), so that
    the sealing key follows this file, not a Gramine release's defaults."""
    assert manifest["sgx"]["seal_key"] == {"flags_mask": "0xffffffffffffffff", "xfrm_mask": "0xfffffffffff9ff1b",
                                           "misc_mask": "0xffffffff"}


def test_wheel_installer_checks_hashes_and_paths(tmp_path: Path) -> None:
    import hashlib
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("install_wheels", DEPLOY / "install_wheels.py")
    assert spec is not None and spec.loader is not None
    iw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(iw)
    assert len(iw.parse_lock(DEPLOY / "wheels.lock")) > 20

    wheel = tmp_path / "cache" / "demo-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "X = 1\n")
        z.writestr("demo-1.0.data/purelib/demo_extra.py", "Y = 2\n")
        z.writestr("demo-1.0.data/scripts/demo", "#!/bin/sh\n")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    url = "https://example.invalid/demo-1.0-py3-none-any.whl"
    iw.unpack(iw.fetch(sha, url, wheel.parent), tmp_path / "site")
    assert (tmp_path / "site" / "demo" / "__init__.py").read_text() == "X = 1\n"
    assert (tmp_path / "site" / "demo_extra.py").exists() and not (tmp_path / "site" / "demo").is_file()
    with pytest.raises(SystemExit, match="sha256"):
        iw.fetch("0" * 64, url, wheel.parent)

    evil = tmp_path / "evil.whl"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.py", "")
    with pytest.raises(SystemExit, match="unsafe path"):
        iw.unpack(evil, tmp_path / "site")


def test_the_store_address_is_fixed_in_the_manifest() -> None:
    """Under SGX `--store` comes from the measured argv (a build-time value), never from
    the host: without the value there is no `--store` at all."""
    argv = render(store="etcd://10.1.2.3:2379")["loader"]["argv"]
    assert argv[argv.index("--store") + 1] == "etcd://10.1.2.3:2379"
    assert "--store" not in render()["loader"]["argv"]
