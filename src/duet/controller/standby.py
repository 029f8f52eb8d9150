"""A standby controller on the replicated store: it holds K, not the lease.

docs/continuity.md ("Standby and failover") describes the design; in short:

* `duet controller serve --data D2 --store etcd://... --standby-of URL` joins the primary
  at URL by the handover's attested handshake (controller/continuity.py), in a mode of its
  own: the standby's quote binds a fresh X25519 key and the primary's challenge under the
  domain `duet-standby-request-v1` (so a standby's request cannot be posted as a
  handover). The primary checks the quote and that the build is approved in its
  controller log (`build_approved`), exactly as for a handover; an unapproved build gets
  nothing and the refusal is logged (`handover_refused`, reason "standby: ..."). An
  approved one is logged first (`standby_joined`: its measurement and the digest of its
  handshake key), then receives, encrypted to that key and signed by the attested
  primary: K, the key of the state records in etcd, the controller key (under K), the
  witnesses in force, and the controller-log checkpoint that includes `standby_joined`
  with that entry's inclusion proof. The primary keeps K and its lease: nothing else
  changes for it.
* The standby seals K to itself in a state file of its own (nothing else: CVM records
  and client keys come from etcd at promotion), serves only `GET /v1/controller` (its
  role) and answers everything else `503 standby`. It follows the primary's signed
  controller-log checkpoint (each new one must be consistent with the one before) and
  watches the primary's lease key in etcd.
* When the lease key is gone (the primary died, froze or lost etcd for a TTL), the
  standby stops its small server and opens the store as the primary
  (controller/serve.py, controller/promotion.py): the fenced lease, the verified replica
  (against the checkpoint it followed and the witnesses' sizes), a `promote` entry,
  interrupted commands closed, every CVM key rotated, then it serves.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from duet.controller import continuity, errors
from duet.controller.continuity import (
    CONTROLLER_LOG,
    HandoverRefused,
    JoinFailed,
)
from duet.controller.replicated import _STATE_KEY_META, ReplicatedLedger, state_key_of
from duet.controller.state import StateStore
from duet.controller.statekey import (
    CONTROLLER_KEY_LABEL,
    CONTROLLER_KEY_META,
    SEALED_META,
    UPGRADED_META,
    StateKey,
    open_state_key,
)
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from duet.ledger.errors import LedgerError
from duet.ledger.note import Verifier
from duet.ledger.store import TreeHead
from duet.tee.base import TeeBackend

if TYPE_CHECKING:
    from duet.controller.service import Controller

log = logging.getLogger("duet.controller.standby")

STANDBY_REQUEST_DOMAIN = b"duet-standby-request-v1"
#: State-file meta of a standby: what it learned at joining and has verified since.
STANDBY_META = "standby"
#: Seconds between looks at the lease key, and between follows of the primary.
LEASE_POLL_S = 0.25
FOLLOW_S = 1.0
MAX_JOINS_PER_MIN = 10
_JOINS: weakref.WeakKeyDictionary[Controller, list[float]] = weakref.WeakKeyDictionary()


class StandbyOnly(errors.DuetError):
    """This instance is a standby: it holds K but not the lease, and accepts nothing."""

    code = "standby"


# ------------------------------------------------------------------ primary side


async def admit(ctl: Controller, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/controller/standby`: verify the would-be standby, log it, send it K."""
    ctl._check_controller_log()
    if ctl.deposed is not None:
        raise continuity.HandedOver(ctl.deposed)
    if not isinstance(ctl.ledger, ReplicatedLedger):
        raise HandoverRefused("a standby needs the replicated store (--store etcd://); this controller keeps its "
                              "logs in its data dir: upgrade by handover instead (serve --join)")
    server = ctl.handover
    report, challenge, nonce, epk = server._verify_successor(body, STANDBY_REQUEST_DOMAIN)
    server.refuse_unapproved(report, "standby", "joins")
    now = time.monotonic()
    joins = _JOINS.setdefault(ctl, [])
    joins[:] = [t for t in joins if now - t < 60]
    if len(joins) >= MAX_JOINS_PER_MIN:
        # Each join is a controller-log entry: a host running many approved enclaves must
        # not grow the log without bound.
        raise continuity.HandoverBusy("too many standbys joined in the last minute; retry later")
    joins.append(now)
    key_sha256 = hashlib.sha256(epk).hexdigest()
    # No await from here on: the entry is durable (in etcd) before anything leaves, and
    # the checkpoint sent is the one that ends with it.
    mine = ctl.tee.measurement()
    index = ctl._append_controller([entries.StandbyJoinedEntry(
        from_mrenclave=mine.get("mrenclave", ""), from_mrsigner=mine.get("mrsigner", ""),
        to_mrenclave=report.mrenclave, to_mrsigner=report.mrsigner, to_key_sha256=key_sha256)])
    head = ctl.ledger.tree_head(CONTROLLER_LOG, index + 1)
    note = sign_checkpoint(Checkpoint(ctl.controller_origin, index + 1, head.root_hash), ctl.signer)
    leaf = ctl.ledger.leaves(CONTROLLER_LOG, index, index + 1)[0]
    proof = ctl.ledger.inclusion_proof(CONTROLLER_LOG, index, index + 1)
    assert ctl.state.cipher is not None
    blob = ctl.state.get_meta(CONTROLLER_KEY_META)
    assert blob is not None
    config = ctl.witnessing.config
    payload = json.dumps({
        "state_key": base64.b64encode(ctl.state.cipher.raw()).decode(),
        "store_key": base64.b64encode(state_key_of(ctl.state)).decode(),
        "controller_key": base64.b64encode(blob).decode(),
        "checkpoint": note,
        "index": index,
        "leaf": base64.b64encode(leaf).decode(),
        "proof": [base64.b64encode(h).decode() for h in proof],
        "witnesses": [w.to_json() for w in config.witnesses],
        "quorum": config.quorum,
    }).encode()
    log.warning("standby of build %s joined (controller log entry %d): it holds the state key, not the lease",
                report.mrenclave[:16], index)
    return {**server.seal_answer(challenge, nonce, epk, payload), "standby_index": index}


