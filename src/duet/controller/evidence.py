"""Hardware evidence and lockdown around a CVM's life: after provisioning, on entering
in-service, and for the builtin `attest` / `snapshot` / `lockdown` actions.

`Collector` holds the flow every provider shares (what runs when, how lockdown results
and refusals are logged, the snapshot); subclasses supply how lockdown checks run and
how evidence is obtained and verified for their kind of CVM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

from duet.controller import errors
from duet.cvm.lockdown import Lockdown
from duet.ledger.lockdown import ADVISORY, JUDGE_VERSION
from duet.ledger.policy import SNAPSHOT_COMMANDS

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.state import CvmRecord
    from duet.cvm.ssh import CvmConnection


class EvidenceRefused(errors.DuetError):
    """The CVM could not show evidence the controller accepts: it is not made usable."""

    code = "evidence_refused"


class LockdownFailed(errors.DuetError):
    code = "lockdown_failed"


class EvidenceCollector(Protocol):
    async def after_provisioning(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection) -> None:
        """Lockdown checks and the first evidence, which must bind the pinned host key."""

    async def on_enter_service(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, intent_index: int
    ) -> None:
        """Lockdown, fresh evidence and a state snapshot; raising keeps the CVM in-update."""

    async def builtin(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, name: str, *, intent_index: int | None
    ) -> int:
        """Run a builtin action; return the index of the entry it appended last."""
        ...


class Collector(ABC):
    #: Where the lockdown checks ran, as the `lockdown` entry tells users.
    lockdown_where = ""

    @abstractmethod
    async def run_lockdown(self, ctl: Controller, rec: CvmRecord, intent_index: int | None) -> Lockdown:
        """Gather the lockdown facts on the CVM (logging any command sent to it) and judge them."""

    @abstractmethod
    async def attest(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None, purpose: str) -> int:
        """Collect fresh evidence, verify it, log it; return its entry's index."""

    async def after_provisioning(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection) -> None:
        await self.lockdown(ctl, rec, purpose="provisioning", intent_index=1)  # 1: the create intent
        await self.attest(ctl, rec, intent_index=1, purpose="provisioning")

    async def on_enter_service(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, intent_index: int) -> None:
        await self.lockdown(ctl, rec, purpose="in-service", intent_index=intent_index)
        await self.attest(ctl, rec, intent_index=intent_index, purpose="in-service")
        await self.snapshot(ctl, rec, intent_index=intent_index)

    async def builtin(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, name: str, *, intent_index: int | None
    ) -> int:
        if name == "attest":
            return await self.attest(ctl, rec, intent_index=intent_index, purpose="attest")
        if name == "snapshot":
            return await self.snapshot(ctl, rec, intent_index=intent_index)
        if name == "lockdown":
            return await self.lockdown(ctl, rec, purpose="action", intent_index=intent_index)
        raise errors.InvalidRequest(f"unknown builtin action {name!r}")

    async def lockdown(self, ctl: Controller, rec: CvmRecord, *, purpose: str, intent_index: int | None) -> int:
        """Log the facts and every verdict on them; any failure is a refusal. The facts let
        `duet verify` judge them again with today's judges (`duet.ledger.lockdown`)."""
        run = await self.run_lockdown(ctl, rec, intent_index)
        results = run.results
        ok = run.ok
        index = ctl.append(rec, [{
            "type": "lockdown",
            "purpose": purpose,
            "where": self.lockdown_where,
            "checks": [r.to_json() for r in results],
            "ok": ok,
            "judge_version": JUDGE_VERSION,
            "facts": run.facts,
        }])
        if not ok:
            failed = "; ".join(f"{r.name}: {r.detail}" for r in results if not r.ok and r.name not in ADVISORY)
            ctl.append(rec, [{"type": "error", "code": "lockdown_failed", "message": failed}])
            raise LockdownFailed(f"lockdown checks failed: {failed}")
        return index

    async def snapshot(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None) -> int:
        """duet's fixed read-only commands (ledger.policy.SNAPSHOT_COMMANDS), each logged."""
        last = 0
        for command in SNAPSHOT_COMMANDS:
            outcome = await ctl.execute(rec, None, command, timeout=120.0, action="snapshot",
                                        intent_index=intent_index, builtin=True)
            last = outcome.result_index
        return last

    @staticmethod
    def refuse(ctl: Controller, rec: CvmRecord, message: str) -> EvidenceRefused:
        ctl.append(rec, [{"type": "error", "code": "evidence_refused", "message": message}])
        return EvidenceRefused(message)
