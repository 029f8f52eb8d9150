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
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from duet.attestation.binding import controller_report_data
from duet.attestation.errors import AttestationError
from duet.client.audit import Audit, Check, LogState, audit_log
from duet.client.cvm_checks import evidence_checks, history_checks, lockdown_checks, time_checks
from duet.client.expectations import ControllerExpectations, UserExpectations
from duet.client.http import ClientError, Http
from duet.ledger import keys, merkle
from duet.ledger.checkpoint import Checkpoint, open_checkpoint
from duet.ledger.errors import LedgerError
from duet.ledger.note import Verifier

PAGE = 1000


def default_state_dir() -> Path:
    env = os.environ.get("DUET_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "duet"


@dataclass
class Report:
    cvm: str
    checks: list[Check] = field(default_factory=list)
    state: LogState | None = None
    controller: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)

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
            "state": None if s is None else {
                "mode": s.mode, "epoch": s.epoch, "commands": s.commands, "rejected": s.rejected,
                "interrupted": s.interrupted, "host_key": s.host_key,
            },
            "checks": [c.to_json() for c in self.checks],
        }


class CheckpointMemory:
    """The last checkpoint this user verified, per log origin: the anchor for detecting
    rollback and forks on the next run."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "checkpoints.json"

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged memory is not silently reset: that would forget the anchor.
            raise ClientError("state_corrupt", f"cannot read remembered checkpoints in {self.path}") from None
        return data if isinstance(data, dict) else {}

    def get(self, origin: str) -> tuple[int, bytes] | None:
        entry = self._load().get(origin)
        if not entry:
            return None
        return int(entry["size"]), base64.b64decode(entry["root"])

    def note(self, origin: str) -> str | None:
        entry = self._load().get(origin) or {}
        note = entry.get("note")
        return note if isinstance(note, str) else None

    def put(self, origin: str, size: int, root: bytes, note: str | None = None) -> None:
        data = self._load()
        data[origin] = {"size": size, "root": base64.b64encode(root).decode()}
        if note is not None:
            data[origin]["note"] = note
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def verify_controller_quote(
    quote: dict[str, Any], expected_report_data: bytes, trust_simulated: bool, now: datetime,
    expect: ControllerExpectations | None = None,
) -> tuple[bool, str, dict[str, Any]]:
    """Verify the controller's SGX quote, its binding, and the user's expectations of it;
    returns (ok, detail, claims)."""
    from duet.attestation import validate
    from duet.attestation.dcap import verify_sgx_quote

    simulated = bool(quote.get("simulated"))
    root: bytes | None = None
    if simulated:
        if not trust_simulated:
            return False, ("the controller runs on a SIMULATED TEE (no SGX); pass --trust-simulated "
                           "to accept its development root (unsafe outside development)"), {}
        root = base64.b64decode(quote.get("simulated_root_ca", ""))
    problem = _chain_roots_problem(quote.get("collateral"), root)
    if problem:
        return False, f"quote collateral is inconsistent: {problem}", {}
    try:
        raw = base64.b64decode(quote["quote"], validate=True)
        report = verify_sgx_quote(raw, quote["collateral"], now=now, root_ca_der=root)
    except (AttestationError, KeyError, ValueError, binascii.Error) as exc:
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
        return False, "quote verifies but its report data does not bind the controller key and the nonce", claims
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


def _chain_roots_problem(collateral: Any, root: bytes | None) -> str | None:
    """Every issuer chain in the collateral must end in exactly the trust anchor used:
    a verifier that ignores the chain's copy of the root would leave bytes unchecked."""
    from cryptography import x509

    from duet.attestation import intel_sgx_root_ca_der

    anchor = root if root is not None else intel_sgx_root_ca_der()
    if not isinstance(collateral, dict):
        return "collateral is not an object"
    for name in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        chain = collateral.get(name)
        if chain is None:
            continue
        try:
            certs = x509.load_pem_x509_certificates(chain.encode() if isinstance(chain, str) else bytes(chain))
        except (ValueError, TypeError):
            return f"{name} is not a PEM certificate chain"
        if not certs or certs[-1].public_bytes(serialization.Encoding.DER) != anchor:
            return f"{name} does not end in the trusted root certificate"
    return None


def fetch_leaves(http: Http, cvm: str, size: int) -> list[bytes]:
    leaves: list[bytes] = []
    while len(leaves) < size:
        page = http.get_json(f"/v1/cvms/{cvm}/entries", start=len(leaves), end=size)["entries"]
        if not page:
            raise ClientError("bad_response", f"controller returned no entries at index {len(leaves)}")
        for item in page:
            if item["index"] != len(leaves):
                raise ClientError("bad_response", "controller returned entries out of order")
            leaves.append(base64.b64decode(item["leaf"], validate=True))
    return leaves


class Source(Protocol):
    """Where the controller's answers come from: live over HTTP, or an offline bundle."""

    live: bool

    def controller(self) -> dict[str, Any]: ...
    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]: ...
    def checkpoint(self, cvm: str, shown: str | None = None) -> str: ...
    def leaves(self, cvm: str, size: int) -> list[bytes]: ...
    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]: ...


class LiveSource:
    live = True

    def __init__(self, http: Http) -> None:
        self.http = http

    def controller(self) -> dict[str, Any]:
        return dict(self.http.get_json("/v1/controller"))

    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]:
        nonce = nonce or secrets.token_bytes(32)
        return nonce, dict(self.http.get_json("/v1/controller/quote", nonce=nonce.hex()))

    def checkpoint(self, cvm: str, shown: str | None = None) -> str:
        """`shown`: the checkpoint we verified last; the controller refuses to serve a log
        older than it (a rolled-back enclave state) instead of answering."""
        headers = {"Duet-Checkpoint": base64.b64encode(shown.encode()).decode()} if shown else None
        return self.http.get_text(f"/v1/cvms/{cvm}/checkpoint", headers=headers)

    def leaves(self, cvm: str, size: int) -> list[bytes]:
        return fetch_leaves(self.http, cvm, size)

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        proof = self.http.get_json(f"/v1/cvms/{cvm}/proofs/consistency", old=old, new=new)["hashes"]
        return [base64.b64decode(h, validate=True) for h in proof]


