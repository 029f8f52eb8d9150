"""A malicious controller as a test double: it holds the *real* controller key and the
real SIMULATED SGX platform of a recorded controller, so everything it serves (quotes,
checkpoints) is validly signed, while the log itself is whatever the test makes it
(rewritten, rolled back, padded, endless)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from duet.client.http import Http
from duet.controller.state import StateStore
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
from duet.ledger.note import Signer
from duet.ledger.store import LedgerStore
from duet.tee.base import controller_report_data
from duet.tee.simulated import SimulatedTee

URL = "http://evil.test:6037"


@dataclass
class Recorded:
    """A controller's data dir after an honest life, read back from disk."""

    data: Path
    cvm: str
    owner_key: keys.Ed25519PrivateKey
    leaves: list[bytes]
    #: Indices that mark interesting prefixes of the log (see the fixture).
    marks: dict[str, int] = field(default_factory=dict)
    #: The controller log (owner keys), served under /v1/controller/log/.
    controller_leaves: list[bytes] = field(default_factory=list)

    def controller_key(self) -> keys.Ed25519PrivateKey:
        from duet.controller.statekey import CONTROLLER_KEY_LABEL, open_state_key
        from duet.tee.simulated import SimulatedTee

        state = StateStore(self.data / "state.sqlite")
        try:
            k = open_state_key(state, SimulatedTee(self.data / "tee"))  # the secrets are under K
            blob = state.get_meta("controller_key")
        finally:
            state.close()
        assert blob is not None
        return keys.load_private_pem(k.decrypt(CONTROLLER_KEY_LABEL, blob))

    def decoded(self, n: int | None = None) -> list[dict[str, Any]]:
        return [entries.decode(leaf) for leaf in self.leaves[: n if n is not None else len(self.leaves)]]


def read_recorded(data: Path, cvm: str, owner_key: keys.Ed25519PrivateKey) -> Recorded:
    store = LedgerStore(data / "ledger.sqlite")
    try:
        leaves = store.leaves(cvm, 0, store.tree_head(cvm).size)
        ctl = store.leaves("controller", 0, store.tree_head("controller").size) if store.has_log("controller") \
            else []
    finally:
        store.close()
    return Recorded(data, cvm, owner_key, leaves, controller_leaves=ctl)


class EvilController:
    """Serves `self.logs[cvm]` (mutable: the test rewrites it between runs) with fresh
    signatures by the real key. Hooks replace any route's answer."""

    def __init__(self, rec: Recorded, key: keys.Ed25519PrivateKey | None = None) -> None:
        self.rec = rec
        self.key = key or rec.controller_key()
        self.cid = keys.key_id(self.key.public_key())
        self.tee = SimulatedTee(rec.data / "tee")
        self.logs: dict[str, list[bytes]] = {rec.cvm: list(rec.leaves), "controller": list(rec.controller_leaves)}
        #: size to claim in the checkpoint (None: the real size)
        self.claimed_size: int | None = None
        #: extra lines appended to the checkpoint note (signature padding)
        self.note_padding = ""
        self.hooks: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.requests = 0

    # -------------------------------------------------------------- what it signs

    def checkpoint_note(self, cvm: str) -> str:
        leaves = self.logs[cvm]
        size = len(leaves) if self.claimed_size is None else self.claimed_size
        root = merkle.root([merkle.leaf_hash(leaf) for leaf in leaves]) if self.claimed_size is None \
            else b"\x07" * 32
        cp = Checkpoint(origin=f"duet/{self.cid}/{cvm}", size=size, root_hash=root)
        return sign_checkpoint(cp, Signer(f"duet/{self.cid}", self.key)) + self.note_padding

    def info(self) -> dict[str, Any]:
        return {"controller_id": self.cid, "public_key": keys.public_b64(self.key.public_key()),
                "tee": "simulated", "simulated": True, "version": "evil", "measurement": self.tee.measurement()}

    def quote(self, nonce: bytes) -> dict[str, Any]:
        raw = keys.raw_public(self.key.public_key())
        q = self.tee.quote(controller_report_data(raw, nonce))
        assert q.simulated_root_ca is not None
        return {"tee": "simulated", "simulated": True, "quote": base64.b64encode(q.quote).decode(),
                "collateral": q.collateral, "nonce": nonce.hex(), "public_key": base64.b64encode(raw).decode(),
                "simulated_root_ca": base64.b64encode(q.simulated_root_ca).decode()}

    # -------------------------------------------------------------- HTTP

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        url = urlsplit(str(request.url))
        path = url.path
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        for prefix, hook in self.hooks.items():
            if path.endswith(prefix):
                return hook(request)
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "controller", "log"]:  # served like a CVM log named "controller"
            parts = ["v1", "cvms", "controller", *parts[3:]]
        if path == "/v1/controller":
            return httpx.Response(200, json=self.info())
        if path == "/v1/controller/quote":
            return httpx.Response(200, json=self.quote(bytes.fromhex(q["nonce"])))
        if len(parts) >= 3 and parts[:2] == ["v1", "cvms"]:
            cvm = parts[2]
            leaves = self.logs[cvm]
            if len(parts) == 3:
                return httpx.Response(200, json={"id": cvm, "tree_size": len(leaves)})
            if parts[3] == "checkpoint":
                return httpx.Response(200, text=self.checkpoint_note(cvm))
            if parts[3] == "entries":
                start, end = int(q.get("start", 0)), int(q.get("end", len(leaves)))
                stop = min(end, len(leaves), start + 1000)
                return httpx.Response(200, json={"tree_size": len(leaves), "entries": [
                    {"index": i, "leaf": base64.b64encode(leaves[i]).decode()} for i in range(start, stop)]})
            if parts[3:] == ["proofs", "consistency"]:
                hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
                proof = merkle.consistency_proof(hashes, int(q["old"]), int(q["new"]))
                return httpx.Response(200, json={"hashes": [base64.b64encode(h).decode() for h in proof]})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": path}})

    def http(self, limits: Any = None, url: str = URL) -> Http:
        extra = {} if limits is None else {"limits": limits}
        return Http(url, transport=httpx.MockTransport(self.handle), trust_simulated=True, **extra)

    # -------------------------------------------------------------- log surgery

    def sign_intent(self, op: str, args: dict[str, Any], *, key: keys.Ed25519PrivateKey | None = None,
                    cvm: str | None = None) -> dict[str, Any]:
        from duet.ledger.intent import sign_intent

        signer = key or self.rec.owner_key
        jws = sign_intent(signer, op=op, aud=self.cid, args=args, cvm=cvm, iat=1_800_000_000)
        return {"v": 1, "type": "intent", "jws": jws, "op": op, "kid": keys.key_id(signer.public_key()),
                "time": "2026-11-30T12:00:00.000000Z"}


def encode(entry: dict[str, Any]) -> bytes:
    return entries.encode(entry)


def dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()
