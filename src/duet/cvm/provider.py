"""The provider contract: how a CVM comes to exist, is kept running and goes away.

A provider only *provisions*; it never runs commands. Everything done inside a CVM goes
through the controller's SSH channel (`duet.cvm.ssh`), so that it is logged. What a
provider returns in `Provisioned.launch` is written verbatim into the `provisioned` log
entry, so it must say everything a user needs to audit how the CVM was launched (the
exact request / configuration, which login paths were disabled) and nothing secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from duet.attestation.cvm_kinds import TeeOffer

Status = Literal["running", "stopped", "missing"]


@dataclass(frozen=True)
class Provisioned:
    """Where a CVM can be reached, and how it was launched (for the log).

    `host`/`port`/`user` are what the controller's SSH channel connects to. The host key
    is deliberately absent: the controller learns it only by connecting, and binds it to
    the CVM's attestation evidence (invariant 3), so a provider cannot vouch for it.
    """

    instance_id: str
    host: str
    port: int
    user: str
    launch: dict[str, object] = field(hash=False)


@runtime_checkable
class Provider(Protocol):
    """What the controller needs from a CVM provider (`local`, `qemu`, `azure`, `gcp`)."""

    name: str
    @property
    def tees(self) -> Mapping[str, TeeOffer]:
        """Requested TEE -> what the provider delivers (evidence kind, instance binding).
        The first entry is the default; a TEE not listed is refused at create."""
        ...

    async def create(
        self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]
    ) -> Provisioned:
        """Create and start a CVM whose only login is `authorized_key` (one OpenSSH
        public key line), with every other login path disabled."""
        ...

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        """Start the CVM again if it stopped (e.g. after a host or controller restart),
        keeping its identity (host key, address) where possible."""
        ...

    async def status(self, cvm_id: str) -> str:
        """One of "running", "stopped", "missing"."""
        ...

    async def delete(self, cvm_id: str) -> None:
        """Stop the CVM and remove everything the provider made for it."""
        ...


RUN_MARKER_ENV = "DUET_RUN"
"""Environment variable the SSH channel sets (to a random token) for each command.

Every process the command starts inherits it, so a timed-out command can be found and
killed even where the SSH server refuses `signal` requests. Providers configure their
sshd to accept it (`AcceptEnv DUET_RUN`); where it is not accepted it is simply dropped.
"""

CVM_MARKER_ENV = "DUET_CVM"
"""Environment variable a provider's sshd sets (`SetEnv DUET_CVM=<cvm id>`) for every
session, so that deleting a CVM can find and stop every process its sessions left."""
