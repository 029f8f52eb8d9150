"""`duet verify`: a service user's check of the controller and one CVM's history.

Order matters: the controller's key is trusted only after its quote verifies and binds
that key to a fresh nonce; the checkpoint is checked with *that* key (never with a
verifier string the server hands out); the entries must hash to the checkpoint's root;
and the checkpoint must extend the one this user saw last (RFC 9162 consistency), so a
rolled-back or forked log fails. Nothing passes by default: an empty report fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from duet.attestation.binding import controller_report_data
from duet.attestation.errors import AttestationError
from duet.client.api import CONTROLLER_LOG, ReadClient
from duet.client.audit import Audit, Check, LogState, audit_log
from duet.client.build_history import build_history, build_history_checks
from duet.client.config import controller_key_of_url, default_state_dir
from duet.client.controller_log import ControllerLog, ControllerLogReplay
from duet.client.errors import ClientError, LimitExceeded
from duet.client.expectations import ControllerExpectations, UserExpectations
from duet.client.http import Http
from duet.client.replay import REPLAY_VERSION, CvmReplay
from duet.client.statefile import locked, read_json, write_json
from duet.client.verify_cache import VerifyCache, slot_of
from duet.client.witness_check import CHECK as WITNESS_CHECK
from duet.client.witness_check import (
    WitnessPolicy,
    controller_log_witness_check,
    fetch_controller_witnessed,
    fetch_witnessed,
    policy_of,
    witness_check,
)
from duet.ledger import keys, merkle
from duet.ledger.checkpoint import Checkpoint, open_checkpoint
from duet.ledger.errors import LedgerError
from duet.ledger.note import Verifier, parse_note

__all__ = ["CheckpointMemory", "Report", "default_state_dir", "fetch_leaves", "verify", "verify_controller_log"]


@dataclass
class Report:
    cvm: str
    checks: list[Check] = field(default_factory=list)
    state: LogState | None = None
    controller: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    #: Key ids of the owner keys in force at the end of the log (verified entries only).
    owner_keys: list[str] = field(default_factory=list)
    #: Loud warnings about what the expectations leave open (printed, not a failure).
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # An empty report is a failure, never a pass.
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def simulated(self) -> bool:
        return any(c.simulated for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, *, simulated: bool = False) -> bool:
        self.checks.append(Check(name, ok, detail, simulated))
        return ok

    def to_json(self) -> dict[str, Any]:
        s = self.state
        return {
            "cvm": self.cvm,
            "ok": self.ok,
            "simulated": self.simulated,
            "controller": self.controller,
            "checkpoint": self.checkpoint,
            "owner_keys": self.owner_keys,
            "warnings": self.warnings,
            "state": None if s is None else {
                "mode": s.mode, "epoch": s.epoch, "commands": s.commands, "rejected": s.rejected,
                "interrupted": s.interrupted, "host_key": s.host_key,
            },
            "checks": [c.to_json() for c in self.checks],
        }


class CheckpointMemory:
    """What this user saw, in ``<state dir>/checkpoints.json``:

    * ``logs``: per log origin, the last checkpoint whose signature, root and consistency
      verified (whatever the expectations said): the anchor that exposes a rollback or a
      fork on the next run;
    * ``controllers``: per (controller URL, CVM), the controller key that served it, so
      the same CVM behind the same URL with another key is refused instead of starting
      over as a "first verification".

    Read-modify-write happens under the file's lock (:func:`locked`)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "checkpoints.json"

    def lock(self) -> Any:
        return locked(self.path)

    def _load(self) -> dict[str, Any]:
        data = read_json(self.path, "remembered checkpoints")
        if "logs" not in data:  # the first format: origin -> checkpoint at the top level
            data = {"logs": {k: v for k, v in data.items() if isinstance(v, dict) and "size" in v}}
        logs, ctl = data.get("logs"), data.setdefault("controllers", {})
        if not isinstance(logs, dict) or not isinstance(ctl, dict):
            raise ClientError("state_corrupt", f"remembered checkpoints in {self.path} are malformed")
        return data

    def get(self, origin: str) -> tuple[int, bytes] | None:
        entry = self._load()["logs"].get(origin)
        if not entry:
            return None
        try:
            return int(entry["size"]), base64.b64decode(entry["root"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ClientError("state_corrupt", f"the remembered checkpoint of {origin} is malformed") from None

    def note(self, origin: str) -> str | None:
        entry = self._load()["logs"].get(origin) or {}
        note = entry.get("note")
        return note if isinstance(note, str) else None

    def controller_for(self, where: str, cvm: str) -> str | None:
        entry = self._load()["controllers"].get(f"{where} {cvm}") or {}
        cid = entry.get("controller_id")
        return cid if isinstance(cid, str) else None

    def put(self, origin: str, size: int, root: bytes, note: str | None = None, *,
            where: str | None = None, cvm: str | None = None, controller_id: str | None = None) -> None:
        """Call with :meth:`lock` held: the anchor only moves forward."""
        data = self._load()
        old = data["logs"].get(origin)
        if isinstance(old, dict) and isinstance(old.get("size"), int) and old["size"] > size:
            raise ClientError("state_conflict", f"the remembered checkpoint of {origin} is newer than this one")
        data["logs"][origin] = {"size": size, "root": base64.b64encode(root).decode()}
        if note is not None:
            data["logs"][origin]["note"] = note
        if where is not None and cvm is not None and controller_id is not None:
            data["controllers"][f"{where} {cvm}"] = {"controller_id": controller_id, "origin": origin}
        write_json(self.path, data)


def verify_controller_quote(
    quote: dict[str, Any], expected_report_data: bytes, trust_simulated: bool, now: datetime,
    expect: ControllerExpectations | None = None,
) -> tuple[bool, str, dict[str, Any]]:
    """Verify the controller's SGX quote, its binding, and the user's expectations of it;
    returns (ok, detail, claims). Claims are non-empty only when the quote verified and
    binds the key (the key is attested), even if the expectations then failed."""
    from duet.attestation import validate
    from duet.attestation.dcap import verify_sgx_quote

    simulated = quote.get("simulated") is True
    root: bytes | None = None
    if quote.get("simulated") not in (None, True, False):
        return False, "the quote's 'simulated' flag is not a boolean", {}
    if simulated:
        if not trust_simulated:
            return False, ("the controller runs on a SIMULATED TEE (no SGX); pass --trust-simulated "
                           "to accept its development root (unsafe outside development)"), {}
        try:
            root = base64.b64decode(str(quote.get("simulated_root_ca", "")), validate=True)
        except (binascii.Error, ValueError):
            return False, "the simulated root CA is not base64", {}
    try:
        raw = base64.b64decode(quote["quote"], validate=True)
        report = verify_sgx_quote(raw, quote["collateral"], now=now, root_ca_der=root)
    except (AttestationError, KeyError, ValueError, TypeError, binascii.Error) as exc:
        return False, f"quote does not verify: {exc}", {}
    claims = {
        "mrenclave": report.mrenclave,
        "mrsigner": report.mrsigner,
        "isv_prod_id": report.isv_prod_id,
        "isv_svn": report.isv_svn,
        "tcb_status": report.tcb_status,
        "advisory_ids": list(report.advisory_ids),
        "debug": report.debug,
    }
    if report.report_data != expected_report_data:
        return False, "quote verifies but its report data does not bind the controller key and the nonce", {}
    if expect is not None:
        if expect.tee is not None and expect.tee != "sgx":
            return False, f"expected a controller TEE {expect.tee!r}; duet controllers run on SGX", claims
        failures = validate(report, expect.evidence())
        if failures:
            return False, "quote verifies, but " + "; ".join(
                f"{f.field} is {f.found}, expected {f.expected}" for f in failures), claims
    label = "SIMULATED " if simulated else ""
    pinned = " and matches the expected identity" if expect is not None else ""
    return True, (f"{label}SGX quote verifies (TCB {report.tcb_status}); it binds the controller key "
                  f"and the nonce{pinned}; MRENCLAVE {report.mrenclave[:16]}…"), claims


def fetch_leaves(http: Http, cvm: str, size: int) -> list[bytes]:
    """Entries [0, size) of a CVM's log, bounded (see :meth:`ReadClient.leaves`)."""
    return ReadClient(http).leaves(cvm, size)


class Source(Protocol):
    """Where the controller's answers come from: live over HTTP, or an offline bundle."""

    live: bool
    #: The controller's place: its URL (live), or ``bundle`` (offline).
    where: str

    def controller(self) -> dict[str, Any]: ...
    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]: ...
    def checkpoint(self, cvm: str, shown: str | None = None) -> str: ...
    def leaves(self, cvm: str, size: int) -> list[bytes]: ...
    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]: ...