def add_standby_routes(app: FastAPI, controller: Controller) -> None:
    from duet.controller.handover_api import MAX_HANDOVER_REQUEST, read_json_object

    @app.post("/v1/controller/standby")
    async def standby_join(request: Request) -> dict[str, Any]:
        body = await read_json_object(request, MAX_HANDOVER_REQUEST, "standby request")
        return await admit(controller, body)


# ------------------------------------------------------------------ standby side


@dataclass
class StandbyInfo:
    """What a standby knows (kept in its state file, `meta.standby`)."""

    controller_id: str
    public_key: str  # base64 Ed25519, the controller identity key
    key_sha256: str  # digest of its handshake key, named by `standby_joined` and `promote`
    checkpoint: str  # the newest controller-log checkpoint it verified
    witnesses: list[dict[str, str]]
    quorum: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StandbyInfo:
        d = json.loads(raw)
        return cls(str(d["controller_id"]), str(d["public_key"]), str(d["key_sha256"]), str(d["checkpoint"]),
                   [{"vkey": str(w["vkey"]), "url": str(w["url"])} for w in d["witnesses"]], int(d["quorum"]))

    @property
    def verifier(self) -> Verifier:
        return Verifier(f"duet/{self.controller_id}", keys.public_from_b64(self.public_key))

    @property
    def origin(self) -> str:
        return f"duet/{self.controller_id}/{CONTROLLER_LOG}"

    def known(self) -> Checkpoint:
        return open_checkpoint(self.checkpoint, self.verifier, expected_origin=self.origin)

    def known_heads(self, log_id: str) -> TreeHead | None:
        if log_id != CONTROLLER_LOG:
            return None
        cp = self.known()
        return TreeHead(cp.size, cp.root_hash)