def verify(
    http: Http | Source,
    cvm: str,
    *,
    trust_simulated: bool = False,
    state_dir: Path | None = None,
    now: datetime | None = None,
    remember: bool = True,
    expect: UserExpectations | None = None,
) -> tuple[Report, Audit | None]:
    source: Source = LiveSource(http) if isinstance(http, Http) else http
    report = Report(cvm)
    now = now or datetime.now(UTC)
    memory = CheckpointMemory(state_dir or default_state_dir())

    info = source.controller()
    report.controller = {k: info.get(k) for k in ("controller_id", "tee", "simulated", "version", "measurement")}
    try:
        pub_raw = base64.b64decode(info["public_key"], validate=True)
        controller_key: Ed25519PublicKey = keys.public_from_b64(info["public_key"])
    except (LedgerError, KeyError, ValueError, binascii.Error):
        report.add("controller_identity", False, "controller public key is malformed")
        return report, None
    cid = keys.key_id(controller_key)
    if not report.add("controller_identity", cid == info.get("controller_id"),
                      f"controller id {cid[:16]}… is the hash of its key"
                      if cid == info.get("controller_id") else "controller id is not the hash of its key"):
        return report, None

    nonce, quote = source.quote(secrets.token_bytes(32) if source.live else None)
    expected_rd = controller_report_data(pub_raw, nonce)
    ok, detail, claims = verify_controller_quote(
        quote, expected_rd, trust_simulated, now, expect.controller if expect else None
    )
    if not source.live:
        detail += " (from the bundle: the nonce is the exporter's, so this shows no freshness)"
    report.controller.update(claims)
    if not report.add("controller_quote", ok, detail, simulated=bool(quote.get("simulated"))):
        return report, None

    origin = f"duet/{cid}/{cvm}"
    try:
        note = source.checkpoint(cvm, memory.note(origin))
    except ClientError as exc:
        if exc.code in ("unknown_cvm", "controller_unreachable"):
            raise
        if exc.code == "rollback_detected":
            report.add("consistency", False, f"the controller refuses: {exc.message}")
            return report, None
        report.add("checkpoint_signature", False, f"the controller serves no checkpoint: [{exc.code}] {exc.message}")
        return report, None
    try:
        cp: Checkpoint = open_checkpoint(note, Verifier(f"duet/{cid}", controller_key), expected_origin=origin)
    except LedgerError as exc:
        report.add("checkpoint_signature", False, f"checkpoint is not validly signed by the attested key: {exc}")
        return report, None
    report.checkpoint = {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root_hash).decode()}
    report.add("checkpoint_signature", True, f"checkpoint (size {cp.size}) is signed by the attested controller key")

    try:
        leaves = source.leaves(cvm, cp.size)
    except ClientError as exc:
        report.add("log_root", False, f"the controller does not serve the log: [{exc.code}] {exc.message}")
        return report, None
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    computed = merkle.root(hashes)
    if not report.add("log_root", len(leaves) == cp.size and computed == cp.root_hash,
                      f"the {len(leaves)} entries hash to the checkpoint's root (RFC 9162)"
                      if computed == cp.root_hash else
                      "the entries do not hash to the signed root: the log was altered"):
        return report, None

    _check_consistency(source, cvm, report, memory.get(origin), cp, hashes)
    audit = audit_log(leaves, controller_id=cid, controller_key_b64=info["public_key"], cvm_id=cvm)
    report.checks.extend(audit.checks)
    report.checks.extend(time_checks(audit.decoded, now))
    report.state = audit.state
    ev_checks, _ = evidence_checks(audit.decoded, audit.state, trust_simulated=trust_simulated, now=now,
                                   expect=expect)
    report.checks.extend(ev_checks)
    report.checks.extend(history_checks(audit.decoded, expect))
    report.checks.extend(lockdown_checks(audit.decoded, audit.state, expect))
    if remember and report.ok:
        memory.put(origin, cp.size, cp.root_hash, note)
    return report, audit


def _check_consistency(
    source: Source, cvm: str, report: Report, old: tuple[int, bytes] | None, cp: Checkpoint, hashes: list[bytes]
) -> None:
    if old is None:
        report.add("consistency", True, "first verification of this log: its checkpoint is remembered from now on")
        return
    old_size, old_root = old
    if cp.size < old_size:
        report.add("consistency", False,
                   f"log rolled back: we verified size {old_size} before, the controller now serves {cp.size}")
        return
    if cp.size == old_size:
        same = cp.root_hash == old_root
        report.add("consistency", same, "same checkpoint as last time" if same
                   else f"fork: same size {cp.size} as last time but a different root")
        return
    try:
        if source.live:
            proof = source.consistency(cvm, old_size, cp.size)
            merkle.verify_consistency(old_size, cp.size, proof, old_root, cp.root_hash)
        elif merkle.root(hashes[:old_size]) != old_root:
            # Offline we hold every leaf: the old tree must be a prefix of this one.
            raise ValueError(f"the first {old_size} entries do not hash to the remembered root")
    except (LedgerError, ClientError, ValueError, KeyError) as exc:
        report.add("consistency", False,
                   f"fork: the log does not extend the checkpoint of size {old_size} we verified before: {exc}")
        return
    report.add("consistency", True, f"the log extends the checkpoint of size {old_size} we verified before")
