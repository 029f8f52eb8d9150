"""The controller serves each CVM log as C2SP tlog-tiles; a reader that trusts nothing but
the signed checkpoint rebuilds the log from them."""

from __future__ import annotations

import httpx

from duet.ledger import keys, merkle
from duet.ledger.checkpoint import open_checkpoint
from duet.ledger.note import Verifier
from duet.ledger.tiles import read_leaves, root_from_level0, tile_path
from helpers import ControllerProc


def test_tiles_rebuild_the_log(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local", name="tiles")["id"]
    for i in range(3):
        owner.run(cvm, f"echo {i}")
    with httpx.Client(base_url=controller.url, timeout=30) as http:
        info = http.get("/v1/controller").json()
        prefix = http.get(f"/v1/cvms/{cvm}").json()["tlog_prefix"]
        note = http.get(prefix + "checkpoint").text
        pub = keys.public_from_b64(info["public_key"])
        cp = open_checkpoint(note, Verifier(f"duet/{info['controller_id']}", pub))

        def fetch(path: str) -> bytes:
            r = http.get(prefix + path)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"] == "application/octet-stream"
            return r.content

        leaves = read_leaves(cp.size, fetch)
        assert root_from_level0([merkle.leaf_hash(x) for x in leaves]) == cp.root_hash
        # Tiles beyond the tree, malformed paths and other spellings are 404, never a 500.
        for bad in [tile_path(0, 0, 255), tile_path(0, 1, 1), tile_path(-1, 0, cp.size + 1), "tile/0/00",
                    "tile/0/x001", "tile/9/000"]:
            r = http.get(prefix + bad)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", bad