def join_as_standby(url: str, data_dir: Path, tee: TeeBackend, *, timeout: float = 120.0) -> StandbyInfo:
    """The standby's side of the handshake. On success the data dir holds a state file
    with K sealed to this build, the controller key (under K), the store key and
    `meta.standby`; nothing else."""
    answer = continuity.attested_exchange(url, tee, path="/v1/controller/standby", domain=STANDBY_REQUEST_DOMAIN,
                                          peer="primary", what="standby answer", timeout=timeout)
    controller_id, a_pub, epk, payload = answer.controller_id, answer.public_key, answer.request_key, answer.payload
    try:
        k = StateKey(base64.b64decode(payload["state_key"], validate=True))
        store_key = base64.b64decode(payload["store_key"], validate=True)
        blob = base64.b64decode(payload["controller_key"], validate=True)
        note, index = str(payload["checkpoint"]), int(payload["index"])
        leaf = base64.b64decode(payload["leaf"], validate=True)
        proof = [base64.b64decode(h, validate=True) for h in payload["proof"]]
        witnesses = [{"vkey": str(w["vkey"]), "url": str(w["url"])} for w in payload["witnesses"]]
        quorum = int(payload["quorum"])
    except Exception as exc:
        raise JoinFailed(f"the standby answer does not open: {type(exc).__name__}") from None
    # What we received is the attested controller's: its identity key opens under K.
    ctl_key = keys.load_private_pem(k.decrypt(CONTROLLER_KEY_LABEL, blob), source="the received controller key")
    if keys.key_id(ctl_key.public_key()) != controller_id or len(store_key) != 32:
        raise JoinFailed("the received controller key is not the attested primary's")
    key_sha256 = hashlib.sha256(epk).hexdigest()
    info = StandbyInfo(controller_id, keys.public_b64(a_pub), key_sha256, note, witnesses, quorum)
    # The controller log, signed by that key, ends with `standby_joined` naming this
    # enclave: the primary logged it before it sent anything.
    try:
        cp = info.known()
        e = entries.decode(leaf)
        merkle.verify_inclusion(merkle.leaf_hash(leaf), index, cp.size, proof, cp.root_hash)
    except (LedgerError, ValueError) as exc:
        raise JoinFailed(f"the controller-log checkpoint of the standby answer does not verify: {exc}") from None
    if index != cp.size - 1 or e.get("type") != "standby_joined" or e.get("to_key_sha256") != key_sha256 \
            or e.get("to_mrenclave") != tee.measurement().get("mrenclave"):
        raise JoinFailed("the controller log does not end with the standby_joined entry for this enclave")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming = data_dir / "incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(mode=0o700)
    state = StateStore(incoming / "state.sqlite")
    try:
        state.set_meta(SEALED_META, tee.seal(k.raw()))
        state.set_meta(UPGRADED_META, b"1")
        state.set_meta(CONTROLLER_KEY_META, blob)
        state.cipher = k
        state.set_secret(_STATE_KEY_META, store_key)
        state.set_meta(STANDBY_META, info.to_json())
    finally:
        state.close()
    # A data dir with a state file is complete (a restart skips the handshake).
    os.replace(incoming / "state.sqlite", data_dir / "state.sqlite")
    shutil.rmtree(incoming, ignore_errors=True)
    log.warning("joined controller %s as a standby (controller log entry %d)", controller_id, index)
    return info


# ------------------------------------------------------------------ while standing by


