"""Continuity: approved builds, the handover of K to an attested successor, key rotation.

docs/continuity.md describes the design; in short:

* The controller log records every handover of the state key K (`handover`, naming the
  builds on both sides) and every build the owner approved (`controller.approve` intent +
  `build_approved`). K is made by a controller's first start and sealed to that build, so
  the builds that ever held K are the first handover's predecessor (or, with none, the
  build that answers the quote) and each handover's successor. Users judge that whole
  history (`duet verify`).
* A successor (`duet controller serve --data NEW --join URL`) asks its predecessor for a
  challenge, then sends a quote of its own enclave binding a fresh X25519 key and that
  challenge. The predecessor verifies the quote (DCAP; a SIMULATED root only when it is
  simulated itself), checks the measurement against the approved set in its controller
  log, and logs `handover_refused` (the successor gets nothing) or `handover`. Only after
  the `handover` entry is durable does it send K, its state file and its ledger, encrypted
  to the successor's key, with a fresh quote of its own over the successor's nonce and a
  signature by the controller identity key over the whole exchange. From then on the
  predecessor accepts no intent (it is *handed over*, also after a restart).
* The successor checks the predecessor's quote and signature, that what it received is the
  same controller (its identity key opens under K and is the key the predecessor's quote
  binds) and that the controller log ends with the `handover` naming it; it then seals K
  locally and serves. Before it accepts any intent it rotates every CVM's SSH client key
  (`key_rotated` in each CVM log): the predecessor's copy of K opens no door any more.

The exchange does not rely on the transport: K is encrypted to a key only the attested
successor enclave holds, and the answer is signed by the attested predecessor. RA-TLS
(when the predecessor serves `--tls`, always under SGX) is a second layer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from duet.attestation.errors import AttestationError
from duet.controller import errors
from duet.controller.replicated import ReplicatedLedger
from duet.controller.state import CvmRecord, Status
from duet.controller.statekey import StateKey
from duet.cvm.errors import CvmError
from duet.cvm.lockdown import rotate_key_command
from duet.cvm.ssh import CvmConnection, export_private, generate_client_key, import_private, public_line
from duet.ledger import entries, keys
from duet.ledger.intent import Intent
from duet.ledger.store import LedgerStore
from duet.tee.base import controller_report_data

if TYPE_CHECKING:
    from duet.controller.service import Controller

log = logging.getLogger("duet.controller")

CONTROLLER_LOG = "controller"
REQUEST_DOMAIN = b"duet-handover-request-v1"
RESPONSE_DOMAIN = b"duet-handover-response-v1"
SEAL_INFO = b"duet-handover-seal-v1"
CHALLENGE_TTL_S = 120.0
MAX_CHALLENGES = 64
MAX_LOGGED_REFUSALS_PER_MIN = 10
#: State-file meta: set on an instance that handed over (it acts no more), and on a
#: successor until every CVM key is rotated.
HANDED_OVER_META = "handed_over"
ROTATION_META = "rotation_pending"


class HandoverRefused(errors.Forbidden):
    """The would-be successor is not an approved build (or its quote does not verify)."""

    code = "handover_refused"


class HandedOver(errors.DuetError):
    """This instance handed its state key to a successor: it accepts no intent."""

    code = "handed_over"


class HandoverBusy(errors.DuetError):
    code = "rate_limited"


class JoinFailed(errors.ConfigError):
    """`--join`: the predecessor could not be attested, refused, or answered wrongly."""

    code = "join_failed"


def deposed_reason(state: Any) -> str | None:
    mark = state.get_meta(HANDED_OVER_META)
    if mark is None:
        return None
    return "this instance handed its state to a successor; it accepts no intent"


# ------------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Approval:
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    def admits(self, mrenclave: str, mrsigner: str, isv_prod_id: int, isv_svn: int) -> bool:
        if self.mrenclave is not None:
            return hmac.compare_digest(self.mrenclave, mrenclave)
        return (self.mrsigner is not None and hmac.compare_digest(self.mrsigner, mrsigner)
                and isv_prod_id == self.isv_prod_id and isv_svn >= (self.min_isv_svn or 0))


def approvals(ctl: Controller) -> list[Approval]:
    out = []
    for e in _controller_entries(ctl):
        if e["type"] == "build_approved":
            out.append(Approval(e.get("mrenclave"), e.get("mrsigner"), e.get("isv_prod_id"), e.get("min_isv_svn")))
    return out


def _controller_entries(ctl: Controller) -> list[dict[str, Any]]:
    size = ctl.ledger.tree_head(CONTROLLER_LOG).size
    return [entries.decode(leaf) for leaf in ctl.ledger.leaves(CONTROLLER_LOG, 0, size)] if size else []


async def approve_build(ctl: Controller, intent: Intent) -> dict[str, Any]:
    """`controller.approve`: one controller-log append (the intent and what it approves)."""
    args = intent.args
    approved = entries.BuildApprovedEntry(
        mrenclave=args.get("mrenclave"), mrsigner=args.get("mrsigner"),
        isv_prod_id=args.get("isv_prod_id"), min_isv_svn=args.get("min_isv_svn"))
    ctl._still_authorised(intent)
    ctl._logging(intent)
    size = ctl.ledger.tree_head(CONTROLLER_LOG).size
    first = ctl._append_controller([
        entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size),
        approved,
    ])
    return {"approved": approved.to_dict(), "controller_log_index": first + 1}


# ------------------------------------------------------------------- crypto of the exchange


def request_report_data(public_key: bytes, challenge: bytes, domain: bytes = REQUEST_DOMAIN) -> bytes:
    """What a joining enclave's quote binds; `domain` tells a handover request from a
    standby's (controller/standby.py), so one cannot be posted as the other."""
    return hashlib.sha512(domain + public_key + challenge).digest()


