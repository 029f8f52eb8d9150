"""`duet verify --from-tiles`: a copy of a CVM log as C2SP tiles, served by a plain static file
server that never ran duet, verifies; a changed tile or entry bundle does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from duet.ledger.tiles import tile_path
from helpers import ControllerProc, free_port


def _duet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    yield root, url
    proc.kill()
    proc.wait(timeout=10)


def test_a_static_tile_mirror_verifies_and_a_changed_tile_fails(
        controller: ControllerProc, static_server: tuple[Path, str], tmp_path: Path) -> None:
    root, url = static_server
    owner = controller.owner()
    cvm = owner.create("local", name="mirror")["id"]
    owner.run(cvm, "echo mirrored")
    exported = _duet("state", "export", cvm, "--tiles", str(root / "log"), "--controller", controller.url)
    assert exported.returncode == 0, exported.stderr
    controller.kill()  # the mirror stands alone

    def verify(state: str) -> subprocess.CompletedProcess[str]:
        return _duet("verify", "--from-tiles", f"{url}/log/", "--trust-simulated",
                     "--state-dir", str(tmp_path / state))

    ok = verify("a")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VERIFIED" in ok.stdout and "tile mirror" in ok.stdout and "no freshness" in ok.stdout
    size = int((root / "log" / "checkpoint").read_text().splitlines()[1])
    for rel in (tile_path(0, 0, size), tile_path(-1, 0, size)):
        original = (root / "log" / rel).read_bytes()
        (root / "log" / rel).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        bad = verify("b")
        assert bad.returncode == 3 and "NOT VERIFIED" in bad.stdout, rel
        (root / "log" / rel).write_bytes(original)
    shutil.copy(root / "log" / "duet-identity.json", tmp_path / "id.json")
    (root / "log" / "duet-identity.json").write_bytes((tmp_path / "id.json").read_bytes() + b" ")
    edited = verify("c")
    assert edited.returncode == 1 and "invalid_bundle" in edited.stderr


def test_the_controller_log_is_served_as_tiles_too(controller: ControllerProc) -> None:
    """The controller log (the one witnesses cosign) has its own tlog-tiles prefix, advertised
    in /v1/controller: its level-0 tile folds to the signed checkpoint's root, and its entry
    bundle holds exactly the log's entries."""
    import base64

    from duet.ledger import merkle
    from duet.ledger.tiles import decode_bundle, decode_tile, root_from_level0

    owner = controller.owner()
    owner.create("local", name="tiled")
    with httpx.Client(base_url=controller.url, timeout=30) as http:
        prefix = http.get("/v1/controller").json()["tlog_prefix"]
        assert prefix == "/v1/controller/log/tlog/"
        note = http.get(prefix + "checkpoint").text
        size = int(note.splitlines()[1])
        root = base64.b64decode(note.splitlines()[2])
        assert 0 < size < 256
        hashes = decode_tile(http.get(prefix + tile_path(0, 0, size)).content, size)
        assert root_from_level0(hashes) == root
        leaves = decode_bundle(http.get(prefix + tile_path(-1, 0, size)).content, size)
        assert [merkle.leaf_hash(leaf) for leaf in leaves] == hashes
        assert http.get(prefix + tile_path(0, 1, 1)).status_code == 404