def standby_app(info: StandbyInfo, url: str, tee: TeeBackend, status: dict[str, Any]) -> Any:
    """What a standby serves: its role, and `503 standby` for everything else."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from duet.controller.app import error_response

    async def controller_info(_: Request) -> JSONResponse:
        return JSONResponse({"role": "standby", "controller_id": info.controller_id, "tee": tee.kind,
                             "simulated": tee.simulated, "measurement": tee.measurement(), "standby_of": url,
                             **status})

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def refuse(_: Request) -> JSONResponse:
        return error_response(StandbyOnly.code, f"this instance is a standby of controller {info.controller_id} "
                                                f"(primary {url}): it accepts no intent and serves no log until "
                                                "the primary's lease expires and it is promoted")

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    return Starlette(routes=[Route("/v1/controller", controller_info), Route("/healthz", healthz),
                             Route("/{path:path}", refuse, methods=methods)])


class StandbyRun:
    """`serve --standby-of URL`: join (once), then stand by until the primary's lease is
    free. `build_controller` calls it once the TEE is up; the info it returns is what the
    promotion checks the store against."""

    def __init__(self, url: str, data_dir: Path, store: str, sock: socket.socket,
                 serve_config: Callable[[Any, socket.socket], Any]) -> None:
        self.url, self.data_dir, self.store, self.sock = url.rstrip("/"), data_dir, store, sock
        self._serve_config = serve_config
        self.info: StandbyInfo | None = None

    def __call__(self, tee: TeeBackend) -> StandbyInfo:
        if not (self.data_dir / "state.sqlite").exists():
            self.info = join_as_standby(self.url, self.data_dir, tee)
        state = StateStore(self.data_dir / "state.sqlite")
        try:
            raw = state.get_meta(STANDBY_META)
            if raw is None:
                raise errors.ConfigError(f"{self.data_dir} holds a controller that is not a standby: "
                                         "start it without --standby-of")
            state.cipher = open_state_key(state, tee)  # the seal opens here (or a clear error)
            info = StandbyInfo.from_json(raw)
            asyncio.run(self._stand_by(info, state, tee))
            self.info = StandbyInfo.from_json(state.get_meta(STANDBY_META) or raw)
        finally:
            state.close()
        return self.info

    async def _stand_by(self, info: StandbyInfo, state: StateStore, tee: TeeBackend) -> None:
        from duet.controller.etcd import EtcdClient, EtcdUnavailable, parse_store_url
        from duet.controller.shutdown import PromptServer

        host, port = parse_store_url(self.store)
        etcd = EtcdClient(host, port)
        lease_key = f"duet/{info.controller_id}/primary".encode()
        status: dict[str, Any] = {"known_controller_log_size": info.known().size}
        server = PromptServer(self._serve_config(standby_app(info, self.url, tee, status), self.sock))
        task = asyncio.create_task(server.serve(sockets=[self.sock.dup()]))
        print(f"duet controller: standby of controller {info.controller_id} (primary {self.url}), "
              f"watching its lease in {self.store}", file=sys.stderr, flush=True)
        next_follow = 0.0
        try:
            while True:
                if task.done():
                    # Stopped (SIGTERM) while standing by: nothing was taken over.
                    raise SystemExit(0)
                try:
                    free = await asyncio.to_thread(etcd.get, lease_key) is None
                except EtcdUnavailable as exc:
                    log.warning("standby: etcd unreachable: %s", exc)
                    free = False  # no promotion without seeing the store
                if free:
                    log.warning("standby: the primary's lease is gone from etcd; taking over")
                    return
                if time.monotonic() >= next_follow:
                    next_follow = time.monotonic() + FOLLOW_S
                    info = await asyncio.to_thread(self._follow, info, state)
                    status["known_controller_log_size"] = info.known().size
                await asyncio.sleep(LEASE_POLL_S)
        finally:
            server.should_exit = True
            await task
            etcd.close()

    def _follow(self, info: StandbyInfo, state: StateStore) -> StandbyInfo:
        """Fetch the primary's newest controller-log checkpoint; keep it if it is signed by
        the controller key and consistent with the one known (a proof the primary gives)."""
        import httpx

        # The checkpoint's signature decides, not the channel.
        verify: Any = False if self.url.startswith("https://") else True
        try:
            with httpx.Client(base_url=self.url, timeout=5.0, verify=verify) as http:
                res = http.get("/v1/controller/log/checkpoint")
                if res.status_code != 200:
                    return info
                note = res.text
                new = open_checkpoint(note, info.verifier, expected_origin=info.origin)
                old = info.known()
                if new.size <= old.size:
                    if new.size == old.size and new.root_hash != old.root_hash:
                        log.error("standby: the primary signed two controller logs of size %d (a fork)", new.size)
                    return info
                got = http.get("/v1/controller/log/proofs/consistency", params={"old": old.size, "new": new.size})
                proof = [base64.b64decode(h, validate=True) for h in got.json()["hashes"]]
                merkle.verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
        except httpx.HTTPError:
            return info  # the primary is down or busy: the lease decides, not this
        except (LedgerError, ValueError, KeyError, TypeError) as exc:
            log.error("standby: the primary's controller-log checkpoint does not extend the one known: %s", exc)
            return info
        info = dataclasses.replace(info, checkpoint=note)
        state.set_meta(STANDBY_META, info.to_json())
        return info


def check_standby_flags(*, tee: str, store: str | None, join: str | None, tls: bool) -> None:
    if store is None:
        raise errors.ConfigError("--standby-of needs --store etcd://HOST:PORT: a standby takes over the primary's "
                                 "lease and logs there (docs/continuity.md)")
    if join is not None:
        raise errors.ConfigError("--standby-of and --join exclude each other (a standby keeps the primary running)")
    if tee == "gramine":
        raise errors.ConfigError("under --tee gramine the command line is fixed by the manifest: --standby-of is "
                                 "not taken from it (docs/continuity.md)")
    if tls:
        raise errors.ConfigError("--standby-of with --tls is not supported yet: the standby's waiting server is "
                                 "plain HTTP on loopback (docs/continuity.md)")
