"""The enclave image's wheels.lock carries everything the controller imports, cloud SDKs
included, and nothing unpinned: each line a hash-pinned pip requirement with the wheel's
URL. The closure is computed from pyproject.toml's requirements (dependencies and the
controller, azure and gcp extras) through the installed distributions' metadata, with the
image's interpreter (CPython 3.12, Linux x86_64) for markers. `make test-slow` also has pip
resolve the lock itself (test_wheels_lock_slow.py)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

import duet
from duet.controller.limits import BoundedH11Protocol, server_options

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "gramine"
LOCK = DEPLOY / "wheels.lock"
EXTRAS = ("controller", "azure", "gcp")
#: The image's interpreter, for environment markers.
IMAGE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "os_name": "posix"}
#: Imports of duet that are not on the enclave's path, and why.
NOT_IN_ENCLAVE = {
    "pycdlib": "qemu provider (duet[qemu]): runs qemu on the controller's own host, which an enclave cannot; "
               "the libvirt provider's own lock (below)",
    "sevsnpmeasure": "qemu provider (duet[qemu]), as above",
    "libvirt": "libvirt provider (duet[libvirt]): its own lock (deploy/gramine/libvirt.lock), DUET_LIBVIRT=1 image",
}
#: What the libvirt image adds (libvirt.lock), for the imports of duet's libvirt provider.
LIBVIRT_LOCK = DEPLOY / "libvirt.lock"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def deploy_module(name: str) -> ModuleType:
    """A script of deploy/gramine/ (not a package) loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def installer() -> ModuleType:
    return deploy_module("install_wheels")


def lock_names() -> dict[str, str]:
    return {norm(name.split("==")[0]): name.split("==")[1] for _, name, _ in installer().parse_lock(LOCK)}


def applies(req: Requirement, extras: frozenset[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**IMAGE_ENV, "extra": e}) for e in (extras | {""}))


def closure() -> set[str]:
    """Every distribution the enclave needs: pyproject's requirements, then each installed
    distribution's own requirements (with the extras asked for), for the image's Python."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = list(project["dependencies"]) + [r for e in EXTRAS for r in project["optional-dependencies"][e]]
    seen: dict[str, frozenset[str]] = {}
    todo = [Requirement(r) for r in roots]
    todo = [r for r in todo if applies(r, frozenset())]
    while todo:
        req = todo.pop()
        key, extras = norm(req.name), frozenset(req.extras)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, frozenset()) | extras
        for line in metadata.requires(req.name) or []:
            dep = Requirement(line)
            if applies(dep, seen[key]):
                todo.append(dep)
    return set(seen)


def third_party_imports() -> dict[str, list[str]]:
    """Dotted module names duet imports (anywhere in a module, functions included) that are
    neither stdlib nor duet, each with the files importing it."""
    found: dict[str, list[str]] = {}
    package = Path(duet.__file__).parent
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module in ("google.cloud",) \
                    else [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("duet", "__future__"):
                    continue
                found.setdefault(name, []).append(str(path.relative_to(package)))
    return found


def distribution_of(module: str) -> str:
    """The installed distribution whose files hold `module`: its shortest prefix that is a
    real package or module decides (`azure` and `google` are namespaces shared by many
    distributions, so there it is `azure.mgmt.compute`, `google.cloud.compute_v1`...)."""
    parts = module.split(".")
    origin = None
    for i in range(1, len(parts) + 1):
        spec = importlib.util.find_spec(".".join(parts[:i]))
        assert spec is not None, module
        if spec.origin not in (None, "namespace"):
            origin = spec.origin
            break
    assert origin is not None, f"{module} is a bare namespace package"
    target = Path(origin).resolve()
    for site in map(Path, sys.path):
        if site.is_dir() and target.is_relative_to(site.resolve()):
            dist = _file_index().get(target.relative_to(site.resolve()).as_posix())
            if dist is not None:
                return dist
    raise AssertionError(f"no installed distribution holds {module} ({target})")


@functools.cache
def _file_index() -> dict[str, str]:
    """Each installed file (as its RECORD names it, relative to site-packages) -> its distribution."""
    return {str(f): norm(d.metadata["Name"]) for d in metadata.distributions() for f in d.files or []}


def test_every_line_is_a_hash_pinned_requirement_with_its_wheel() -> None:
    rows = installer().parse_lock(LOCK)
    assert len(rows) > 40
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert len(lines) == len(rows)
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9._-]+==\S+ --hash=sha256:[0-9a-f]{64}  # https://\S+\.whl", line), line
    names = [norm(name.split("==")[0]) for _, name, _ in rows]
    assert len(names) == len(set(names)), "a distribution is pinned twice"


def test_the_lock_is_the_controllers_closure_with_the_cloud_sdks() -> None:
    need, have = closure(), set(lock_names())
    assert {"azure-identity", "azure-mgmt-compute", "azure-mgmt-network", "azure-mgmt-resource",
            "google-cloud-compute", "google-auth", "pyhpke", "google-re2"} <= need
    missing, unexplained = sorted(need - have), sorted(have - need)
    regen = "regenerate: python3 deploy/gramine/make_lock.py > deploy/gramine/wheels.lock"
    assert not missing, f"the enclave would lack {missing}; {regen}"
    assert not unexplained, f"the lock holds {unexplained}, which nothing requires; {regen}"


def test_every_import_of_duet_is_a_locked_distribution() -> None:
    have = lock_names()
    imports = third_party_imports()
    assert "azure.mgmt.compute" in imports and "google.cloud.compute_v1" in imports and "re2" in imports
    for module, where in sorted(imports.items()):
        if module.split(".")[0] in NOT_IN_ENCLAVE:
            continue
        dist = distribution_of(module)
        assert dist in have, f"{module} (imported by {', '.join(where)}) comes from {dist}, not in wheels.lock"


def test_the_libvirt_providers_imports_are_in_its_own_lock() -> None:
    """libvirt-python ships no wheel (and so is not in wheels.lock): a DUET_LIBVIRT=1 image
    adds libvirt.lock, which must hold what duet's libvirt provider imports."""
    libvirt_lock = {norm(name.split("==")[0]) for _, name, _ in installer().parse_lock(LIBVIRT_LOCK, sdists=True)}
    imports = {m.split(".")[0] for m, where in third_party_imports().items()
               if any(w.startswith("cvm/libvirt") for w in where)}
    assert "libvirt" in imports
    dists = {"libvirt": "libvirt-python", "pycdlib": "pycdlib"}
    assert {dists.get(m, m) for m in imports} <= libvirt_lock


