"""Hardware evidence around the CVM's life: after provisioning, on entering in-service,
and for the builtin `attest` / `snapshot` actions. Implemented per TEE kind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.state import CvmRecord
    from duet.cvm.ssh import CvmConnection


class EvidenceCollector(Protocol):
    async def after_provisioning(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection) -> None:
        """Lockdown checks and the first evidence, which must bind the pinned host key."""

    async def on_enter_service(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, intent_index: int
    ) -> None:
        """Fresh evidence and a state snapshot; raising keeps the CVM in-update."""

    async def builtin(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, name: str, *, intent_index: int | None
    ) -> int:
        """Run a builtin action; return the index of the entry it appended last."""
        ...
