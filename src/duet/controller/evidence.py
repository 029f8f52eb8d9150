"""Hardware evidence and lockdown around a CVM's life: after provisioning, on entering
in-service, and for the builtin `attest` / `snapshot` / `lockdown` actions.

`Collector` holds the flow every provider shares (what runs when, how lockdown results
and refusals are logged, the snapshot, and the verification of evidence through the one
registry of evidence kinds, `duet.attestation.cvm_kinds`, which users run too);
subclasses supply how lockdown checks run and how evidence is fetched from the guest.

Collectors see a CVM only through :class:`CvmPort`: run a logged command, append
entries, the controller's client key line, and the CVM's record. They never hold the
`Controller`, so this module does not import the service.
"""

from __future__ import annotations

import base64
import functools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from duet.attestation import AttestationError, cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.controller import errors
from duet.controller.state import CvmRecord
from duet.cvm.lockdown import Lockdown
from duet.cvm.ssh import RunResult
from duet.ledger import control_plane, entries, evidence_nonce
from duet.ledger.lockdown import ADVISORY, JUDGE_VERSION
from duet.ledger.policy import SNAPSHOT_COMMANDS
from duet.tee.clock import TrustedClock


class EvidenceRefused(errors.DuetError):
    """The CVM could not show evidence the controller accepts: it is not made usable."""

    code = "evidence_refused"


class LockdownFailed(errors.DuetError):
    code = "lockdown_failed"


class ControlPlaneFailed(errors.DuetError):
    """The cloud's own model of the CVM opens a door (or could not be read)."""

    code = "control_plane_failed"


#: Reads a CVM's model from its cloud's API: {"facts": ..., "model_sha256": ...}.
Inspector = Callable[[str], Awaitable[dict[str, Any]]]


class Outcome(Protocol):
    """What running a logged command gave (the service's `CommandOutcome`)."""

    @property
    def command_index(self) -> int: ...
    @property
    def result_index(self) -> int: ...
    @property
    def result(self) -> RunResult | None: ...


class CvmPort(Protocol):
    """The per-CVM interface collectors get from the controller."""

    @property
    def rec(self) -> CvmRecord: ...

    async def execute(
        self, command: str, *, timeout: float, action: str, intent_index: int | None
    ) -> Outcome:
        """Log `command` as a builtin command, run it, log its result."""
        ...

    def append(self, items: Sequence[entries.Entry]) -> int:
        """Durably append entries; return the index of the first."""
        ...

    def client_key_line(self) -> str:
        """The CVM's authorised key line (public half of the controller's SSH key)."""
        ...

    @property
    def clock(self) -> TrustedClock:
        """The controller's time: never earlier than the newest authenticated time it saw
        (`tee/clock.py`), so a host that sets its clock back cannot revive expired
        certificates or collateral."""
        ...


class EvidenceCollector(Protocol):
    async def after_provisioning(self, port: CvmPort) -> None:
        """Lockdown checks and the first evidence, which must bind the pinned host key."""

    async def on_enter_service(self, port: CvmPort, intent_index: int) -> None:
        """Lockdown, fresh evidence and a state snapshot; raising keeps the CVM in-update."""

    async def builtin(self, port: CvmPort, name: str, *, intent_index: int | None) -> int:
        """Run a builtin action; return the index of the entry it appended last."""
        ...


@dataclass(frozen=True)
class Fetched:
    """Evidence as fetched from the guest: the logged command that carried the nonce,
    and the entry fields (``evidence``, ``collateral``, ``binds`` extras) built from
    its output. Nothing here is trusted until `cvm_kinds.verify_evidence` passes."""

    command_index: int
    fields: dict[str, Any]


#: What an evidence entry's `binds.root` says when the report verified under a root
#: pinned in the provider's settings rather than the hardware vendor's.
NON_VENDOR_ROOT = ("SIMULATED: the report chains to a root pinned in the provider's settings (snp_arks / "
                   "tdx_roots), not to the hardware vendor's (AMD / Intel)")


def trusts_non_vendor_roots(trust: cvm_kinds.Trust) -> bool:
    """Evidence may verify under a root other than AMD's ARKs / Intel's DCAP root."""
    return _not_vendors(trust.snp_arks, "snp") or _not_vendors(trust.tdx_roots, "tdx")


@functools.lru_cache(maxsize=64)
def _not_vendors(roots: tuple[bytes, ...] | None, family: str) -> bool:
    if roots is None:
        return False
    from duet.attestation.dcap.verify import intel_sgx_root_ca_der
    from duet.attestation.snp.certs import amd_roots, cert_der, load_cert

    vendors = {cert_der(a) for a, _ in amd_roots().values()} if family == "snp" else {intel_sgx_root_ca_der()}
    try:
        return any(cert_der(load_cert(r, "root")) not in vendors for r in roots)
    except AttestationError:
        return True