def test_no_uvloop_or_httptools_and_the_server_names_its_loop_and_parser() -> None:
    """The enclave serves with uvicorn's h11 protocol (bounded, duet.controller.limits) on
    asyncio's loop, named: uvicorn's "auto" would pick uvloop wherever it is installed, and
    the tests would then run another loop than the enclave."""
    have = lock_names()
    assert "uvloop" not in have and "httptools" not in have
    opts = server_options()
    assert opts["loop"] == "asyncio" and opts["http"] is BoundedH11Protocol


def test_the_installer_refuses_a_line_without_hash_or_with_another_wheel(tmp_path: Path) -> None:
    iw = installer()
    sha = "ab" * 32
    good = f"idna==3.20 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/idna-3.20-py3-none-any.whl\n"
    (tmp_path / "ok.lock").write_text(good)
    assert iw.parse_lock(tmp_path / "ok.lock") == [
        (sha, "idna==3.20", "https://files.pythonhosted.org/p/idna-3.20-py3-none-any.whl")]
    for bad in (
        "idna==3.20  # https://files.pythonhosted.org/p/idna-3.20-py3-none-any.whl\n",  # no hash
        f"idna>=3 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/idna-3.20-py3-none-any.whl\n",
        f"idna==3.20 --hash=sha256:{sha}  # http://files.pythonhosted.org/p/idna-3.20-py3-none-any.whl\n",
        f"idna==3.20 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/evil-3.20-py3-none-any.whl\n",
        f"idna==3.20 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/idna-3.19-py3-none-any.whl\n",
        f"idna==3.20 --hash=sha256:{sha}\n",  # no URL
        f"idna==3.20 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/idna-3.20.whl\n",  # not a wheel name
        # a source archive runs its build at install time: only libvirt.lock may hold one
        f"idna==3.20 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/idna-3.20.tar.gz\n",
    ):
        (tmp_path / "bad.lock").write_text(bad)
        with pytest.raises(SystemExit, match="bad lock line"):
            iw.parse_lock(tmp_path / "bad.lock")


def test_a_source_archive_is_allowed_only_where_asked_and_only_of_the_named_release(tmp_path: Path) -> None:
    iw = installer()
    sha = "cd" * 32
    url = "https://files.pythonhosted.org/p/libvirt_python-12.8.0.tar.gz"
    (tmp_path / "ok.lock").write_text(f"libvirt-python==12.8.0 --hash=sha256:{sha}  # {url}\n")
    assert iw.parse_lock(tmp_path / "ok.lock", sdists=True) == [(sha, "libvirt-python==12.8.0", url)]
    with pytest.raises(SystemExit, match="bad lock line"):
        iw.parse_lock(tmp_path / "ok.lock")
    for other in ("evil-12.8.0.tar.gz", "libvirt_python-12.7.0.tar.gz"):
        (tmp_path / "bad.lock").write_text(
            f"libvirt-python==12.8.0 --hash=sha256:{sha}  # https://files.pythonhosted.org/p/{other}\n")
        with pytest.raises(SystemExit, match="bad lock line"):
            iw.parse_lock(tmp_path / "bad.lock", sdists=True)
