"""Witnessing the controller log, which commits every CVM log (docs/transparency.md).

Standard witnesses follow logs by origin, and nobody registers every CVM with every
witness. So the controller log carries `heads` entries, each with the (size, root) of
every CVM log that changed since the previous one, and only the controller log is
submitted to witnesses (C2SP tlog-witness). A CVM head is then proven by the inclusion of
a `heads` entry in a cosigned controller-log checkpoint.

Batching: `heads` is written every `interval` seconds (5 s) or after `batch` (1,000) CVM
appends, whichever comes first, and at once when a user asks for a head that no `heads`
entry covers yet. A burst of commands is one entry, not a burst of them.

Nothing here is on the command path: a CVM append only marks its log dirty (a set
insert); writing `heads` is one controller-log append from a background task, and every
witness round trip runs in a worker thread with a timeout, so a witness that is down or
slow delays only its own cosignatures (visible in `/v1/controller`).

Start-up (`startup_check`): each witness is asked, with our current checkpoint, which
size of the controller log it last cosigned (a 409 names it). A quorum holding more than
we have means the data dir was rolled back: the controller refuses to start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from duet.controller import errors
from duet.ledger import entries
from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
from duet.ledger.cosignature import CosignatureVerifier
from duet.ledger.errors import LedgerError
from duet.witness.client import WitnessError, add_checkpoint, verified_response

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.ledger.intent import Intent

log = logging.getLogger("duet.controller.witnessing")

#: Seconds between `heads` entries while CVM logs change.
HEADS_INTERVAL = 5.0
#: CVM appends that force a `heads` entry before the interval is over.
HEADS_BATCH = 1000
#: Seconds one witness round trip may take.
WITNESS_TIMEOUT = 10.0
#: Controller-log sizes whose cosignatures are kept (and persisted).
KEEP_COSIGNED_SIZES = 8
#: The state-store meta record that holds them (public data; replicated with the state).
COSIGNATURES_META = "witness_cosignatures"
#: Seconds a user's request for a covered head waits for cosignatures.
COVER_WAIT = 15.0
#: Longest pause between retries of a witness that keeps failing.
MAX_BACKOFF = 60.0
CONTROLLER_LOG = "controller"


class WitnessRollback(errors.DuetError):
    """A quorum of witnesses cosigned more of the controller log than this data dir holds."""

    code = "witness_rollback"
    #: `duet controller serve` exits with this status (docs/errors.md).
    exit_code = 4


class WitnessesUnreachable(errors.DuetError):
    """Fewer than a quorum of witnesses answered at start-up: a rollback cannot be ruled out."""

    code = "witnesses_unreachable"
    exit_code = 4


class NotWitnessed(errors.DuetError):
    """No cosigned controller-log checkpoint covers the asked CVM head (yet)."""

    code = "not_witnessed"


class NoWitnesses(errors.DuetError):
    """This controller has no witnesses configured: nothing is ever cosigned."""

    code = "no_witnesses"


@dataclass(frozen=True)
class WitnessSpec:
    verifier: CosignatureVerifier
    url: str

    @property
    def name(self) -> str:
        return self.verifier.name

    def to_json(self) -> dict[str, str]:
        return {"vkey": self.verifier.vkey(), "url": self.url}


@dataclass(frozen=True)
class WitnessConfig:
    witnesses: tuple[WitnessSpec, ...] = ()
    quorum: int = 0
    #: Where the setting comes from: `controller log entry N`, `--witness (development)`,
    #: or `none`.
    source: str = "none"

    @classmethod
    def parse(cls, items: Sequence[tuple[str, str]], quorum: int, source: str) -> WitnessConfig:
        specs = []
        for vkey, url in items:
            try:
                specs.append(WitnessSpec(CosignatureVerifier.from_vkey(vkey), url.rstrip("/")))
            except (LedgerError, ValueError) as exc:
                raise errors.ConfigError(f"witness key {vkey[:60]!r} is not a cosignature/v1 vkey: {exc}") from None
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise errors.ConfigError("two witnesses share a name")
        if specs and not 1 <= quorum <= len(specs):
            raise errors.ConfigError(f"witness quorum must be between 1 and {len(specs)}, not {quorum}")
        return cls(tuple(specs), quorum if specs else 0, source)


def parse_witness_flag(text: str) -> tuple[str, str]:
    """`VKEY=URL` (a vkey holds no `=`: its key is 44 base64 characters without padding)."""
    vkey, sep, url = text.partition("=")
    if not sep or not vkey or not url.startswith(("http://", "https://")):
        raise errors.ConfigError(f"--witness {text[:80]!r} is not VKEY=URL (an http(s) URL)")
    return vkey, url


@dataclass
class WitnessStatus:
    """What the controller knows of one witness (all of it shown in `/v1/controller`)."""

    #: The controller-log size we believe the witness holds (None: unknown, ask).
    believed: int | None = None
    cosigned_size: int | None = None
    cosigned_time: int | None = None
    last_error: str | None = None
    last_attempt: float | None = None
    failures: int = 0
    next_try: float = 0.0
    #: What the witness holds that our log does not extend (a size beyond ours, ours with
    #: another root, or a checkpoint our consistency proof does not reach): evidence that
    #: this log was rolled back or forked.
    conflict: str | None = None


@dataclass
class _Head:
    index: int  # controller-log index of the `heads` entry
    size: int
    root: bytes


@dataclass
class Witnessing:
    ctl: Controller
    interval: float = HEADS_INTERVAL
    batch: int = HEADS_BATCH
    timeout: float = WITNESS_TIMEOUT
    dev_seed: WitnessConfig | None = None
    _logged: WitnessConfig | None = None
    _dirty: set[str] = field(default_factory=set)
    _appends: int = 0
    #: Per CVM, every head a `heads` entry committed, in controller-log order.
    _heads: dict[str, list[_Head]] = field(default_factory=dict)
    _status: dict[str, WitnessStatus] = field(default_factory=dict)
    #: Controller-log size -> witness name -> its verified cosignature line.
    _cosigs: dict[int, dict[str, str]] = field(default_factory=dict)
    #: Witness name -> the vkey whose cosignature `_cosigs` holds (what is persisted).
    _vkeys: dict[str, str] = field(default_factory=dict)
    _wake: asyncio.Event | None = None
    _cosigned: asyncio.Condition | None = None
    _task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)
    _inflight: set[str] = field(default_factory=set)
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._scan()
        self._persist_lock = threading.Lock()
        self._restore()

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> WitnessConfig:
        """A logged `witnesses.set` decides; the development seed applies only before one."""
        if self._logged is not None:
            return self._logged
        return self.dev_seed or WitnessConfig()

    def seed(self, config: WitnessConfig) -> None:
        """`controller serve --witness` (outside an enclave only: serve.py refuses it
        under Gramine, where only the signed intent counts)."""
        self.dev_seed = config
        self._mark_all()
        self._restore()
        if self._logged is not None and config.witnesses:
            log.warning("--witness is ignored: the controller log sets the witnesses (%s)", self._logged.source)

    def _scan(self) -> None:
        """Read the controller log once: the witnesses in force and the heads committed.
        Every CVM whose log moved past its last committed head is dirty."""
        ledger = self.ctl.ledger
        size = ledger.tree_head(CONTROLLER_LOG).size
        pos = 0
        while pos < size:
            end = min(size, pos + 1024)
            for i, leaf in enumerate(ledger.leaves(CONTROLLER_LOG, pos, end), start=pos):
                e = entries.decode(leaf)
                if e["type"] == "heads":
                    for h in e["heads"]:  # type: ignore[attr-defined]
                        self._heads.setdefault(str(h["cvm"]), []).append(
                            _Head(i, int(h["size"]), base64.b64decode(h["root"])))
                elif e["type"] == "witnesses":
                    self._logged = WitnessConfig.parse(
                        [(str(w["vkey"]), str(w["url"])) for w in e["witnesses"]],  # type: ignore[attr-defined]
                        int(e["quorum"]), f"controller log entry {i}")  # type: ignore[call-overload]
            pos = end
        for cvm in ledger.log_ids():
            if cvm != CONTROLLER_LOG and self._stale(cvm):
                self._dirty.add(cvm)

    def _mark_all(self) -> None:
        """Every CVM log whose head no `heads` entry names yet goes into the next one."""
        self._dirty.update(c for c in self.ctl.ledger.log_ids() if c != CONTROLLER_LOG)

    def _stale(self, cvm: str) -> bool:
        head = self.ctl.ledger.tree_head(cvm)
        last = self._heads.get(cvm)
        if not last:
            return head.size > 0
        return (last[-1].size, last[-1].root) != (head.size, head.root_hash)

    def set_from_intent(self, intent: Intent) -> dict[str, Any]:
        """`witnesses.set`: the intent and the new setting in one controller-log append
        (nothing awaits here, so it never interleaves with another controller-log write)."""
        args = intent.args
        config = WitnessConfig.parse([(str(w["vkey"]), str(w["url"])) for w in args["witnesses"]],
                                     int(args["quorum"]), "")
        self.ctl._check_controller_log()
        self.ctl._still_authorised(intent)
        self.ctl._logging(intent)
        size = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        self.ctl._append_controller([
            entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size),
            # Exactly what the owner signed, so anyone can compare the two.
            entries.WitnessesEntry(witnesses=tuple({"vkey": str(w["vkey"]), "url": str(w["url"])}
                                                   for w in args["witnesses"]), quorum=int(args["quorum"])),
        ])
        self._logged = WitnessConfig(config.witnesses, config.quorum, f"controller log entry {size + 1}")
        self._mark_all()
        self._status = {n: s for n, s in self._status.items() if n in {w.name for w in config.witnesses}}
        self.kick()
        return {"witnesses": [w.to_json() for w in config.witnesses], "quorum": config.quorum,
                "controller_log_index": size + 1}

    # ------------------------------------------------------------------ heads

    def note_append(self, cvm: str, count: int) -> None:
        """A CVM log grew (called on the command path: O(1), never blocks)."""
        self._dirty.add(cvm)
        self._appends += count
        if self._appends >= self.batch:
            self.kick()

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def flush_heads(self) -> int | None:
        """Write one `heads` entry with every dirty CVM head not committed yet; return its
        index (None when nothing changed). No await inside: one controller-log append.
        Without witnesses nothing is written (the dirty set keeps at most one name per CVM
        until some are set)."""
        if not self._dirty or not self.config.witnesses or CONTROLLER_LOG in self.ctl._rolled_back:
            return None
        heads = []
        for cvm in sorted(self._dirty):
            if not self.ctl.ledger.has_log(cvm) or not self._stale(cvm):
                continue
            head = self.ctl.ledger.tree_head(cvm)
            last = self._heads.get(cvm)
            old = last[-1].size if last else 0
            if head.size < old:
                # Never commit a head that does not extend the last one: users check that
                # each head of a CVM extends the one before (a rolled-back log is refused
                # by the rollback check, not witnessed).
                log.error("CVM %s: its log (size %d) is behind its last committed head (%d); not committed",
                          cvm, head.size, old)
                continue
            proof = self.ctl.ledger.consistency_proof(cvm, old, head.size) if 0 < old < head.size else []
            heads.append((cvm, head.size, head.root_hash, proof))
        self._dirty.clear()
        self._appends = 0
        if not heads:
            return None
        index = self.ctl._append_controller([entries.HeadsEntry(heads=tuple(
            {"cvm": cvm, "size": size, "root": base64.b64encode(root).decode(),
             "consistency": [base64.b64encode(h).decode() for h in proof]}
            for cvm, size, root, proof in heads))])
        for cvm, size, root, _ in heads:
            self._heads.setdefault(cvm, []).append(_Head(index, size, root))
        return index

    # ------------------------------------------------------------------ background loop

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._cosigned = asyncio.Condition()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="duet-witness")
        self._task = asyncio.create_task(self._run(), name="duet-witnessing")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.flush_heads()
                await self._submit_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything: it is the only submitter
                log.exception("witnessing round failed")

    async def _submit_all(self) -> None:
        config = self.config
        if not config.witnesses or CONTROLLER_LOG in self.ctl._rolled_back:
            return
        size = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        if size == 0:
            return
        now = time.monotonic()
        due = [w for w in config.witnesses if self._due(w, size, now)]
        if not due:
            return
        note = self._note(size)
        for w in due:
            # Not awaited here: a slow witness holds only its own round trip, never the
            # next `heads` tick nor another witness.
            self._inflight.add(w.name)
            task = asyncio.ensure_future(self._submit(w, note, size))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _submit(self, w: WitnessSpec, note: str, size: int) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._submit_one, w, note, size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("witness %s: unexpected failure: %s", w.name, exc)
        finally:
            self._inflight.discard(w.name)
        if self._cosigned is not None:
            async with self._cosigned:
                self._cosigned.notify_all()

    def _due(self, w: WitnessSpec, size: int, now: float) -> bool:
        st = self._status.setdefault(w.name, WitnessStatus())
        if st.cosigned_size == size or w.name in self._inflight:
            return False
        return now >= st.next_try

    def _note(self, size: int) -> str:
        head = self.ctl.ledger.tree_head(CONTROLLER_LOG, size)
        return sign_checkpoint(Checkpoint(self.ctl.controller_origin, size, head.root_hash), self.ctl.signer)

    def _proof(self, old: int, new: int) -> list[bytes]:
        return self.ctl.ledger.consistency_proof(CONTROLLER_LOG, old, new)

    def _submit_one(self, w: WitnessSpec, note: str, size: int) -> None:
        """One witness round trip (worker thread): submit, learn its size on a 409,
        verify and keep the cosignature, feed its timestamp to the trusted clock."""
        st = self._status.setdefault(w.name, WitnessStatus())
        st.last_attempt = time.time()
        old = st.believed if st.believed is not None and st.believed <= size else size
        try:
            with httpx.Client(timeout=self.timeout) as http:
                got, held = add_checkpoint(http, w.url, w.verifier, note, size, self._proof, old=old)
        except WitnessError as exc:
            st.failures += 1
            st.last_error = exc.message
            if exc.status == 409:
                st.believed = None
                if exc.held is not None and exc.held >= size:
                    st.conflict = f"holds size {exc.held}" + (" with another root" if exc.held == size else "")
            elif exc.status == 422:
                # Our proof from the size it holds does not verify: our log does not extend it.
                st.conflict = "holds a checkpoint this log does not extend (consistency proof refused)"
            if st.conflict is not None:
                self._check_conflicts(size)
            st.next_try = time.monotonic() + min(MAX_BACKOFF, self.interval * 2 ** min(st.failures - 1, 6))
            log.warning("witness %s: %s", w.name, exc.message)
            return
        st.believed, st.failures, st.last_error, st.next_try, st.conflict = held, 0, None, 0.0, None
        st.cosigned_size, st.cosigned_time = size, got.timestamp
        self._keep(size, w, got.lines)
        self.ctl.clock.observe(datetime.fromtimestamp(got.timestamp, UTC), f"witness {w.name} cosignature")

    def _keep(self, size: int, w: WitnessSpec, lines: str) -> None:
        """Keep a verified cosignature (the newest few sizes) and persist them: they are
        public, and a restarted controller, or a replica that takes over, serves them
        without asking the witnesses again."""
        with self._persist_lock:
            self._cosigs.setdefault(size, {})[w.name] = lines
            for old_size in sorted(self._cosigs)[:-KEEP_COSIGNED_SIZES]:  # keep the newest few sizes
                del self._cosigs[old_size]
            self._vkeys[w.name] = w.verifier.vkey()
            doc = {str(n): {self._vkeys[name]: line for name, line in by.items() if name in self._vkeys}
                   for n, by in self._cosigs.items()}
            try:
                self.ctl.state.set_meta(COSIGNATURES_META, json.dumps(doc, sort_keys=True).encode())
            except (LedgerError, OSError, sqlite3.Error) as exc:
                # A store that refuses (this replica is no longer primary) loses only a copy.
                log.warning("witness cosignatures not persisted: %s", exc)

    def _restore(self) -> None:
        """Cosignatures persisted by an earlier run (`_keep`): each is verified again, by
        the key of a witness configured now, over this log's own checkpoint of its size,
        so a changed state file can add nothing that a user would not accept."""
        try:
            raw = self.ctl.state.get_meta(COSIGNATURES_META)
            doc = json.loads(raw) if raw is not None else {}
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("persisted witness cosignatures ignored: %s", exc)
            return
        if not isinstance(doc, dict):
            return
        by_vkey = {w.verifier.vkey(): w for w in self.config.witnesses}
        size_now = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        for key, lines_by_vkey in doc.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(lines_by_vkey, dict)):
                continue
            size = int(key)
            if not 0 < size <= size_now:
                continue
            note: str | None = None
            for vkey, lines in lines_by_vkey.items():
                w = by_vkey.get(vkey)
                if w is None or not isinstance(lines, str) or w.name in self._cosigs.get(size, {}):
                    continue
                note = note or self._note(size)
                try:
                    got = verified_response(w.verifier, note, lines)
                except WitnessError as exc:
                    log.warning("persisted cosignature of %s for size %d ignored: %s", w.name, size, exc.message)
                    continue
                self._cosigs.setdefault(size, {})[w.name] = got.lines
                self._vkeys[w.name] = vkey
                st = self._status.setdefault(w.name, WitnessStatus())
                if st.cosigned_size is None or size > st.cosigned_size:
                    st.cosigned_size, st.cosigned_time = size, got.timestamp
        for old_size in sorted(self._cosigs)[:-KEEP_COSIGNED_SIZES]:
            del self._cosigs[old_size]

    def _check_conflicts(self, size: int) -> None:
        """While serving: a quorum of witnesses holding a controller log this one does not
        extend means another copy of this data dir moved on (two enclaves started on copies
        of the sealed dir, or a rollback under a running process). From then on this log
        decides nothing: no intent is accepted and the controller log is not served."""
        config = self.config
        conflicts = [(n, st.conflict) for n, st in self._status.items()
                     if st.conflict is not None and n in {w.name for w in config.witnesses}]
        if config.quorum and len(conflicts) >= config.quorum:
            what = "; ".join(f"{n} {c}" for n, c in conflicts)
            message = (f"refusing to serve the controller log (owner keys, nonces): no intent is accepted: "
                       f"witnesses cosigned a controller log this one (size {size}) does not extend ({what}); "
                       "another copy of this data dir moved on")
            log.error("%s", message)
            self.ctl._rolled_back[CONTROLLER_LOG] = message

    # ------------------------------------------------------------------ start-up rollback defence

    def startup_check(self) -> list[str]:
        """Ask every configured witness which size of the controller log it cosigned
        last; refuse to start on a data dir that a quorum of them shows is older (or a
        fork). Returns one line per witness for the operator."""
        config = self.config
        if not config.witnesses:
            return []
        size = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        note = self._note(size)
        with ThreadPoolExecutor(max_workers=len(config.witnesses)) as pool:
            answers = list(pool.map(lambda w: (w, self._probe(w, note, size)), config.witnesses))
        lines, ahead, answered = [], [], 0
        for w, (held, problem) in answers:
            st = self._status.setdefault(w.name, WitnessStatus())
            if held is None:
                st.last_error = problem
                lines.append(f"witness {w.name}: no answer ({problem})")
                continue
            answered += 1
            st.believed = held if held <= size else None
            if held > size or (held == size and problem):
                ahead.append(f"{w.name} cosigned size {held}" + (" with another root" if held == size else ""))
            lines.append(f"witness {w.name}: holds size {held} of the controller log (ours: {size})")
        if len(ahead) >= config.quorum:
            raise WitnessRollback(
                f"refusing to start: the controller log in this data dir has {size} entries, but "
                f"{'; '.join(ahead)}: the data dir was rolled back (or forked) after witnesses cosigned it. "
                "Restore the newest data dir; never start on an older copy.")
        if ahead:
            log.error("witnesses report a newer controller log than ours: %s (fewer than the quorum of %d)",
                      "; ".join(ahead), config.quorum)
        if answered < config.quorum:
            raise WitnessesUnreachable(
                f"refusing to start: only {answered} of {len(config.witnesses)} witnesses answered and the quorum "
                f"is {config.quorum}, so a rolled-back data dir cannot be ruled out ({'; '.join(lines)})")
        return lines

    def _probe(self, w: WitnessSpec, note: str, size: int) -> tuple[int | None, str | None]:
        """(size the witness holds, problem). We submit our checkpoint claiming the witness
        holds exactly our size: it cosigns (same size and root), or says its size (409)."""
        try:
            with httpx.Client(timeout=self.timeout) as http:
                resp = http.post(w.url + "/add-checkpoint", content=(f"old {size}\n\n" + note).encode())
        except httpx.HTTPError as exc:
            return None, f"unreachable: {type(exc).__name__}"
        if resp.status_code == 200:
            try:
                got = verified_response(w.verifier, note, resp.text)
            except WitnessError as exc:
                return None, exc.message
            self._keep(size, w, got.lines)
            st = self._status.setdefault(w.name, WitnessStatus())
            st.cosigned_size, st.cosigned_time = size, got.timestamp
            self.ctl.clock.observe(datetime.fromtimestamp(got.timestamp, UTC), f"witness {w.name} cosignature")
            return size, None
        text = resp.text.strip()
        if resp.status_code == 409 and resp.headers.get("content-type") == "text/x.tlog.size" and text.isdigit():
            held = int(text)
            # A 409 at our own size means the same size with another root: a fork.
            return held, ("fork" if held == size else None)
        return None, f"HTTP {resp.status_code} {text[:200]}"

    # ------------------------------------------------------------------ what is served

    def cosigned(self, quorum: int | None = None) -> tuple[int, dict[str, str]] | None:
        """The newest controller-log size with at least `quorum` (default: the configured
        quorum, at least 1) cosignatures, and those lines."""
        need = max(1, self.config.quorum if quorum is None else quorum)
        names = {w.name for w in self.config.witnesses}
        for size in sorted(self._cosigs, reverse=True):
            lines = {n: line for n, line in self._cosigs.get(size, {}).items() if n in names}
            if len(lines) >= need:
                return size, lines
        return None

    def cosigned_note(self, size: int) -> str:
        """The controller's checkpoint of `size` with every cosignature collected for it."""
        lines = self._cosigs.get(size, {})
        return self._note(size) + "".join(lines[n] for n in sorted(lines))

    async def cosigned_checkpoint(self) -> dict[str, Any]:
        """The newest controller-log checkpoint a quorum of witnesses cosigned, with its
        cosignatures (`/v1/controller/log/witnessed`, what `duet verify --controller-log
        --witness` checks). When none is, the newest checkpoint is pushed to the witnesses
        and this waits up to COVER_WAIT for a quorum."""
        if not self.config.witnesses:
            raise NoWitnesses("this controller has no witnesses configured (witnesses.set)")
        self.ctl._check_controller_log()
        deadline = time.monotonic() + COVER_WAIT
        while True:
            best = self.cosigned()
            if best is not None:
                return {"size": best[0], "controller_checkpoint": self.cosigned_note(best[0])}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotWitnessed(f"no controller-log checkpoint is cosigned by a quorum of witnesses yet "
                                   f"({self.lag_summary()})")
            await self._await_cosignature(remaining)

    async def covering(self, cvm: str, size: int) -> dict[str, Any]:
        """The witnessed proof that the CVM head of `size` is committed: the first `heads`
        entry for this CVM with a size >= `size`, inside a cosigned controller-log
        checkpoint, with the CVM consistency proof from `size` to that head and the
        entry's inclusion proof. Writes `heads` and waits for cosignatures when needed."""
        if not self.config.witnesses:
            raise NoWitnesses("this controller has no witnesses configured (witnesses.set)")
        self.ctl._check_controller_log()
        deadline = time.monotonic() + COVER_WAIT
        while True:
            head = next((h for h in self._heads.get(cvm, []) if h.size >= size), None)
            if head is None and self._stale(cvm):
                self._dirty.add(cvm)
                if self.flush_heads() is not None:
                    self.kick()
                    continue
            best = self.cosigned()
            if head is not None and best is not None and best[0] > head.index:
                return self._proof_of(cvm, size, head, best[0])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                what = "no heads entry covers it" if head is None else \
                    f"heads entry {head.index} is not yet in a checkpoint cosigned by a quorum of witnesses"
                raise NotWitnessed(f"CVM {cvm} at size {size}: {what} ({self.lag_summary()})")
            await self._await_cosignature(remaining)

    async def _await_cosignature(self, remaining: float) -> None:
        """Submit now, and wait (at most `remaining`, one interval) for a new cosignature."""
        self.kick()
        assert self._cosigned is not None
        async with self._cosigned:
            try:
                await asyncio.wait_for(self._cosigned.wait(), timeout=min(remaining, self.interval))
            except TimeoutError:
                pass

    def _proof_of(self, cvm: str, size: int, head: _Head, ctl_size: int) -> dict[str, Any]:
        ledger = self.ctl.ledger

        def b64(hs: Sequence[bytes]) -> list[str]:
            return [base64.b64encode(h).decode() for h in hs]

        return {
            "cvm": cvm,
            "size": size,
            "heads_index": head.index,
            "head": {"size": head.size, "root": base64.b64encode(head.root).decode()},
            # The committed head as an ordinary signed CVM checkpoint, for tools that keep notes.
            "cvm_checkpoint": sign_checkpoint(Checkpoint(self.ctl.origin(cvm), head.size, head.root), self.ctl.signer),
            "consistency": b64(ledger.consistency_proof(cvm, size, head.size) if 0 < size < head.size else []),
            "controller_checkpoint": self.cosigned_note(ctl_size),
            "inclusion": b64(ledger.inclusion_proof(CONTROLLER_LOG, head.index, ctl_size)),
        }

    def lag_summary(self) -> str:
        parts = []
        for w in self.config.witnesses:
            st = self._status.get(w.name, WitnessStatus())
            error = f", {st.last_error}" if st.last_error else ""
            parts.append(f"{w.name}: cosigned size {st.cosigned_size}{error}")
        return "; ".join(parts) or "no witnesses"

    def status(self) -> dict[str, Any]:
        """For `/v1/controller`: how far behind each witness is (a down witness shows here)."""
        config = self.config
        size = self.ctl.ledger.tree_head(CONTROLLER_LOG).size
        now = time.time()
        out = []
        for w in config.witnesses:
            st = self._status.get(w.name, WitnessStatus())
            out.append({
                "name": w.name,
                "vkey": w.verifier.vkey(),
                "url": w.url,
                "cosigned_size": st.cosigned_size,
                "behind": None if st.cosigned_size is None else size - st.cosigned_size,
                "cosigned_age_s": None if st.cosigned_time is None else max(0, int(now) - st.cosigned_time),
                "last_error": st.last_error,
                "failures": st.failures,
                "conflict": st.conflict,
            })
        return {"source": config.source, "quorum": config.quorum, "controller_log_size": size,
                "pending_heads": len(self._dirty), "witnesses": out}
