"""Helpers shared by the CVM tests (a module of its own: `conftest` is not importable
reliably when several test directories have one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from duet.cvm.local import LocalProvider
from duet.cvm.provider import Provisioned
from duet.cvm.ssh import CvmConnection


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Cvm:
    provider: LocalProvider
    cvm_id: str
    prov: Provisioned
    key: asyncssh.SSHKey

    def connection(self, pinned: str | None = None) -> CvmConnection:
        return CvmConnection(
            host=self.prov.host,
            port=self.prov.port,
            user=self.prov.user,
            client_key=self.key,
            pinned_host_key=pinned,
        )

    @property
    def dir(self) -> Path:
        return self.provider.cvm_dir(self.cvm_id)

    @property
    def workdir(self) -> Path:
        return Path(str(self.prov.launch["workdir"]))