def _pages(source: Source, cvm: str, start: int, end: int) -> Iterator[list[bytes]]:
    """Entries [start, end) page by page: streamed from a live controller; a bundle or a
    tile mirror is read whole (and from its first entry: offline runs keep no cache)."""
    pages = getattr(source, "pages", None)
    if pages is not None:
        yield from pages(cvm, start, end)
        return
    if start != 0:
        raise ClientError("offline", "an offline copy is verified from its first entry")
    yield source.leaves(cvm, end)


class LiveSource:
    live = True

    def __init__(self, http: Http) -> None:
        self.http = http
        self.api = ReadClient(http)
        self.where = controller_key_of_url(http.url)

    def controller(self) -> dict[str, Any]:
        return self.api.controller()

    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]:
        return self.api.quote(nonce)

    def checkpoint(self, cvm: str, shown: str | None = None) -> str:
        return self.api.checkpoint(cvm, shown)

    def leaves(self, cvm: str, size: int) -> list[bytes]:
        return self.api.leaves(cvm, size)

    def pages(self, cvm: str, start: int, end: int) -> Iterator[list[bytes]]:
        return self.api.pages(cvm, start, end)

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        return self.api.consistency(cvm, old, new)


def verify(
    http: Http | Source,
    cvm: str,
    *,
    trust_simulated: bool = False,
    state_dir: Path | None = None,
    now: datetime | None = None,
    remember: bool = True,
    expect: UserExpectations | None = None,
    accept_new_controller: bool = False,
    full: bool = False,
    keep_entries: bool = False,
    witnesses: WitnessPolicy | None = None,
) -> tuple[Report, Audit | None]:
    """Verify the controller and one CVM's log.

    The remembered checkpoint advances to every checkpoint whose signature, root and
    consistency verified, *before* the log's contents are judged: a log that fails the
    user's expectations is still what the controller committed to, and a host that
    restores an older log later must be caught as a rollback.

    Entries stream through the replay (`replay.py`) a page at a time. A live run resumes
    from the state the last verification of this log saved (`verify_cache.py`) and
    fetches only the new entries; `full` starts from the first entry. `keep_entries`
    also returns every decoded entry in the Audit (the HTML report and `expect init`
    render them): that run holds the log in memory and does not use the cache."""
    if isinstance(http, Http):
        http.start_run()
        source: Source = LiveSource(http)
    else:
        source = http
    report = Report(cvm)
    now = now or datetime.now(UTC)
    memory = CheckpointMemory(state_dir or default_state_dir())

    info = source.controller()
    report.controller = {k: info.get(k) for k in ("controller_id", "tee", "simulated", "version", "measurement")}
    try:
        pub_raw = base64.b64decode(info["public_key"], validate=True)
        controller_key: Ed25519PublicKey = keys.public_from_b64(info["public_key"])
    except (LedgerError, KeyError, ValueError, TypeError, binascii.Error):
        report.add("controller_identity", False, "controller public key is malformed")
        return report, None
    cid = keys.key_id(controller_key)
    if not report.add("controller_identity", cid == info.get("controller_id"),
                      f"controller id {cid[:16]}… is the hash of its key"
                      if cid == info.get("controller_id") else "controller id is not the hash of its key"):
        return report, None
    with memory.lock():
        known = memory.controller_for(source.where, cvm)
    if known is not None and known != cid:
        if not accept_new_controller:
            report.add("controller_identity", False,
                       f"CVM {cvm} at {source.where} was served before by controller {known[:16]}…, now by "
                       f"{cid[:16]}…: refused (a new enclave build or a lost sealed state changes the key; "
                       "if you expected that, pass --accept-new-controller)")
            return report, None
        report.add("controller_identity", True,
                   f"controller changed from {known[:16]}… to {cid[:16]}…, accepted by --accept-new-controller")

    nonce, quote = source.quote(secrets.token_bytes(32) if source.live else None)
    expected_rd = controller_report_data(pub_raw, nonce)
    ok, detail, claims = verify_controller_quote(
        quote, expected_rd, trust_simulated, now, expect.controller if expect else None
    )
    if not source.live:
        copy = "the bundle" if source.where == "bundle" else f"the tile mirror {source.where}"
        detail += f" (from {copy}: the nonce is the exporter's, so this shows no freshness)"
    report.controller.update(claims)
    report.add("controller_quote", ok, detail, simulated=quote.get("simulated") is True)
    if not claims:  # the key is not attested: nothing it signed means anything
        return report, None

    origin = f"duet/{cid}/{cvm}"
    ctl_report = Report(CONTROLLER_LOG)
    context = _cache_context(cid, expect, trust_simulated)
    cache = VerifyCache(memory.path.parent) if source.live else None
    replay = CvmReplay(cid, info["public_key"], cvm, expect=expect, trust_simulated=trust_simulated, now=now)
    kept: list[bytes] | None = [] if keep_entries else None
    with memory.lock():
        opened = _open_log(source, cvm, report, memory, origin, cid, controller_key)
        if opened is None:
            return report, None
        witnesses = witnesses or policy_of(expect)
        witnessed: dict[str, Any] | str | None = None
        if source.live and witnesses is not None:
            # Asked before the controller log is read: the cosigned checkpoint is then a
            # prefix of the controller log verified below.
            api = getattr(source, "api", None)
            witnessed = fetch_witnessed(api, cvm, opened[0].size) if isinstance(api, ReadClient) else \
                "this source serves no witnessed proofs"
        if source.live:
            # The controller log first (after the CVM's checkpoint, so that it is at least
            # as new as every CVM entry that names one of its sizes): the links are then
            # checked as the CVM entries stream past.
            ctl = check_controller_log(source, ctl_report, memory, cid, controller_key, remember, expect,
                                       cache=cache, context=context, full=full, controller=report.controller)
            replay.ctl = ctl
        slot = _Slot(cache, slot_of(origin, context)) if cache is not None and not keep_entries else None

        def fresh() -> CvmReplay:
            return CvmReplay(cid, info["public_key"], cvm, expect=expect, trust_simulated=trust_simulated, now=now,
                             ctl=replay.ctl)

        streamed = _stream_log(source, cvm, report, memory, origin, cid, opened, replay, fresh, remember,
                               slot, full, kept)
        if streamed is None:
            return report, None
        replay = streamed
    done = replay.finish(now)
    report.checks.extend(done.checks)
    report.state = done.state
    report.owner_keys = done.owner.in_force
    report.checks.extend(done.owner.checks)
    if source.live:
        report.checks.extend(ctl_report.checks)
        if replay.ctl is not None:
            report.checks.extend(replay.link_checks())
        if witnesses is not None and witnessed is not None:
            cp = opened[0]
            report.checks.append(
                witness_check(witnessed, cvm=cvm, controller_id=cid, controller_key=controller_key,
                              size=cp.size, root=cp.root_hash, ctl=replay.ctl, policy=witnesses, now=now)
                if replay.ctl is not None else
                Check(WITNESS_CHECK, False, "the controller log did not verify, so no witnessed head can be checked"))
    else:
        report.warnings.append("the controller log is not part of a bundle or tile mirror: the owner keys in "
                               "force were taken from the CVM log alone")
        if witnesses is not None:
            report.add(WITNESS_CHECK, False, "witness cosignatures were demanded, but a bundle or tile mirror "
                                             "carries no controller log to prove this CVM head witnessed")
    audit = Audit(done.checks, done.state, [])
    if kept is not None:
        audit = audit_log(kept, controller_id=cid, controller_key_b64=info["public_key"], cvm_id=cvm)
    return report, audit