def _transcript(challenge: bytes, nonce: bytes, successor_pub: bytes, sender_pub: bytes, ct: bytes) -> bytes:
    return RESPONSE_DOMAIN + hashlib.sha256(
        challenge + nonce + successor_pub + sender_pub + hashlib.sha256(ct).digest()).digest()


def _seal_key(shared: bytes, successor_pub: bytes, sender_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=SEAL_INFO + successor_pub + sender_pub).derive(shared)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ------------------------------------------------------------------ predecessor side


class HandoverServer:
    """The predecessor's side: challenges, then at most one handover."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self._challenges: dict[bytes, float] = {}
        self._refusals: list[float] = []
        self._busy = asyncio.Lock()

    def challenge(self) -> dict[str, Any]:
        now = time.monotonic()
        self._challenges = {c: t for c, t in self._challenges.items() if now - t < CHALLENGE_TTL_S}
        if len(self._challenges) >= MAX_CHALLENGES:
            raise HandoverBusy("too many open handover challenges; retry later")
        c = secrets.token_bytes(32)
        self._challenges[c] = now
        return {"challenge": c.hex(), "controller_id": self.ctl.controller_id}

    def _verify_successor(self, body: Mapping[str, Any],
                          domain: bytes = REQUEST_DOMAIN) -> tuple[Any, bytes, bytes, bytes]:
        from duet.attestation import verify_sgx_quote

        try:
            challenge = bytes.fromhex(str(body["challenge"]))
            nonce = bytes.fromhex(str(body["nonce"]))
            epk = base64.b64decode(str(body["public_key"]), validate=True)
            quote = base64.b64decode(str(body["quote"]), validate=True)
            collateral = body["collateral"]
            root_b64 = body.get("simulated_root_ca")
        except (KeyError, ValueError, TypeError):
            raise errors.InvalidRequest("handover request: challenge, nonce, public_key, quote, collateral") from None
        if len(epk) != 32 or len(nonce) != 32:
            raise errors.InvalidRequest("handover request: public_key and nonce are 32 bytes")
        if self._challenges.pop(challenge, None) is None:
            raise errors.InvalidRequest("handover request: unknown or expired challenge")
        root = None
        if root_b64 is not None:
            if not self.ctl.tee.simulated:
                raise HandoverRefused("the successor's quote chains to a SIMULATED root; this controller runs on SGX")
            root = base64.b64decode(str(root_b64), validate=True)
        try:
            report = verify_sgx_quote(quote, collateral, now=self.ctl.clock.now(), root_ca_der=root)
        except (AttestationError, ValueError, TypeError) as exc:
            raise HandoverRefused(f"the successor's quote does not verify: {exc}") from None
        if self.ctl.tee.simulated != report.simulated:
            raise HandoverRefused("the successor's TEE is not of this controller's kind (SIMULATED vs SGX)")
        if not hmac.compare_digest(report.report_data, request_report_data(epk, challenge, domain)):
            raise HandoverRefused("the successor's quote does not bind its handover key and our challenge")
        return report, challenge, nonce, epk

    async def handover(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ctl = self.ctl
        # A handed-over instance may hand over again (to an approved build only, logged
        # again): a successor that failed after the handover entry is not left orphaned.
        # The last successor to rotate the CVM keys is the one that reaches them.
        ctl._check_controller_log()
        report, challenge, nonce, epk = self._verify_successor(body)
        self.refuse_unapproved(report, "handover", "handovers")
        async with self._busy:
            # Every CVM's lock: commands in flight finish, no new one starts, and no
            # append lands after the snapshot. The controller is handed over from here.
            cvm_ids = sorted(ctl._records)
            held = [ctl._lock(i) for i in cvm_ids]
            for lock in held:
                await lock.acquire()
            try:
                # No await inside: nothing else runs between the handover entry and the
                # snapshot, and from the entry on this instance accepts no intent.
                answer = self._hand_over(report, challenge, nonce, epk)
            finally:
                for lock in held:
                    lock.release()
        conns = list(ctl._conns.values())
        ctl._conns.clear()
        for conn in conns:
            await conn.close()
        return answer

    def refuse_unapproved(self, report: Any, what: str, plural: str) -> None:
        """Nothing for a build the owner did not approve (`build_approved`): the refusal is
        logged (`handover_refused`; a standby's reason says "standby: "), at most
        MAX_LOGGED_REFUSALS_PER_MIN a minute, shared by handovers and standbys."""
        if any(a.admits(report.mrenclave, report.mrsigner, report.isv_prod_id, report.isv_svn)
               for a in approvals(self.ctl)):
            return
        reason = (f"{'' if what == 'handover' else what + ': '}build MRENCLAVE {report.mrenclave[:16]}… (MRSIGNER "
                  f"{report.mrsigner[:16]}…) is not approved by the owner (duet controller approve)")
        now = time.monotonic()
        self._refusals = [t for t in self._refusals if now - t < 60] + [now]
        if len(self._refusals) > MAX_LOGGED_REFUSALS_PER_MIN:
            # Genuine quotes of unapproved builds must not grow the controller log without bound.
            raise HandoverBusy(f"too many refused {plural} in the last minute; retry later")
        self.ctl._append_controller([entries.HandoverRefusedEntry(mrenclave=report.mrenclave,
                                                                  mrsigner=report.mrsigner, reason=reason)])
        log.warning("%s refused: %s", what, reason)
        raise HandoverRefused(f"{what} refused: {reason}; nothing was handed over")

    def seal_answer(self, challenge: bytes, nonce: bytes, epk: bytes, payload: bytes) -> dict[str, Any]:
        """The answering side of the attested handshake (`attested_exchange` opens it): the
        payload encrypted to the requester's key, our quote over our identity key and its
        nonce, our signature over the whole exchange."""
        ctl = self.ctl
        eph = X25519PrivateKey.generate()
        sender_pub = _raw(eph.public_key())
        key = _seal_key(eph.exchange(X25519PublicKey.from_public_bytes(epk)), epk, sender_pub)
        seal_nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(seal_nonce, payload, RESPONSE_DOMAIN)
        quote = ctl.quote(nonce)
        signature = ctl.key.sign(_transcript(challenge, nonce, epk, sender_pub, ct))
        return {
            "controller_id": ctl.controller_id,
            "quote": quote,
            "sender_key": base64.b64encode(sender_pub).decode(),
            "seal_nonce": base64.b64encode(seal_nonce).decode(),
            "ciphertext": base64.b64encode(ct).decode(),
            "signature": base64.b64encode(signature).decode(),
        }

    def _hand_over(self, report: Any, challenge: bytes, nonce: bytes, epk: bytes) -> dict[str, Any]:
        ctl = self.ctl
        if not isinstance(ctl.ledger, LedgerStore) or isinstance(ctl.ledger, ReplicatedLedger):
            # Nothing changed yet. The replicated store (etcd) moves to a standby instead.
            raise HandoverRefused("this controller keeps its logs in a replicated store; a handover ships an "
                                  "embedded store only (docs/continuity.md)")
        mine = ctl.tee.measurement()
        # Refuse intents from here on (persisted: a restart does not undo it).
        ctl.state.set_meta(HANDED_OVER_META, json.dumps({"to_mrenclave": report.mrenclave}).encode())
        ctl.deposed = f"this instance handed its state to build {report.mrenclave[:16]}…; it accepts no intent"
        index = ctl._append_controller([entries.HandoverEntry(
            from_mrenclave=mine.get("mrenclave", ""), from_mrsigner=mine.get("mrsigner", ""),
            to_mrenclave=report.mrenclave, to_mrsigner=report.mrsigner,
            to_key_sha256=hashlib.sha256(epk).hexdigest())])
        log.warning("handing over to build %s (controller log entry %d)", report.mrenclave[:16], index)
        with tempfile.TemporaryDirectory(dir=ctl.data_dir) as tmp:
            ctl.state.snapshot(Path(tmp) / "state.sqlite")
            ctl.ledger.snapshot(Path(tmp) / "ledger.sqlite")
            assert ctl.state.cipher is not None
            payload = json.dumps({
                "state_key": base64.b64encode(ctl.state.cipher.raw()).decode(),
                "state": base64.b64encode((Path(tmp) / "state.sqlite").read_bytes()).decode(),
                "ledger": base64.b64encode((Path(tmp) / "ledger.sqlite").read_bytes()).decode(),
            }).encode()
        # The snapshot carried the handed-over mark: the successor clears it in its copy.
        return {**self.seal_answer(challenge, nonce, epk, payload), "handover_index": index}


# ---------------------------------------------------------------------- successor side


@dataclass(frozen=True)
class Received:
    state_key: StateKey
    controller_id: str


@dataclass(frozen=True)
class Answer:
    """An attested answer to a handover or standby request, opened: the sender's identity
    (bound by its quote to our nonce, and signing the whole exchange) and the payload it
    encrypted to our fresh key."""

    controller_id: str
    public_key: keys.Ed25519PublicKey
    request_key: bytes  # our X25519 key of this exchange (raw)
    payload: dict[str, Any]


def attested_exchange(url: str, tee: Any, *, path: str, domain: bytes, peer: str, what: str,
                      timeout: float) -> Answer:
    """The requesting side of the attested handshake, shared by a successor (`join`) and a
    standby (controller/standby.py): our quote binds a fresh X25519 key and the peer's
    challenge; the peer's quote must bind its identity key and our nonce, its signature
    must cover the whole exchange, and only then is the payload opened. `peer` and `what`
    name the other side and its answer in errors."""
    import httpx

    from duet.attestation import verify_sgx_quote

    eph = X25519PrivateKey.generate()
    epk = _raw(eph.public_key())
    nonce = secrets.token_bytes(32)
    # The peer's quote is checked below; the transport adds nothing we rely on.
    verify: Any = False if url.startswith("https://") else True
    try:
        with httpx.Client(base_url=url, timeout=timeout, verify=verify) as http:
            got = http.get("/v1/controller/handover/challenge")
            _raise_for(got)
            challenge = bytes.fromhex(str(got.json()["challenge"]))
            q = tee.quote(request_report_data(epk, challenge, domain))
            request = {"challenge": challenge.hex(), "nonce": nonce.hex(),
                       "public_key": base64.b64encode(epk).decode(),
                       "quote": base64.b64encode(q.quote).decode(), "collateral": q.collateral,
                       "simulated_root_ca": (base64.b64encode(q.simulated_root_ca).decode()
                                             if q.simulated_root_ca is not None else None)}
            res = http.post(path, json=request)
            _raise_for(res)
            answer = res.json()
    except httpx.HTTPError as exc:
        raise JoinFailed(f"cannot reach the {peer} at {url}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise JoinFailed(f"the {peer} at {url} answered something that is not a {what}: {exc}") from None
    try:
        aq = answer["quote"]
        a_pub_raw = base64.b64decode(aq["public_key"], validate=True)
        root = base64.b64decode(aq["simulated_root_ca"], validate=True) if aq.get("simulated_root_ca") else None
        sender_pub = base64.b64decode(answer["sender_key"], validate=True)
        ct = base64.b64decode(answer["ciphertext"], validate=True)
        seal_nonce = base64.b64decode(answer["seal_nonce"], validate=True)
        signature = base64.b64decode(answer["signature"], validate=True)
        quote_raw = base64.b64decode(aq["quote"], validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise JoinFailed(f"malformed {what}: {exc}") from None
    if root is not None and not tee.simulated:
        raise JoinFailed(f"the {peer} runs on a SIMULATED TEE; an SGX enclave does not join it")
    try:
        report = verify_sgx_quote(quote_raw, aq["collateral"], now=datetime.now(UTC), root_ca_der=root)
    except (AttestationError, ValueError, TypeError) as exc:
        raise JoinFailed(f"the {peer}'s quote does not verify: {exc}") from None
    if not hmac.compare_digest(report.report_data, controller_report_data(a_pub_raw, nonce)):
        raise JoinFailed(f"the {peer}'s quote does not bind its identity key and our nonce")
    a_pub = keys.Ed25519PublicKey.from_public_bytes(a_pub_raw)
    try:
        a_pub.verify(signature, _transcript(challenge, nonce, epk, sender_pub, ct))
    except Exception:
        raise JoinFailed(f"the {what} is not signed by the attested {peer}") from None
    key = _seal_key(eph.exchange(X25519PublicKey.from_public_bytes(sender_pub)), epk, sender_pub)
    try:
        payload = json.loads(AESGCM(key).decrypt(seal_nonce, ct, RESPONSE_DOMAIN))
    except Exception as exc:
        raise JoinFailed(f"the {what} does not open: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise JoinFailed(f"the {what} does not open: not an object")
    return Answer(keys.key_id(a_pub), a_pub, epk, payload)


def join(url: str, data_dir: Path, tee: Any, *, timeout: float = 660.0) -> Received:
    """Run the successor's side against the predecessor at `url`; on success the data dir
    holds the predecessor's state and ledger and the returned K opens them. `url` is a
    hint: what is accepted is decided by the quotes and signatures checked here. The
    timeout covers the predecessor waiting for commands in flight (at most 600 s each)."""
    if (data_dir / "ledger.sqlite").exists():
        raise JoinFailed(f"--join needs a new data dir; {data_dir} already holds a controller's ledger")
    answer = attested_exchange(url, tee, path="/v1/controller/handover", domain=REQUEST_DOMAIN,
                               peer="predecessor", what="handover answer", timeout=timeout)
    controller_id, epk, payload = answer.controller_id, answer.request_key, answer.payload
    try:
        k = StateKey(base64.b64decode(payload["state_key"], validate=True))
        state_db = base64.b64decode(payload["state"], validate=True)
        ledger_db = base64.b64decode(payload["ledger"], validate=True)
    except Exception as exc:
        raise JoinFailed(f"the handed-over state does not open: {type(exc).__name__}") from None
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming = data_dir / "incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(mode=0o700)
    for name, blob in (("state.sqlite", state_db), ("ledger.sqlite", ledger_db)):
        fd = os.open(incoming / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    _check_received(incoming, k, controller_id, epk, tee)
    # The ledger first, the state file (with K sealed inside) last: a data dir with a
    # state file is complete.
    os.replace(incoming / "ledger.sqlite", data_dir / "ledger.sqlite")
    os.replace(incoming / "state.sqlite", data_dir / "state.sqlite")
    shutil.rmtree(incoming, ignore_errors=True)
    return Received(state_key=k, controller_id=controller_id)


def _raise_for(res: Any) -> None:
    if res.status_code >= 400:
        try:
            err = res.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except Exception:
            code, message = "http_error", f"HTTP {res.status_code}"
        raise JoinFailed(f"the predecessor refused ({code}): {message}")


def _check_received(data_dir: Path, k: StateKey, controller_id: str, epk: bytes, tee: Any) -> None:
    """The received state is the attested predecessor's own, and its controller log ends
    with the handover to this very enclave (its key and its measurement)."""
    import sqlite3

    from duet.controller.statekey import CONTROLLER_KEY_LABEL, CONTROLLER_KEY_META, SEALED_META
    from duet.ledger.store import LedgerStore

    db = sqlite3.connect(data_dir / "state.sqlite")
    try:
        row = db.execute("SELECT v FROM meta WHERE k=?", (CONTROLLER_KEY_META,)).fetchone()
        db.execute("DELETE FROM meta WHERE k=?", (HANDED_OVER_META,))
        db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (ROTATION_META, b"handover"))
        # K sealed to this build, in the same transaction: the received state opens here.
        db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (SEALED_META, tee.seal(k.raw())))
        db.commit()
    finally:
        db.close()
    if row is None:
        raise JoinFailed("the handed-over state holds no controller key")
    key = keys.load_private_pem(k.decrypt(CONTROLLER_KEY_LABEL, bytes(row[0])), source="the handed-over key")
    if keys.key_id(key.public_key()) != controller_id:
        raise JoinFailed("the handed-over controller key is not the attested predecessor's")
    with LedgerStore(data_dir / "ledger.sqlite", verify_on_open=True) as ledger:
        size = ledger.tree_head(CONTROLLER_LOG).size
        last = entries.decode(ledger.leaves(CONTROLLER_LOG, size - 1, size)[0]) if size else {}
    if last.get("type") != "handover" or last.get("to_key_sha256") != hashlib.sha256(epk).hexdigest() \
            or last.get("to_mrenclave") != tee.measurement().get("mrenclave"):
        raise JoinFailed("the handed-over controller log does not end with the handover to this enclave")


# ------------------------------------------------------------------------- key rotation


async def rotate_all(ctl: Controller, reason: str) -> None:
    """Give every live CVM a new SSH client key and remove the old one (a successor does
    this before it accepts any intent). A CVM that cannot be reached keeps the pending
    mark, and the rotation is tried again at the next start."""
    failed = []
    for rec in list(ctl._records.values()):
        if rec.status != Status.READY or rec.mode == entries.Mode.DELETED:
            continue
        async with ctl._lock(rec.id):
            try:
                await rotate(ctl, rec, reason)
            except (CvmError, errors.DuetError, OSError) as exc:
                log.error("cvm %s: client key rotation failed: %s", rec.id, exc)
                # On the record: until it is rotated, an earlier holder's key may open it.
                ctl.append(rec, [entries.ErrorEntry(
                    code="key_rotation_failed",
                    message=f"the SSH client key was not rotated after the {reason}: {exc}")])
                failed.append(rec.id)
    if not failed:
        ctl.state.delete_meta(ROTATION_META)


async def rotate(ctl: Controller, rec: CvmRecord, reason: str) -> None:
    """Install the new key beside the old one, prove it works, keep it (under K), then
    remove the old one, and log it. A crash in between leaves both keys installed and the
    stored key working; the next start finishes the job."""
    old = import_private(ctl.state.client_key(rec.id))
    old_line = public_line(old)
    new = generate_client_key()
    new_line = public_line(new)
    provider = ctl._provider(rec.provider)
    host_side = getattr(provider, "set_authorized_keys", None)

    async def install(lines: list[str]) -> None:
        if host_side is not None:
            await host_side(rec.id, lines)
            return
        # A real guest: one logged builtin command (template `rotate_key v1`), over the
        # connection in force (the old key first, then the new one).
        out = await ctl.execute(rec, None, rotate_key_command(lines), timeout=60.0, action="rotate_key",
                                builtin=True)
        if out.result is None or out.result.exit_status != 0:
            raise errors.CvmNotReady(f"the key rotation command failed on CVM {rec.id} (entry {out.result_index})")

    await install([old_line, new_line])
    assert rec.host and rec.port and rec.user
    probe = CvmConnection(host=rec.host, port=rec.port, user=rec.user, client_key=new,
                          pinned_host_key=rec.host_key)
    await probe.connect()
    ctl.state.set_client_key(rec.id, export_private(new))
    stale = ctl._conns.pop(rec.id, None)
    if stale is not None:
        await stale.close()
    ctl._conns[rec.id] = probe
    await install([new_line])
    how = str(getattr(provider, "key_rotation_how", "")) if host_side is not None else \
        "the logged builtin command rotate_key (sudo, the root-owned authorized-keys file)"
    ctl.append(rec, [entries.KeyRotatedEntry(
        client_key=new_line, previous_key_sha256=entries.sha256_hex(old_line), reason=reason,
        how=how or rec.provider, controller_log_size=ctl.ledger.tree_head(CONTROLLER_LOG).size)])
    ctl._save(rec)