class Collector(ABC):
    #: Where the lockdown checks ran, as the `lockdown` entry tells users.
    lockdown_where = ""
    #: Roots trusted beyond the vendors' (the local provider's development ARK, tests).
    trust = cvm_kinds.Trust()
    #: The provider's control-plane reader, where its cloud has one worth judging.
    inspector: Inspector | None = None

    @property
    def non_vendor_roots(self) -> bool:
        """Evidence may verify under a root other than AMD's / Intel's (the provider
        settings `snp_arks` / `tdx_roots`, a development root): nothing about this
        provider's CVMs may then read as vendor-rooted."""
        return trusts_non_vendor_roots(self.trust)

    @abstractmethod
    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> Lockdown:
        """Gather the lockdown facts on the CVM (logging any command sent to it) and judge them."""

    @abstractmethod
    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        """Ask the guest for evidence of `kind` over `nonce` through a logged command."""

    async def after_provisioning(self, port: CvmPort) -> None:
        await self.lockdown(port, purpose="provisioning", intent_index=1)  # 1: the create intent
        await self.control_plane(port, purpose="provisioning")
        await self.attest(port, intent_index=1, purpose="provisioning")

    async def on_enter_service(self, port: CvmPort, intent_index: int) -> None:
        await self.lockdown(port, purpose="in-service", intent_index=intent_index)
        await self.control_plane(port, purpose="in-service")
        await self.attest(port, intent_index=intent_index, purpose="in-service")
        await self.snapshot(port, intent_index=intent_index)

    async def builtin(self, port: CvmPort, name: str, *, intent_index: int | None) -> int:
        if name == "attest":
            return await self.attest(port, intent_index=intent_index, purpose="attest")
        if name == "snapshot":
            return await self.snapshot(port, intent_index=intent_index)
        if name == "lockdown":
            return await self.lockdown(port, purpose="action", intent_index=intent_index)
        raise errors.InvalidRequest(f"unknown builtin action {name!r}")

    async def attest(self, port: CvmPort, *, intent_index: int | None, purpose: str) -> int:
        """Fetch fresh evidence, verify it exactly as a user will, log it; return its index.

        The same rules hold for every kind: the evidence points to the logged command
        that carried its nonce, binds that nonce to the pinned host key, and carries the
        instance binding the provider declared."""
        rec = port.rec
        kind = rec.kind
        if kind == cvm_kinds.CvmKind.NONE:
            # A plain VM (the owner allowed it explicitly): nothing to attest. The log says
            # so, and every verifier fails the evidence check on it. Its nonce still
            # commits to the intent it answers, as every evidence nonce does.
            return port.append([entries.EvidenceEntry(
                kind=kind, purpose=purpose, nonce=evidence_nonce.make(intent_index).hex(), evidence="", binds={},
                extra={"reason": "launched without a TEE: no hardware evidence exists"})])
        if kind not in cvm_kinds.REGISTRY:
            raise self.refuse(port, f"no verifiable evidence for TEE kind {kind!r} on this provider")
        nonce = evidence_nonce.make(intent_index)  # commits to the intent it answers
        fetched = await self.fetch(port, kind, nonce, intent_index=intent_index)
        assert rec.host_key is not None
        fields = dict(fetched.fields)
        binds = {"report_data": "SHA-512(nonce || SSH host key blob)",
                 "host_key_sha256": entries.sha256_hex(rec.host_key),
                 "instance_binding": rec.binding, **fields.pop("binds", {})}
        candidate: dict[str, Any] = {"kind": kind, "nonce": nonce.hex(), **fields}
        try:
            verified = cvm_kinds.verify_evidence(
                candidate, host_key=rec.host_key, now=port.clock.now(), trust=self.trust,
                binding=rec.binding, host_data=rec.host_data, instance_id=rec.instance_id)
        except (AttestationError, ValueError) as exc:
            raise self.refuse(port, f"the evidence does not verify: {exc}") from None
        _observe_issue_dates(port.clock, candidate)
        issued = getattr(verified.report, "issued_at", None)
        if kind in (cvm_kinds.CvmKind.AZURE_SNP_MAA, cvm_kinds.CvmKind.AZURE_TDX_MAA) and isinstance(issued, int):
            # MAA signed its token's issue time (a key the owner pinned): a time the host
            # cannot hold back.
            port.clock.observe(datetime.fromtimestamp(issued, UTC), "MAA token iat")
        if verified.simulated and not cvm_kinds.is_simulated(kind):
            # A hardware kind verified under a root pinned instead of the vendor's (the
            # provider settings `snp_arks` / `tdx_roots`): the log must not read as
            # AMD/Intel-rooted. Every verifier decides by the roots it pins itself.
            binds["root"] = NON_VENDOR_ROOT
        claims = cvm_kinds.spec_of(kind).claims(verified.report)
        if rec.binding != cvm_kinds.InstanceBinding.NONE:
            binds[rec.binding] = claims.get(rec.binding)
        return port.append([entries.EvidenceEntry(
            kind=kind, purpose=purpose, command_index=fetched.command_index, nonce=nonce.hex(),
            evidence=candidate["evidence"], report_data=cvm_report_data(nonce, rec.host_key).hex(), binds=binds,
            collateral=candidate.get("collateral"),
        )])

    async def lockdown(self, port: CvmPort, *, purpose: str, intent_index: int | None) -> int:
        """Log the facts and every verdict on them; any failure is a refusal. The facts let
        `duet verify` judge them again with today's judges (`duet.ledger.lockdown`)."""
        run = await self.run_lockdown(port, intent_index)
        results, ok = run.results, run.ok
        index = port.append([entries.LockdownEntry(
            purpose=purpose, where=self.lockdown_where, checks=tuple(r.to_json() for r in results), ok=ok,
            judge_version=JUDGE_VERSION, facts=run.facts)])
        if not ok:
            failed = "; ".join(f"{r.name}: {r.detail}" for r in results if not r.ok and r.name not in ADVISORY)
            port.append([entries.ErrorEntry(code="lockdown_failed", message=failed)])
            raise LockdownFailed(f"lockdown checks failed: {failed}")
        return index

    async def control_plane(self, port: CvmPort, *, purpose: str) -> int | None:
        """Read the CVM's model from the cloud API, log the facts with the verdicts and a
        digest of the model, and refuse on any failed check. A model that cannot be read
        is a refusal too: an unchecked door is not a closed one."""
        if self.inspector is None:
            return None
        rec = port.rec
        try:
            seen = await self.inspector(rec.id)
        except Exception as exc:
            message = f"the cloud control plane could not be read: {type(exc).__name__}: {str(exc)[:300]}"
            # `model_read: false` tells verifiers this is an unknown state, not a verdict.
            port.append([entries.ErrorEntry(code="control_plane_failed", message=message,
                                            extra={"purpose": purpose, "model_read": False})])
            raise ControlPlaneFailed(message) from None
        verdicts = control_plane.judge(seen["facts"])
        ok = bool(verdicts) and all(v[1] for v in verdicts)
        index = port.append([entries.ControlPlaneEntry(
            provider=rec.provider, purpose=purpose, model_sha256=str(seen["model_sha256"]), facts=seen["facts"],
            checks=tuple({"name": n, "ok": v, "detail": d} for n, v, d in verdicts), ok=ok)])
        if not ok:
            failed = "; ".join(f"{n}: {d}" for n, v, d in verdicts if not v)
            port.append([entries.ErrorEntry(code="control_plane_failed", message=failed)])
            raise ControlPlaneFailed(f"the cloud control plane opens a door: {failed}")
        return index

    async def snapshot(self, port: CvmPort, *, intent_index: int | None) -> int:
        """duet's fixed read-only commands (ledger.policy.SNAPSHOT_COMMANDS), each logged."""
        last = 0
        for command in SNAPSHOT_COMMANDS:
            outcome = await port.execute(command, timeout=120.0, action="snapshot", intent_index=intent_index)
            last = outcome.result_index
        return last

    @staticmethod
    def refuse(port: CvmPort, message: str) -> EvidenceRefused:
        port.append([entries.ErrorEntry(code="evidence_refused", message=message)])
        return EvidenceRefused(message)


def _observe_issue_dates(clock: TrustedClock, entry: dict[str, Any]) -> None:
    """Evidence that verified carries issue dates the host cannot forge (a VCEK's
    notBefore, DCAP collateral): each raises the controller's lower bound on the time."""
    collateral = entry.get("collateral")
    if not isinstance(collateral, dict):
        return
    vcek = collateral.get("vcek")
    if isinstance(vcek, str):
        try:
            clock.observe_certificate(base64.b64decode(vcek, validate=True), "VCEK notBefore")
        except ValueError:
            pass
    if "tcb_info" in collateral:
        clock.observe_dcap_collateral(collateral)