def _cache_context(cid: str, expect: UserExpectations | None, trust_simulated: bool) -> dict[str, Any]:
    """What a saved replay depends on besides the log: the verifier's rules, the user's
    expectations (an allow-list applies to the whole history) and trust settings."""
    from duet import __version__

    digest = None if expect is None else hashlib.sha256(
        json.dumps(expect.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    return {"controller_id": cid, "replay": REPLAY_VERSION, "duet": __version__, "expect": digest,
            "trust_simulated": trust_simulated}


class _Resumable(Protocol):
    @property
    def size(self) -> int: ...

    def feed(self, leaf: bytes) -> None: ...
    def dump(self) -> dict[str, Any]: ...
    def load(self, data: dict[str, Any]) -> None: ...


R = TypeVar("R", bound=_Resumable)


@dataclass
class _Slot:
    cache: VerifyCache
    slot: str


def _resume(slot: _Slot, origin: str, anchor: tuple[int, bytes] | None, cp: Checkpoint, replay: _Resumable,
            report: Report) -> merkle.CompactRange | None:
    """The compact range at the remembered checkpoint, with `replay` loaded to the state
    saved there, or None (verify from the first entry; `replay` may then be half loaded
    and must be replaced)."""
    data, why = slot.cache.load(slot.slot)
    if data is None:
        if why is not None:
            report.warnings.append(f"the verification cache of {origin} is not used: {why}; verified from the "
                                   "first entry")
        return None
    if anchor is None or cp.size < anchor[0]:
        return None  # no anchor to match (it is never rebuilt from a cache), or a rollback
    try:
        size, root = int(data["size"]), base64.b64decode(str(data["root"]), validate=True)
        if data.get("origin") != origin:
            raise ValueError("it is for another log")
        if (size, root) != anchor:
            return None  # behind or beside the anchor (an uncached run moved it): start over quietly
        rng = merkle.CompactRange(size, [base64.b64decode(str(h), validate=True) for h in data["range"]])
        if rng.root() != root:
            raise ValueError("its compact range does not lead to its root")
        replay.load(data["replay"])
        if replay.size != size:
            raise ValueError("its replay is at another size")
    except (LedgerError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        report.warnings.append(f"the verification cache of {origin} is not used: {exc}; verified from the first "
                               "entry")
        return None
    return rng


def _save(slot: _Slot, origin: str, cp: Checkpoint, rng: merkle.CompactRange, replay: _Resumable) -> None:
    slot.cache.save(slot.slot, {
        "origin": origin, "size": cp.size, "root": base64.b64encode(cp.root_hash).decode(),
        "range": [base64.b64encode(h).decode() for h in rng.subtree_hashes()], "replay": replay.dump()})


def check_controller_log(
    source: Source, report: Report, memory: CheckpointMemory, cid: str, controller_key: Ed25519PublicKey,
    remember: bool, expect: UserExpectations | None, *, cache: VerifyCache | None = None,
    context: dict[str, Any] | None = None, full: bool = False, controller: dict[str, Any] | None = None,
) -> ControllerLog | None:
    """The controller log, checked as a CVM log is (signature with the attested key, root,
    consistency with the remembered checkpoint), then its owner-key history. Call with
    the memory's lock held."""
    sub = Report(CONTROLLER_LOG)
    origin = f"duet/{cid}/controller"
    opened = _open_log(source, CONTROLLER_LOG, sub, memory, origin, cid, controller_key)
    replay: ControllerLogReplay | None = None
    if opened is not None:
        slot = _Slot(cache, slot_of(origin, context or {})) if cache is not None else None
        replay = _stream_log(source, CONTROLLER_LOG, sub, memory, origin, cid, opened, ControllerLogReplay(cid),
                             lambda: ControllerLogReplay(cid), remember, slot, full, None)
    for c in sub.checks:
        report.add(f"controller_log_{c.name}", c.ok, c.detail, simulated=c.simulated)
    if replay is None or opened is None:
        return None
    report.checks.extend(replay.checks(expect))
    about = controller if controller is not None else report.controller
    report.checks.extend(build_history_checks(replay.log, expect, current=about.get("mrenclave")))
    about["builds"] = build_history(replay.log, about.get("mrenclave"))
    cp = opened[0]

    def prefix_root(size: int, root: bytes) -> bool:
        """A root the CVM log names, against the verified head: one consistency proof."""
        if not 0 <= size <= cp.size:
            return False
        try:
            proof = source.consistency(CONTROLLER_LOG, size, cp.size) if 0 < size < cp.size else []
            merkle.verify_consistency(size, cp.size, proof, root, cp.root_hash)
        except LimitExceeded:
            raise
        except (LedgerError, ClientError, ValueError):
            return False
        return True

    replay.log.prefix_root = prefix_root
    return replay.log


def verify_controller_log(
    http: Http, *, trust_simulated: bool = False, state_dir: Path | None = None, now: datetime | None = None,
    remember: bool = True, expect: UserExpectations | None = None, full: bool = False,
    witnesses: WitnessPolicy | None = None,
) -> Report:
    """`duet verify --controller-log`: the controller's quote, then its own log alone;
    with witnesses (`--witness`, or the expectations' `witnesses:`), the log verified must
    extend a checkpoint of it that a quorum of them cosigned (check `witness_cosigned`)."""
    http.start_run()
    source = LiveSource(http)
    report = Report(CONTROLLER_LOG)
    now = now or datetime.now(UTC)
    memory = CheckpointMemory(state_dir or default_state_dir())
    info = source.controller()
    try:
        pub_raw = base64.b64decode(info["public_key"], validate=True)
        controller_key: Ed25519PublicKey = keys.public_from_b64(info["public_key"])
    except (LedgerError, KeyError, ValueError, TypeError, binascii.Error):
        report.add("controller_identity", False, "controller public key is malformed")
        return report
    cid = keys.key_id(controller_key)
    if not report.add("controller_identity", cid == info.get("controller_id"),
                      "controller id is the hash of its key" if cid == info.get("controller_id")
                      else "controller id is not the hash of its key"):
        return report
    nonce, quote = source.quote(secrets.token_bytes(32))
    ok, detail, claims = verify_controller_quote(
        quote, controller_report_data(pub_raw, nonce), trust_simulated, now, expect.controller if expect else None)
    report.controller = {"controller_id": cid, **claims}
    report.add("controller_quote", ok, detail, simulated=quote.get("simulated") is True)
    if not claims:
        return report
    witnesses = witnesses or policy_of(expect)
    # Asked before the log is read: the cosigned checkpoint is then a prefix of the log verified.
    witnessed = fetch_controller_witnessed(source.api) if witnesses is not None else None
    with memory.lock():
        ctl = check_controller_log(source, report, memory, cid, controller_key, remember, expect,
                                   cache=VerifyCache(memory.path.parent),
                                   context=_cache_context(cid, expect, trust_simulated), full=full)
    if ctl is not None and ctl.changes:
        report.owner_keys = ctl.changes[-1][1]
    if witnesses is not None and witnessed is not None:
        report.checks.append(
            controller_log_witness_check(witnessed, controller_id=cid, controller_key=controller_key, ctl=ctl,
                                         policy=witnesses, now=now) if ctl is not None else
            Check(WITNESS_CHECK, False, "the controller log did not verify, so no witnessed checkpoint of it can "
                                        "be checked"))
    return report


def _canonical_note(note: str, verifier: Verifier) -> tuple[str, int]:
    """The note with only the signature lines that verify under `verifier`, and how many
    other lines it carried (padding, or cosignatures nobody here can check)."""
    text, sigs = parse_note(note)
    msg = text.encode("utf-8")
    kept = [sig for sig in sigs if sig.name == verifier.name and sig.key_hash == verifier.key_hash
            and verifier.verify(msg, sig.signature)]
    return text + "\n" + "".join(sig.line() for sig in kept), len(sigs) - len(kept)


def _open_log(
    source: Source, cvm: str, report: Report, memory: CheckpointMemory, origin: str, cid: str,
    controller_key: Ed25519PublicKey,
) -> tuple[Checkpoint, str] | None:
    """The checkpoint, when it is validly signed by the attested key (with the memory's
    lock held), and its note with only the controller's signature."""
    try:
        note = source.checkpoint(cvm, memory.note(origin))
    except LimitExceeded:
        raise
    except ClientError as exc:
        if exc.code in ("unknown_cvm", "controller_unreachable"):
            raise
        if exc.code == "rollback_detected":
            report.add("consistency", False, f"the controller refuses: {exc.message}")
            return None
        report.add("checkpoint_signature", False, f"the controller serves no checkpoint: [{exc.code}] {exc.message}")
        return None
    verifier = Verifier(f"duet/{cid}", controller_key)
    try:
        cp: Checkpoint = open_checkpoint(note, verifier, expected_origin=origin)
        canonical, extra = _canonical_note(note, verifier)
    except LedgerError as exc:
        report.add("checkpoint_signature", False, f"checkpoint is not validly signed by the attested key: {exc}")
        return None
    if extra and not source.live:
        # A bundle is tamper-evident byte for byte: nothing in it goes unchecked.
        report.add("checkpoint_signature", False,
                   f"the bundle's checkpoint carries {extra} signature line(s) that are not the controller's")
        return None
    report.checkpoint = {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root_hash).decode()}
    report.add("checkpoint_signature", True, f"checkpoint (size {cp.size}) is signed by the attested controller key"
               + (f"; {extra} other signature line(s) dropped" if extra else ""))
    return cp, canonical


def _stream_log(
    source: Source, cvm: str, report: Report, memory: CheckpointMemory, origin: str, cid: str,
    opened: tuple[Checkpoint, str], replay: R, fresh: Callable[[], R], remember: bool,
    slot: _Slot | None, full: bool, kept: list[bytes] | None,
) -> R | None:
    """Root and consistency of the log at the checkpoint, feeding each entry to `replay`
    as it comes (with the memory's lock held). Resumes from the cache in `slot` unless
    `full`; returns the replay, fed to the checkpoint's size, once the anchor has moved
    to this checkpoint (and the cache with it), or None."""
    cp, canonical = opened
    anchor = memory.get(origin)
    rng: merkle.CompactRange | None = None
    if slot is not None and not full:
        rng = _resume(slot, origin, anchor, cp, replay, report)
        if rng is None:
            replay = fresh()
    if rng is None:
        rng = merkle.CompactRange()
    start = rng.size
    old_root_seen = rng.root() if anchor is not None and anchor[0] == start else None
    # Resumed at the anchor: the new checkpoint must extend it before anything new is
    # fetched (a fork is named a fork, and costs no download).
    if start and not _check_consistency(source, cvm, report, anchor, cp, old_root_seen):
        return None
    try:
        for page in _pages(source, cvm, start, cp.size):
            for leaf in page:
                rng.append(merkle.leaf_hash(leaf))
                replay.feed(leaf)
                if kept is not None:
                    kept.append(leaf)
                if anchor is not None and rng.size == anchor[0]:
                    old_root_seen = rng.root()
    except LimitExceeded:
        raise
    except ClientError as exc:
        report.add("log_root", False, f"the controller does not serve the log: [{exc.code}] {exc.message}")
        return None
    computed = rng.root()
    fetched = rng.size - start
    how = f"; {fetched} fetched now, {start} verified before (cache)" if start else ""
    report.checkpoint["fetched"] = fetched
    if not report.add("log_root", rng.size == cp.size and computed == cp.root_hash,
                      f"the {rng.size} entries hash to the checkpoint's root (RFC 9162{how})"
                      if computed == cp.root_hash else
                      "the entries do not hash to the signed root: the log was altered"):
        return None
    if not start and not _check_consistency(source, cvm, report, anchor, cp, old_root_seen):
        return None
    if remember:
        memory.put(origin, cp.size, cp.root_hash, canonical, where=source.where, cvm=cvm, controller_id=cid)
        if slot is not None and not getattr(replay, "unlinked", False):
            _save(slot, origin, cp, rng, replay)
    return replay


def _check_consistency(
    source: Source, cvm: str, report: Report, old: tuple[int, bytes] | None, cp: Checkpoint,
    old_root_seen: bytes | None,
) -> bool:
    """`old_root_seen`: the root of the first `old` entries as they streamed past (what an
    offline copy, which has no proofs, is checked with)."""
    if old is None:
        return report.add("consistency", True,
                          "first verification of this log: its checkpoint is remembered from now on")
    old_size, old_root = old
    if cp.size < old_size:
        return report.add("consistency", False,
                          f"log rolled back: we verified size {old_size} before, the controller now serves {cp.size}")
    if cp.size == old_size:
        same = cp.root_hash == old_root
        return report.add("consistency", same, "same checkpoint as last time" if same
                          else f"fork: same size {cp.size} as last time but a different root")
    try:
        if source.live:
            proof = source.consistency(cvm, old_size, cp.size)
            merkle.verify_consistency(old_size, cp.size, proof, old_root, cp.root_hash)
        elif old_root_seen != old_root:
            # Offline we hold every leaf: the old tree must be a prefix of this one.
            raise ValueError(f"the first {old_size} entries do not hash to the remembered root")
    except LimitExceeded:
        raise
    except (LedgerError, ClientError, ValueError, KeyError) as exc:
        return report.add("consistency", False,
                          f"fork: the log does not extend the checkpoint of size {old_size} we verified before: {exc}")
    return report.add("consistency", True, f"the log extends the checkpoint of size {old_size} we verified before")
