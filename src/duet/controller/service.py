"""The Controller service: CVM lifecycle, modes, commands and policy, all logged.

Log discipline (docs/invariants.md, invariants 1, 4, 5):
- an authenticated intent is written to the CVM's log (with what it causes) *before* the
  controller acts on it: the `intent` and `command` entries are durably committed in one
  transaction before the command goes out over SSH, the `result` after;
- a valid intent that the mode or policy forbids is logged as `rejected` and answered 403;
- an intent that fails authentication changes nothing (it never reaches this class's logs).

Commands on one CVM are serialised by a per-CVM lock; different CVMs run concurrently.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from duet import __version__
from duet.attestation import cvm_kinds
from duet.attestation.errors import AttestationError
from duet.controller import continuity, errors, stdin, streaming
from duet.controller.evidence import CvmPort, EvidenceCollector
from duet.controller.providers_config import LOCAL_REFUSED, ProviderSetup
from duet.controller.replay import KEEP_S, ReplayGuard
from duet.controller.state import CvmRecord, StateStore, Status
from duet.cvm.errors import CvmError, CvmNotFound, CvmUnreachable, HostKeyMismatch
from duet.cvm.provider import Provider
from duet.cvm.ssh import (
    CvmConnection,
    RunResult,
    connect_after_boot,
    export_private,
    generate_client_key,
    import_private,
    public_line,
)
from duet.ledger import entries, keys, operations
from duet.ledger.backend import LogStore
from duet.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from duet.ledger.entries import OWNER_MODES, Mode
from duet.ledger.errors import LedgerError
from duet.ledger.intent import (
    Intent,
    StaleIntent,
    UnknownKey,
    check_claims,
    logged_time_problem,
    parse_intent,
    verify_signature,
)
from duet.ledger.note import Signer, Verifier, verifier_key_string
from duet.ledger.policy import DEFAULT_POLICY, Action, Policy, parse_policy
from duet.tee.base import TeeBackend, controller_report_data
from duet.tee.clock import TrustedClock

#: What a CVM id looks like (`secrets.token_hex(8)`); no name may look like one.
_LOOKS_LIKE_ID = re.compile(r"[0-9a-f]{16}")

log = logging.getLogger("duet.controller")

VERSION = __version__
DEFAULT_OUTPUT_CAP = 1 << 20
#: A logged intent's nonce is remembered until the ledger has grown by this many leaves
#: (and its iat has left the window): far more than any clock skew lets pass.
NONCE_GROWTH = 100_000
#: The controller log's id in the ledger (CVM ids are 16 hex digits, so it cannot clash).
CONTROLLER_LOG = "controller"


@dataclass(frozen=True)
class KeyChange:
    """One owner-key change in the controller log: the intent that authorised it (None
    for the key set given at first start with `--owner-key`), the keys, and the
    controller-log size once it was appended."""

    jws: str | None
    op: str
    kid: str
    keys: tuple[str, ...]
    size: int


def controller_log_keys(ledger: LogStore) -> list[KeyChange]:
    """Every owner-key change the controller log holds, in order. The controller log is
    small (claims and key changes), so it is read whole."""
    if not ledger.has_log(CONTROLLER_LOG):
        return []
    size = ledger.tree_head(CONTROLLER_LOG).size
    changes: list[KeyChange] = []
    prev: dict[str, Any] | None = None
    for i, leaf in enumerate(ledger.leaves(CONTROLLER_LOG, 0, size) if size else []):
        e = entries.decode(leaf)
        if e["type"] == "owner_keys":
            ks = tuple(sorted(str(k) for k in e["keys"]))  # type: ignore[attr-defined]
            if prev is not None and prev["type"] == "intent" and prev["op"] == "owner.keys":
                changes.append(KeyChange(str(prev["jws"]), str(prev["op"]), str(prev["kid"]), ks, i + 1))
            else:
                changes.append(KeyChange(None, "", "", ks, i + 1))
        prev = e
    return changes


@dataclass(frozen=True)
class CommandOutcome:
    cvm: str
    command_index: int
    result_index: int
    action: str | None
    result: RunResult | None
    interrupted: str | None
    tree_size: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cvm": self.cvm,
            "command_index": self.command_index,
            "result_index": self.result_index,
            "action": self.action,
            "tree_size": self.tree_size,
            "interrupted": self.interrupted,
        }
        r = self.result
        if r is not None:
            out.update(
                exit_status=r.exit_status,
                signal=r.signal,
                timed_out=r.timed_out,
                duration_ms=round(r.duration_ms, 3),
                stdout=base64.b64encode(r.stdout).decode(),
                stderr=base64.b64encode(r.stderr).decode(),
                stdout_bytes=r.stdout_bytes,
                stderr_bytes=r.stderr_bytes,
                stdout_sha256=r.stdout_sha256,
                stderr_sha256=r.stderr_sha256,
                stdout_truncated=r.stdout_truncated,
                stderr_truncated=r.stderr_truncated,
            )
        return out


def result_entry(command_index: int, r: RunResult) -> entries.ResultEntry:
    return entries.ResultEntry(
        command_index=command_index,
        exit_status=r.exit_status,
        signal=r.signal,
        explicit_nulls=frozenset({"signal"}),
        timed_out=r.timed_out,
        duration_ms=round(r.duration_ms, 3),
        stdout=entries.StreamOutput.captured(r.stdout, r.stdout_bytes, r.stdout_sha256, r.stdout_truncated),
        stderr=entries.StreamOutput.captured(r.stderr, r.stderr_bytes, r.stderr_sha256, r.stderr_truncated),
    )


class _Port:
    """A collector's view of one CVM (`evidence.CvmPort`)."""

    def __init__(self, ctl: Controller, rec: CvmRecord) -> None:
        self._ctl, self._rec = ctl, rec

    @property
    def rec(self) -> CvmRecord:
        return self._rec

    async def execute(self, command: str, *, timeout: float, action: str, intent_index: int | None) -> CommandOutcome:
        return await self._ctl.execute(self._rec, None, command, timeout=timeout, action=action,
                                       intent_index=intent_index, builtin=True)

    def append(self, items: Sequence[entries.Entry]) -> int:
        return self._ctl.append(self._rec, items)

    def client_key_line(self) -> str:
        return self._ctl.client_public_line(self._rec.id)

    @property
    def clock(self) -> TrustedClock:
        return self._ctl.clock


def _rfc3339(when: datetime) -> str:
    """The entry time format (`entries.now_rfc3339`): fixed width, so times compare as strings."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Controller:
    def __init__(
        self,
        data_dir: Path,
        *,
        tee: TeeBackend,
        key: Ed25519PrivateKey,
        state: StateStore,
        ledger: LogStore,
        providers: Mapping[str, Provider],
        default_policy: str = DEFAULT_POLICY,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        evidence: Mapping[str, EvidenceCollector] | None = None,
        clock: TrustedClock | None = None,
        setup: ProviderSetup | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.tee = tee
        self.key = key
        self.public_key = key.public_key()
        self.controller_id = keys.key_id(self.public_key)
        self.note_name = f"duet/{self.controller_id}"
        self.signer = Signer(self.note_name, key)
        self.state = state
        self.ledger = ledger
        self.providers = dict(providers)
        self.default_policy = default_policy
        self.output_cap = output_cap
        #: The evidence/lockdown collector of each provider. A provider without one cannot
        #: provision: a CVM that cannot prove its state is never made usable.
        self.evidence = dict(evidence or {})
        #: Never earlier than an authenticated time we verified (tee/clock.py): for every
        #: certificate, CRL and collateral validity check, and as a floor for entry times.
        self.clock = clock or TrustedClock()
        self._last_time: dict[str, str] = {}
        self._records: dict[str, CvmRecord] = {r.id: r for r in state.cvms()}
        for rec in self._records.values():
            self._fill_offer(rec)
        self._locks: dict[str, asyncio.Lock] = {}
        self._conns: dict[str, CvmConnection] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self.replay = ReplayGuard()
        self._owner_key_cache: dict[str, Ed25519PublicKey] | None = None
        #: Owner keys in force come from the controller log, never from the state file
        #: (a cache the host can roll back on its own).
        self._key_changes: list[KeyChange] = self._open_controller_log()
        #: Per CVM: the controller-log size its log's owner keys are current with.
        self._synced: dict[str, int] = {}
        #: (nonce, iat) of intents about to be logged, by JWS (see `_logging`).
        self._pending_nonces: dict[str, tuple[str, int]] = {}
        #: Called with the seconds from a command's durable entry to its logged result.
        self.on_command: Callable[[float], None] | None = None
        #: Set once start-up recovery has finished (`/readyz`).
        self.ready = False
        #: CVMs whose log was shown to be older than a checkpoint we signed: never served.
        self._rolled_back: dict[str, str] = {}
        from duet.controller.witnessing import Witnessing

        #: `heads` entries and witness cosignatures of the controller log (witnessing.py).
        self.witnessing = Witnessing(self)
        #: Wakes the readers that follow a running command's log (controller/streaming.py).
        self.watch = streaming.LogWatch()
        #: Why this instance accepts no intent (it handed its state to a successor).
        self.deposed: str | None = continuity.deposed_reason(state)
        self.handover = continuity.HandoverServer(self)
        #: Providers, settings and credentials by intent (`controller/providers_config.py`).
        self.setup = setup or ProviderSetup(state, in_enclave=False)
        self.setup.bind(self)

    def _open_controller_log(self) -> list[KeyChange]:
        """Create the controller log on first start; derive the owner keys in force from
        it. A data dir that predates the controller log (or a first start with
        `--owner-key`) has its keys only in the state file: they become the log's first
        key set, once. From then on the log decides and the state file follows it."""
        if not self.ledger.has_log(CONTROLLER_LOG):
            self.ledger.create_log(CONTROLLER_LOG)
        changes = controller_log_keys(self.ledger)
        cached = self.state.owner_keys()
        if not changes and cached:
            self._append_controller([entries.OwnerKeysEntry(keys=tuple(sorted(cached.values())))])
            changes = controller_log_keys(self.ledger)
        in_force = self._keys_of(changes)
        if in_force != cached:
            if cached:
                log.warning("state file's owner keys disagree with the controller log; repaired from the log")
            self.state.set_owner_keys(in_force)
        return changes

    @staticmethod
    def _keys_of(changes: Sequence[KeyChange]) -> dict[str, str]:
        if not changes:
            return {}
        return {keys.key_id(keys.public_from_b64(b)): b for b in changes[-1].keys}

    def _append_controller(self, items: Sequence[entries.Entry]) -> int:
        """Append to the controller log (one transaction); return the first index. No
        await happens inside, so appends never interleave."""
        now, host_time = self._entry_time(CONTROLLER_LOG)
        self._check_logged_times(items, now, copies=False)
        clamped = {"host_time": host_time} if host_time else {}
        leaves = [dataclasses.replace(item, time=now, extra={**item.extra, **clamped}).encode() for item in items]
        nonces = self._nonces_of(items)
        head = self.ledger.append(CONTROLLER_LOG, leaves, nonces=nonces, forget=self._forget() if nonces else None)
        self._last_time[CONTROLLER_LOG] = now
        return head.size - len(leaves)

    def controller_log_checkpoint(self) -> str:
        """The newest checkpoint, with every witness cosignature collected for its size."""
        self._check_controller_log()
        return self.witnessing.cosigned_note(self.ledger.tree_head(CONTROLLER_LOG).size)

    @property
    def controller_origin(self) -> str:
        return f"duet/{self.controller_id}/controller"

    def _fill_offer(self, rec: CvmRecord) -> None:
        """Records written before providers declared their offers: take the declaration
        of the provider for the TEE the record names or, for a label the provider never
        delivered (`local` accepted `tdx` and ran SIMULATED SEV-SNP), what it always
        delivers: its default. The log's genesis is unchanged."""
        if rec.evidence_kind is not None or rec.tee == cvm_kinds.CvmKind.NONE:
            return
        provider = self.providers.get(rec.provider)
        offers = provider.tees if provider is not None else {}
        offer = offers.get(rec.tee) or next(iter(offers.values()), None)
        if offer is not None:
            rec.evidence_kind, rec.instance_binding = offer.evidence_kind, offer.binding.value

    # ---------------------------------------------------------------- identity / read side

    def info(self) -> dict[str, Any]:
        return {
            "controller_id": self.controller_id,
            "public_key": keys.public_b64(self.public_key),
            "note_verifier_key": verifier_key_string(self.note_name, self.public_key),
            "origin_prefix": f"duet/{self.controller_id}/",
            "tee": self.tee.kind,
            "simulated": self.tee.simulated,
            "measurement": self.tee.measurement(),
            "version": VERSION,
            "owner_keys": sorted(self._keys_of(self._key_changes).values()),
            # The trusted clock's lower bound (tee/clock.py): how far back the host clock
            # can no longer take certificate and collateral checks.
            "time_lower_bound": self.clock.floor.isoformat() if self.clock.floor else None,
            "witnessing": self.witnessing.status(),
            **self.setup.info(),
        }

    def quote(self, nonce: bytes) -> dict[str, Any]:
        raw_pub = keys.raw_public(self.public_key)
        report_data = controller_report_data(raw_pub, nonce)
        q = self.tee.quote(report_data)
        out: dict[str, Any] = {
            "tee": self.tee.kind,
            "simulated": self.tee.simulated,
            "quote": base64.b64encode(q.quote).decode(),
            "collateral": q.collateral,
            "nonce": nonce.hex(),
            "public_key": base64.b64encode(raw_pub).decode(),
            "report_data": report_data.hex(),
        }
        if q.simulated_root_ca is not None:
            out["simulated_root_ca"] = base64.b64encode(q.simulated_root_ca).decode()
        return out

    def origin(self, cvm_id: str) -> str:
        return f"duet/{self.controller_id}/{cvm_id}"

    def record(self, cvm_id: str) -> CvmRecord:
        rec = self._records.get(cvm_id)
        if rec is None:
            raise errors.UnknownCvm(f"no CVM with id {cvm_id!r}")
        refused = self._rolled_back.get(cvm_id)
        if refused is not None:
            raise errors.RollbackDetected(refused)
        return rec

    def observe_checkpoint(self, note: str) -> None:
        """A client or witness shows a checkpoint it got from us earlier. If our log is
        older than it, or disagrees with it, our state was rolled back (e.g. the host
        restored an old copy of the sealed data dir): refuse to serve that log from now
        on, rather than hand out a history that omits what others already saw."""
        try:
            body = note.split("\n\n", 1)[0] + "\n"
            origin = body.splitlines()[0]
        except IndexError:
            raise errors.InvalidRequest("Duet-Checkpoint is not a checkpoint note") from None
        prefix = f"duet/{self.controller_id}/"
        if not origin.startswith(prefix):
            raise errors.InvalidRequest("Duet-Checkpoint is for another controller")
        cvm_id = origin[len(prefix):]
        if cvm_id not in self._records and cvm_id != CONTROLLER_LOG:
            raise errors.UnknownCvm(f"no CVM with id {cvm_id!r}")
        try:
            cp = open_checkpoint(note, Verifier(self.note_name, self.public_key), expected_origin=origin)
        except LedgerError as exc:
            raise errors.InvalidRequest(f"Duet-Checkpoint does not verify: {exc}") from None
        head = self.ledger.tree_head(cvm_id)
        problem = None
        if cp.size > head.size:
            problem = (f"a checkpoint of size {cp.size} signed by this controller was shown, but its log "
                       f"has only {head.size} entries: the controller's state was rolled back")
        elif self.ledger.tree_head(cvm_id, cp.size).root_hash != cp.root_hash:
            problem = f"a checkpoint of size {cp.size} signed by this controller disagrees with its log (fork)"
        if problem is not None:
            log.error("log %s: %s; refusing to serve it", cvm_id, problem)
            what = "the controller log (owner keys, nonces): no intent is accepted" if cvm_id == CONTROLLER_LOG \
                else f"CVM {cvm_id}"
            self._rolled_back[cvm_id] = f"refusing to serve {what}: {problem}"
            raise errors.RollbackDetected(self._rolled_back[cvm_id])

    def _check_controller_log(self) -> None:
        """A rolled-back controller log may hold revoked owner keys and forgotten nonces:
        once someone showed a newer checkpoint of it, nothing it decides is trusted."""
        refused = self._rolled_back.get(CONTROLLER_LOG)
        if refused is not None:
            raise errors.RollbackDetected(refused)

    def list_views(self) -> list[dict[str, Any]]:
        return [self.view(r) for r in self._records.values() if r.id not in self._rolled_back]

    def view(self, rec: CvmRecord) -> dict[str, Any]:
        head = self.ledger.tree_head(rec.id)
        return {
            "id": rec.id,
            "name": rec.name,
            "provider": rec.provider,
            "tee": rec.tee,
            "evidence_kind": rec.kind,
            "instance_binding": rec.instance_binding,
            # Derived from what can be shown, never from a label: the controller's TEE,
            # and the kind of evidence this CVM produces (the provider's declaration
            # before any evidence exists; the controller logs no other kind), and the
            # roots its provider's evidence is checked under (`snp_arks`, `tdx_roots`).
            "simulated": self.tee.simulated or cvm_kinds.is_simulated(rec.kind)
            or bool(getattr(self.evidence.get(rec.provider), "non_vendor_roots", False)),
            "status": rec.status,
            "mode": rec.mode,
            "epoch": rec.epoch,
            "created_at": rec.created_at,
            "origin": self.origin(rec.id),
            "host": rec.host,
            "port": rec.port,
            "user": rec.user,
            "instance_id": rec.instance_id,
            "host_key": rec.host_key,
            "host_data": rec.host_data,
            "policy_sha256": hashlib.sha256(rec.policy.encode()).hexdigest(),
            "reason": rec.reason,
            "tree_size": head.size,
            "root_hash": base64.b64encode(head.root_hash).decode(),
        }


    def checkpoint(self, cvm_id: str) -> str:
        self.record(cvm_id)
        head = self.ledger.tree_head(cvm_id)
        cp = Checkpoint(origin=self.origin(cvm_id), size=head.size, root_hash=head.root_hash)
        return sign_checkpoint(cp, self.signer)

    # ---------------------------------------------------------------- start-up / recovery

    async def startup(self) -> None:
        """Close what a crash left open, then bring local CVMs' servers back.

        Commands on a CVM are serialised, so a command cut short by a crash is always the
        last entry of its log: closing it is O(1) per log. Each record is replayed from the
        log size it was saved at (`_reconcile`), so the cost is the growth since.
        """
        self.replay.seed_from_logs(self.ledger, int(time.time()))
        if self.deposed is not None:
            # Handed over: the successor owns the logs and the CVMs now. Appending here
            # (closing a command, a moved port) would fork this stale copy of the logs.
            log.warning("%s", self.deposed)
            return
        from duet.controller import recovery

        # A recovery from shares is logged, and K replaced, before anything else happens.
        await recovery.resume(self)
        await self.witnessing.start()
        for rec in list(self._records.values()):
            size = self.ledger.tree_head(rec.id).size
            last = entries.decode(self.ledger.leaves(rec.id, size - 1, size)[0]) if size else None
            self._reconcile(rec)
            if rec.mode == Mode.DELETED:
                continue
            if last is not None and last["type"] in ("command", "output"):
                # A streamed command's last entries are its `output` pieces.
                ci = size - 1 if last["type"] == "command" else int(last["command_index"])  # type: ignore[call-overload]
                self.append(rec, [entries.InterruptedEntry(
                    command_index=ci, reason="controller restarted while the command was running")])
                log.warning("cvm %s: closed interrupted command at index %d", rec.id, ci)
            if rec.status == Status.PROVISIONING:
                self._fail(rec, "provisioning_interrupted", "controller restarted during provisioning")
                continue
            if rec.status == Status.READY:
                try:
                    prov = await self._provider(rec.provider).ensure_running(rec.id)
                except CvmNotFound as exc:
                    self._mark_lost(rec, str(exc))
                    continue
                except (CvmError, errors.DuetError) as exc:
                    log.warning("cvm %s: could not restart: %s", rec.id, exc)
                    continue
                if prov.port != rec.port:
                    # The host key stays pinned; only the address moved.
                    self.append(rec, [entries.ErrorEntry(
                        code="cvm_moved", message=f"CVM restarted on port {prov.port} (was {rec.port})")])
                    rec.port = prov.port
                    self._save(rec)
        pending = self.state.get_meta(continuity.ROTATION_META)
        if self.deposed is None and pending is not None:
            # A successor, a promoted standby or a recovered controller: an earlier copy of
            # K must open no CVM any more. The mark says why ("handover", "promotion",
            # "recovery", ...).
            await continuity.rotate_all(self, reason=pending.decode("utf-8", "replace") or "handover")

    async def approve_build(self, intent: Intent) -> dict[str, Any]:
        return await continuity.approve_build(self, intent)

    async def set_recovery(self, intent: Intent) -> dict[str, Any]:
        from duet.controller import recovery

        return await recovery.set_recovery(self, intent)

    def _reconcile(self, rec: CvmRecord) -> None:
        """The log is the truth; the record is a cache of it. The record remembers the log
        size it was saved at; every entry since then is replayed onto it (mode, epoch,
        policy, deletion, loss, quarantine). A crash leaves the record behind the log by
        at most its last entry; a host that restores an older state file (a sealed file
        can be rolled back alone) leaves it further behind, and the replay catches up all
        the same. The cost is the log's growth since the last save, not its length."""
        size = self.ledger.tree_head(rec.id).size
        start = min(rec.log_size, size)
        if start >= size:
            return
        before = (rec.mode, rec.epoch, rec.policy, rec.status)
        pos = start
        while pos < size:
            end = min(size, pos + 256)
            for leaf in self.ledger.leaves(rec.id, pos, end):
                e = entries.decode(leaf)
                t = e["type"]
                if t == "genesis":
                    rec.policy = str(e["policy"])
                elif t == "mode":
                    rec.mode = str(e["mode"])
                    epoch = e.get("epoch")
                    if isinstance(epoch, int):
                        rec.epoch = epoch
                    if e["previous"] == Mode.PROVISIONING and rec.status == Status.PROVISIONING:
                        rec.status = Status.READY.value
                elif t == "policy":
                    rec.policy = str(e["policy"])
                elif t == "deleted":
                    rec.mode, rec.status = Mode.DELETED.value, Status.DELETED.value
                elif t == "error" and e["code"] == "cvm_lost" and rec.status != Status.DELETED:
                    rec.status, rec.reason = Status.LOST.value, str(e["message"])
                elif t == "error" and e["code"] == "host_key_mismatch" and rec.status != Status.DELETED:
                    rec.status, rec.reason = Status.QUARANTINED.value, str(e["message"])
            pos = end
        if (rec.mode, rec.epoch, rec.policy, rec.status) != before:
            log.warning("cvm %s: record was %d entries behind its log; repaired from the log (mode %s)",
                        rec.id, size - start, rec.mode)
        self._save(rec)

    async def shutdown(self) -> None:
        await self.witnessing.stop()
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    def close(self) -> None:
        """Release the databases (each is held with an exclusive lock while open)."""
        self.ledger.close()
        self.state.close()

    # ---------------------------------------------------------------- intents

    def authenticate(self, jws: str, *, now: int | None = None) -> Intent:
        """Every check that needs no CVM state; failing here changes nothing."""
        self._check_controller_log()
        if self.deposed is not None:
            raise continuity.HandedOver(self.deposed)
        intent = parse_intent(jws)
        owner_keys = self._owner_keys()
        if not owner_keys:
            owner_keys = self._claim_keys(intent)
        verify_signature(intent, owner_keys)
        check_claims(intent, aud=self.controller_id, now=int(time.time()) if now is None else now)
        self._check_nonce(intent)
        if not self.replay.claim(intent.nonce, intent.iat, int(time.time())):
            raise errors.ReplayedIntent("this intent's nonce was used before (replay refused)")
        return intent

    def _check_nonce(self, intent: Intent) -> None:
        """The durable guard: the ledger remembers the nonce of every logged intent, in
        the same transaction as its entry, until the ledger has grown by NONCE_GROWTH
        leaves *and* its iat is older than the window by the trusted clock. A clock the
        host moves forward (or back, across restarts) forgets nothing."""
        if self.ledger.nonce_seen(intent.nonce):
            raise errors.ReplayedIntent("this intent's nonce was used before (replay refused)")

    def _logging(self, intent: Intent) -> None:
        """An intent is about to be logged (no await until its append): check its nonce
        once more (a twin may have been logged while it waited for the lock) and hand
        the nonce to the append that logs it."""
        self._check_nonce(intent)
        self._pending_nonces[intent.jws] = (intent.nonce, intent.iat)

    def _nonces_of(self, items: Sequence[entries.Entry]) -> list[tuple[str, int]]:
        out = []
        for item in items:
            if isinstance(item, entries.IntentEntry | entries.RejectedEntry) and item.jws is not None:
                got = self._pending_nonces.pop(item.jws, None)
                if got is not None:
                    out.append(got)
        return out

    def _forget(self) -> tuple[int, int]:
        return NONCE_GROWTH, int(self.clock.now().timestamp()) - KEEP_S

    @staticmethod
    def _claim_keys(intent: Intent) -> dict[str, Ed25519PublicKey]:
        """A controller with no owner yet accepts exactly one thing: an `owner.keys`
        intent signed by one of the keys it names (whoever claims first owns it; the
        claim is logged in every CVM's genesis as the owner keys)."""
        if intent.op != "owner.keys":
            raise UnknownKey("this controller has no owner yet: claim it first (duet controller claim)")
        claimed: dict[str, Ed25519PublicKey] = {}
        for b64 in intent.args.get("keys", []):
            pub = keys.public_from_b64(b64)
            claimed[keys.key_id(pub)] = pub
        return claimed

    def _owner_keys(self) -> dict[str, Ed25519PublicKey]:
        """The keys of the controller log's newest key set (decoded once per change)."""
        if self._owner_key_cache is None:
            self._owner_key_cache = {
                kid: keys.public_from_b64(b64) for kid, b64 in self._keys_of(self._key_changes).items()
            }
        return self._owner_key_cache

    def _still_authorised(self, intent: Intent) -> None:
        """Called right before an intent is logged (no await in between): a key revoked
        while the intent waited for its CVM's lock authorises nothing."""
        if intent.kid not in self._owner_keys():
            raise UnknownKey(f"owner key {intent.kid[:16]}… was revoked before this intent could run")

    def _sync_owner_keys(self, rec: CvmRecord) -> None:
        """Bring this CVM's log up to the controller log's owner keys before it logs an
        intent: each change not yet in it is copied (its intent verbatim and the new
        keys), so the CVM log alone still tells which keys were in force. This happens
        under the CVM's lock, when the CVM is next used: a rotation itself never waits
        for a CVM (the controller log alone decides)."""
        synced = self._synced.get(rec.id)
        if synced is None:
            synced = self._synced[rec.id] = self._last_synced(rec.id)
        todo = [c for c in self._key_changes if c.size > synced and c.jws is not None]
        if todo:
            items: list[entries.Entry] = []
            for c in todo:
                assert c.jws is not None
                items += [entries.IntentEntry(jws=c.jws, op=c.op, kid=c.kid, controller_log_size=c.size),
                          entries.OwnerKeysEntry(keys=c.keys)]
            self.append(rec, items)
        if self._key_changes:
            self._synced[rec.id] = max(synced, self._key_changes[-1].size)

    def _last_synced(self, cvm_id: str) -> int:
        """The newest controller-log size this CVM's log records (its last intent, or
        genesis); 0 for a log written before the controller log existed (its owner
        keys came from its own `owner_keys` entries, which the first key set copies).
        Reads back only to the last intent."""
        end = self.ledger.tree_head(cvm_id).size
        while end > 0:
            start = max(0, end - 64)
            for leaf in reversed(self.ledger.leaves(cvm_id, start, end)):
                e = entries.decode(leaf)
                if e["type"] in ("intent", "genesis"):
                    value = e.get("controller_log_size")
                    if isinstance(value, int):
                        return value
                    if e["type"] == "genesis":
                        return 0
            end = start
        return 0

    async def submit(self, jws: str, stdin_data: bytes | None = None,
                     sealed: bytes | None = None) -> tuple[int, dict[str, Any]]:
        """Authenticate, then run the operation's handler as its registry record says
        (`duet.ledger.operations`): operations on a CVM hold that CVM's lock. `stdin_data`
        must be exactly what the intent signs (controller/stdin.py); `sealed` is the
        attachment that travels beside an intent whose operation takes one."""
        intent = self.authenticate(jws)
        stdin.current.set(stdin.check(intent, stdin_data))
        operation = operations.OPERATIONS.get(intent.op)
        handler = getattr(self, operation.handler, None) if operation is not None else None
        if operation is None or handler is None:
            raise errors.InvalidRequest(f"unsupported op {intent.op}")
        if operation.attachment:
            return operation.status, self._wrap(operation, await handler(intent, sealed))
        if sealed is not None:
            raise errors.InvalidRequest(f"{intent.op} takes no sealed attachment")
        if not operation.targets_cvm:
            return operation.status, self._wrap(operation, await handler(intent))
        assert intent.cvm is not None
        rec = self.record(intent.cvm)
        async with self._lock(rec.id):
            if rec.mode == Mode.DELETED:
                raise errors.CvmDeleted(f"CVM {rec.id} was deleted; its log is closed")
            return operation.status, self._wrap(operation, await handler(rec, intent))

    @staticmethod
    def _wrap(operation: operations.Operation, result: Any) -> dict[str, Any]:
        body = result.to_json() if isinstance(result, CommandOutcome) else result
        return {operation.wrap: body} if operation.wrap is not None else dict(body)

    # ---------------------------------------------------------------- helpers

    def _lock(self, cvm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cvm_id, asyncio.Lock())

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None and name == "local" and self.setup.in_enclave:
            raise errors.UnknownProvider(f"provider 'local' is not offered under --tee gramine: {LOCAL_REFUSED}")
        if provider is None:
            raise errors.UnknownProvider(
                f"provider {name!r} is not enabled here; enabled: {', '.join(sorted(self.providers))}"
            )
        return provider

    def port(self, rec: CvmRecord) -> CvmPort:
        """The narrow per-CVM interface evidence collectors work through."""
        return _Port(self, rec)

    def append(self, rec: CvmRecord, items: Sequence[entries.Entry]) -> int:
        """Durably append entries (one transaction); return the index of the first."""
        now, host_time = self._entry_time(rec.id)
        self._check_logged_times(items, now, copies=True)
        clamped = {"host_time": host_time} if host_time else {}
        leaves = [dataclasses.replace(item, time=now, extra={**item.extra, **clamped}).encode() for item in items]
        nonces = self._nonces_of(items)
        head = self.ledger.append(rec.id, leaves, nonces=nonces, forget=self._forget() if nonces else None)
        self._last_time[rec.id] = now
        self.witnessing.note_append(rec.id, len(leaves))
        self.watch.appended(rec.id)
        return head.size - len(leaves)

    def _check_logged_times(self, items: Sequence[entries.Entry], when: str, *, copies: bool) -> None:
        """Every intent is logged within its window of the entry time it gets (ledger/
        intent.py, LOG_DELAY_S): one that waited too long for its CVM's lock (or whose iat
        is ahead of a clamped entry time) is refused here, before anything is written, as
        every verifier would flag it. `copies`: a CVM log, where owner-key changes are
        copies of controller-log entries, logged when the CVM is next used."""
        t = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        for item in items:
            if not isinstance(item, entries.IntentEntry | entries.RejectedEntry) or item.jws is None:
                continue
            if copies and item.op == operations.Op.OWNER_KEYS:
                continue
            problem = logged_time_problem(parse_intent(item.jws).iat, t)
            if problem is not None:
                for other in items:
                    if isinstance(other, entries.IntentEntry | entries.RejectedEntry) and other.jws is not None:
                        self._pending_nonces.pop(other.jws, None)
                raise StaleIntent(f"{problem}; sign it again")

    def _entry_time(self, log_id: str) -> tuple[str, str | None]:
        """Entry times never go back within a log, nor below the trusted time bound: an
        earlier host clock is clamped, and the host's reading is kept in `host_time` so
        the step is on the record. The append is never refused (a clock step would
        otherwise deny every operation)."""
        host = _rfc3339(self.clock.host_now())
        floor = _rfc3339(self.clock.floor) if self.clock.floor is not None else ""
        last = self._last_time.get(log_id)
        if last is None and self.ledger.has_log(log_id):
            size = self.ledger.tree_head(log_id).size
            if size:
                last = str(entries.decode(self.ledger.leaves(log_id, size - 1, size)[0])["time"])
        now = max(host, floor, last or "")
        if now == host:
            return now, None
        log.warning("log %s: host clock %s is behind %s; entry time clamped", log_id, host, now)
        return now, host

    def _intent_entry(self, rec: CvmRecord, intent: Intent) -> entries.IntentEntry:
        """The intent's entry, built right before it is appended (no await in between):
        the key must still be in force, the CVM's log gets the owner-key changes it
        lacks first, and the entry records the controller-log size in force."""
        self._still_authorised(intent)
        self._sync_owner_keys(rec)
        self._logging(intent)
        size = self.ledger.tree_head(CONTROLLER_LOG).size
        return entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size)

    def _reject(self, rec: CvmRecord, intent: Intent, exc: errors.DuetError) -> errors.DuetError:
        self._still_authorised(intent)
        self._sync_owner_keys(rec)
        self._logging(intent)
        index = self.append(
            rec,
            [entries.RejectedEntry(jws=intent.jws, op=intent.op, reason=exc.message, code=exc.code)],
        )
        exc.index = index
        return exc

    def _save(self, rec: CvmRecord) -> None:
        rec.log_size = self.ledger.tree_head(rec.id).size
        self.state.put_cvm(rec)

    def _fail(self, rec: CvmRecord, code: str, message: str) -> None:
        self.append(rec, [entries.ErrorEntry(code=code, message=message)])
        rec.status, rec.reason = Status.FAILED.value, message
        self._save(rec)

    def _require_ready(self, rec: CvmRecord) -> None:
        if rec.status != Status.READY:
            raise errors.CvmNotReady(
                f"CVM {rec.id} is {rec.status}" + (f": {rec.reason}" if rec.reason else "")
            )

    async def _connection(self, rec: CvmRecord) -> CvmConnection:
        conn = self._conns.get(rec.id)
        if conn is None:
            assert rec.host and rec.port and rec.user
            conn = CvmConnection(
                host=rec.host,
                port=rec.port,
                user=rec.user,
                client_key=import_private(self.state.client_key(rec.id)),
                pinned_host_key=rec.host_key,
            )
            self._conns[rec.id] = conn
        if conn.host_key is None:
            await self._guarded_connect(rec, conn)
        return conn

    async def _guarded_connect(self, rec: CvmRecord, conn: CvmConnection) -> str:
        try:
            return await conn.connect()
        except HostKeyMismatch as exc:
            self._quarantine(rec, exc)
            raise

    def _mark_lost(self, rec: CvmRecord, why: str) -> None:
        """The CVM disappeared under the controller (e.g. deleted in a cloud console)."""
        self.append(rec, [entries.ErrorEntry(code="cvm_lost", message=f"the CVM is gone: {why}")])
        rec.status, rec.reason = Status.LOST.value, why
        self._save(rec)
        log.error("cvm %s: lost: %s", rec.id, why)

    async def _check_lost(self, rec: CvmRecord) -> None:
        """After a failure to reach the CVM: is it still there at all?"""
        try:
            status = await self._provider(rec.provider).status(rec.id)
        except (CvmError, errors.DuetError):
            return
        if status == "missing":
            self._mark_lost(rec, f"provider {rec.provider} no longer has it")

    def _quarantine(self, rec: CvmRecord, exc: CvmError) -> None:
        """A changed host key means we may be talking to an impostor: stop everything."""
        self.append(rec, [entries.ErrorEntry(code=exc.code, message=str(exc))])
        rec.status, rec.reason = Status.QUARANTINED.value, str(exc)
        self._save(rec)
        conn = self._conns.pop(rec.id, None)
        if conn is not None:
            self._closing.add(asyncio.ensure_future(conn.close()))

    def _collector(self, rec: CvmRecord) -> EvidenceCollector:
        collector = self.evidence.get(rec.provider)
        if collector is None:
            raise errors.CvmNotReady(f"provider {rec.provider!r} has no evidence collector configured")
        return collector

    def client_public_line(self, cvm_id: str) -> str:
        """The CVM's authorised key (public half of the sealed SSH client key)."""
        return public_line(import_private(self.state.client_key(cvm_id)))

    def _policy(self, rec: CvmRecord) -> Policy:
        return parse_policy(rec.policy)

    # ---------------------------------------------------------------- operations

    def _check_new_name(self, name: Any) -> None:
        """A name is an address (`duet cvm run web ...`), so it must name one live CVM and
        never be mistaken for an id. Checked with no await before the record is added, so
        two concurrent creates cannot both take it."""
        if name is None:
            return
        if isinstance(name, str) and _LOOKS_LIKE_ID.fullmatch(name):
            raise errors.InvalidRequest(f"name {name!r} looks like a CVM id (16 hex digits); choose another name")
        for rec in self._records.values():
            if rec.name == name and rec.status != Status.DELETED.value:
                raise errors.InvalidRequest(
                    f"name {name!r} is taken by live CVM {rec.id}; names of live CVMs are unique")

    async def create(self, intent: Intent) -> dict[str, Any]:
        args = intent.args
        self._check_new_name(args.get("name"))
        provider_name = args["provider"]
        provider = self._provider(provider_name)
        try:
            tee, offer = cvm_kinds.resolve_offer(provider_name, provider.tees, args.get("tee"))
        except AttestationError as exc:
            raise errors.TeeNotOffered(str(exc)) from None
        cvm_id = secrets.token_hex(8)
        host_data = secrets.token_bytes(32)
        spec = dict(args.get("spec", {}))
        policy = parse_policy(self.default_policy)
        rec = CvmRecord(
            id=cvm_id,
            name=args.get("name", cvm_id),
            provider=provider_name,
            tee=tee,
            created_at=entries.now_rfc3339(),
            policy=policy.text,
            spec=spec,
            host_data=host_data.hex(),
            evidence_kind=offer.evidence_kind,
            instance_binding=offer.binding.value,
        )
        client_key = generate_client_key()
        self.ledger.create_log(cvm_id)
        self.state.put_cvm(rec, export_private(client_key))
        self._records[cvm_id] = rec
        async with self._lock(cvm_id):
            self._still_authorised(intent)
            ctl = self.ledger.tree_head(CONTROLLER_LOG)
            self._synced[cvm_id] = ctl.size
            self.append(
                rec,
                [
                    entries.GenesisEntry(
                        cvm_id=cvm_id,
                        origin=self.origin(cvm_id),
                        controller_id=self.controller_id,
                        controller_key=keys.public_b64(self.public_key),
                        owner_keys=tuple(sorted(self._keys_of(self._key_changes).values())),
                        policy=policy.text,
                        policy_sha256=policy.sha256,
                        tee=tee,
                        provider=provider_name,
                        spec=spec,
                        host_data=host_data.hex(),
                        evidence_kind=offer.evidence_kind,
                        instance_binding=offer.binding.value,
                        controller_log_size=ctl.size,
                        controller_log_root=base64.b64encode(ctl.root_hash).decode(),
                    ),
                    self._intent_entry(rec, intent),
                ],
            )
            created = streaming.current.get()
            if created is not None:  # a streamed create answers now (`cvm create --no-wait`)
                created.cvm_created(self.view(rec))
            await self._provision(rec, provider, client_key, host_data)
        return self.view(rec)

    async def _provision(
        self, rec: CvmRecord, provider: Provider, client_key: Any, host_data: bytes
    ) -> None:
        try:
            prov = await provider.create(
                rec.id,
                authorized_key=public_line(client_key),
                spec={**rec.spec, "tee": rec.tee, "host_data": host_data.hex()},
            )
            rec.host, rec.port, rec.user, rec.instance_id = prov.host, prov.port, prov.user, prov.instance_id
            if prov.launch.get("tee_effective") == "none":
                # Launched without a TEE (allowed by the provider's settings): its evidence
                # is kind `none`, which every verifier fails, saying why.
                rec.evidence_kind = cvm_kinds.CvmKind.NONE.value
                rec.instance_binding = cvm_kinds.InstanceBinding.NONE.value
            conn = CvmConnection(
                host=prov.host, port=prov.port, user=prov.user, client_key=client_key, pinned_host_key=None
            )
            # A cloud provider returns while its guest still boots: its boot_timeout_s says
            # how long an unreachable sshd is waited for (none: one attempt, the local guest).
            host_key = await connect_after_boot(conn, boot_timeout_s=float(getattr(provider, "boot_timeout_s", 0.0)))
            self._conns[rec.id] = conn
            rec.host_key = host_key
            self.append(
                rec,
                [entries.ProvisionedEntry(
                    instance_id=prov.instance_id,
                    host=prov.host,
                    port=prov.port,
                    user=prov.user,
                    host_key=host_key,
                    host_key_sha256=entries.sha256_hex(host_key),
                    client_key=public_line(client_key),
                    launch=dict(prov.launch),
                )],
            )
            await self._collector(rec).after_provisioning(self.port(rec))
        except (CvmError, errors.DuetError) as exc:
            code = getattr(exc, "code", "provisioning_failed")
            self._fail(rec, code, f"provisioning failed: {exc}")
            conn_ = self._conns.pop(rec.id, None)
            if conn_ is not None:
                await conn_.close()
            raise errors.CvmNotReady(f"CVM {rec.id} could not be provisioned: {exc}") from None
        rec.status, rec.mode = Status.READY.value, Mode.IN_UPDATE.value
        self.append(rec, [entries.ModeEntry(mode=Mode.IN_UPDATE.value, previous=Mode.PROVISIONING.value)])
        self._save(rec)

    async def run(self, rec: CvmRecord, intent: Intent) -> CommandOutcome:
        command = intent.args["command"]
        if rec.mode != Mode.IN_UPDATE:
            raise self._reject(
                rec, intent, errors.ModeForbids(f"commands are not allowed while the CVM is {rec.mode}")
            )
        if not self._policy(rec).command_allowed(rec.mode, command):
            raise self._reject(
                rec, intent, errors.PolicyForbids("the policy does not allow this command in-update")
            )
        self._require_ready(rec)
        timeout = float(intent.args.get("timeout_s") or 600)
        return await self.execute(rec, intent, command, timeout=timeout, action=None, stdin_data=stdin.current.get())

    async def execute(
        self,
        rec: CvmRecord,
        intent: Intent | None,
        command: str,
        *,
        timeout: float,
        action: str | None,
        intent_index: int | None = None,
        builtin: bool = False,
        stdin_data: bytes = b"",
    ) -> CommandOutcome:
        """Log the command durably, send it, log the result (invariant 1). An owner's
        command in a streamed request also logs its output as it comes (streaming.py)."""
        conn = await self._connection(rec)
        items: list[entries.Entry] = []
        if intent is not None:
            # The log is locked for this CVM, so the next index is known before appending
            # (after the owner-key changes the intent entry may bring in first).
            intent_entry = self._intent_entry(rec, intent)
            intent_index = self.ledger.tree_head(rec.id).size
            items.append(intent_entry)
        items.append(entries.CommandEntry.with_stdin(
            stdin_data, command=command, timeout_s=timeout, intent_index=intent_index, action=action,
            builtin=True if builtin else None, explicit_nulls=frozenset({"intent_index"}),
        ))
        command_index = self.append(rec, items) + len(items) - 1
        stream = streaming.current.get() if intent is not None and not builtin else None
        started = time.perf_counter()
        try:
            if stream is None:
                result = await conn.run(command, timeout_s=timeout, cap=self.output_cap, stdin=stdin_data)
            else:
                stream.accepted(rec.id, command_index)
                async with streaming.output_log(lambda pieces: self.append(rec, pieces), command_index) as on_data:
                    result = await conn.run(command, timeout_s=timeout, cap=self.output_cap, stdin=stdin_data,
                                            on_data=on_data)
        except CvmError as exc:
            reason = f"command not completed: {exc}"
            self.append(rec, [entries.InterruptedEntry(command_index=command_index, reason=reason)])
            if isinstance(exc, HostKeyMismatch):
                self._quarantine(rec, exc)
            elif isinstance(exc, CvmUnreachable):
                await self._check_lost(rec)
            raise
        index = self.append(rec, [result_entry(command_index, result)])
        if self.on_command is not None:
            self.on_command(time.perf_counter() - started)
        return CommandOutcome(
            cvm=rec.id,
            command_index=command_index,
            result_index=index,
            action=action,
            result=result,
            interrupted=None,
            tree_size=index + 1,
        )

    async def action(self, rec: CvmRecord, intent: Intent) -> CommandOutcome:
        name = intent.args["name"]
        policy = self._policy(rec)
        if name not in policy.actions:
            raise self._reject(rec, intent, errors.PolicyForbids(f"the policy defines no action {name!r}"))
        if not policy.action_allowed(rec.mode, name):
            raise self._reject(
                rec, intent, errors.ModeForbids(f"action {name!r} is not allowed while the CVM is {rec.mode}")
            )
        self._require_ready(rec)
        return await self._run_action(rec, policy.actions[name], intent)

    async def _run_action(
        self, rec: CvmRecord, action: Action, intent: Intent | None, intent_index: int | None = None
    ) -> CommandOutcome:
        if action.builtin is not None:
            collector = self._collector(rec)
            await self._connection(rec)
            first = self.append(rec, [self._intent_entry(rec, intent)]) if intent is not None else intent_index
            index = await collector.builtin(self.port(rec), action.builtin, intent_index=first)
            return CommandOutcome(
                cvm=rec.id, command_index=index, result_index=index, action=action.name,
                result=None, interrupted=None, tree_size=index + 1,
            )
        assert action.run is not None
        return await self.execute(
            rec, intent, action.run, timeout=600.0, action=action.name, intent_index=intent_index
        )

    async def set_mode(self, rec: CvmRecord, intent: Intent) -> dict[str, Any]:
        target = intent.args["mode"]
        if rec.mode == target:
            raise self._reject(rec, intent, errors.InvalidTransition(f"CVM is already {target}"))
        if rec.mode not in OWNER_MODES:
            raise self._reject(rec, intent, errors.InvalidTransition(f"CVM is {rec.mode}"))
        self._require_ready(rec)
        policy = self._policy(rec)
        intent_index = self.append(rec, [self._intent_entry(rec, intent)])
        previous = rec.mode
        if target == Mode.IN_SERVICE:
            # The on-enter actions first, then lockdown, evidence and snapshot: what those
            # entries describe is the state in-service starts in, and a CVM that cannot
            # show its state never enters in-service.
            for name in policy.on_enter.get(target, ()):
                await self._run_action(rec, policy.actions[name], None, intent_index)
            await self._connection(rec)
            await self._collector(rec).on_enter_service(self.port(rec), intent_index)
            rec.epoch += 1
            rec.mode = target
            self.append(rec, [entries.ModeEntry(mode=target, previous=previous, epoch=rec.epoch)])
            self._save(rec)
        else:
            # The epoch ends before anything changes on the CVM.
            rec.mode = target
            self.append(rec, [entries.ModeEntry(mode=target, previous=previous, epoch=rec.epoch)])
            self._save(rec)
            for name in policy.on_enter.get(target, ()):
                await self._run_action(rec, policy.actions[name], None, intent_index)
        return self.view(rec)

    async def delete(self, rec: CvmRecord, intent: Intent) -> dict[str, Any]:
        self.append(rec, [self._intent_entry(rec, intent)])
        conn = self._conns.pop(rec.id, None)
        if conn is not None:
            await conn.close()
        await self._provider(rec.provider).delete(rec.id)
        self.append(rec, [entries.DeletedEntry(reason="deleted by the owner")])
        rec.mode, rec.status = Mode.DELETED.value, Status.DELETED.value
        self._save(rec)
        return self.view(rec)

    async def set_policy(self, rec: CvmRecord, intent: Intent) -> dict[str, Any]:
        if rec.mode != Mode.IN_UPDATE:
            raise self._reject(
                rec, intent, errors.ModeForbids(f"the policy can change only in-update, CVM is {rec.mode}")
            )
        try:
            policy = parse_policy(intent.args["policy"])
        except Exception as exc:
            raise self._reject(rec, intent, errors.InvalidPolicy(str(exc))) from None
        self.append(
            rec,
            [self._intent_entry(rec, intent), entries.PolicyEntry(policy=policy.text, policy_sha256=policy.sha256)],
        )
        rec.policy = policy.text
        self._save(rec)
        return self.view(rec)

    async def set_providers(self, intent: Intent) -> dict[str, Any]:
        return await self.setup.set_providers(intent)

    async def set_credentials(self, intent: Intent, sealed: bytes | None) -> dict[str, Any]:
        return await self.setup.set_credentials(intent, sealed)

    async def set_owner_keys(self, intent: Intent) -> dict[str, Any]:
        """One controller-log append decides, and the new keys are in force the moment it
        returns: no CVM lock is taken (a command already running finishes under the key
        that authorised it; anything logged later is checked against the new keys).
        Nothing here awaits, so two rotations, or a rotation and a create, never
        interleave."""
        new: dict[str, str] = {}
        for b64 in intent.args["keys"]:
            pub: Ed25519PublicKey = keys.public_from_b64(b64)
            new[keys.key_id(pub)] = keys.public_b64(pub)
        if self._key_changes:
            self._still_authorised(intent)
        self._logging(intent)
        size = self.ledger.tree_head(CONTROLLER_LOG).size
        ordered = tuple(sorted(new.values()))
        self._append_controller([
            entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size),
            entries.OwnerKeysEntry(keys=ordered),
        ])
        self._key_changes.append(KeyChange(intent.jws, intent.op, intent.kid, ordered, size + 2))
        self._owner_key_cache = None
        # The state file is a cache: a crash before this line is repaired at start-up.
        self.state.set_owner_keys(new)
        return {"owner_keys": sorted(new.values())}

    async def set_witnesses(self, intent: Intent) -> dict[str, Any]:
        """`witnesses.set` (controller/witnessing.py): one controller-log append."""
        return self.witnessing.set_from_intent(intent)
