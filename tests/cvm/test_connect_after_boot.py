"""The first connection to a cloud CVM waits for its guest to boot: the cloud API says
"created" while the guest still boots, so an unreachable sshd is retried until the
provider's boot_timeout_s; a refusal (wrong key, host key) is an answer and is not."""

from __future__ import annotations

import asyncio
import time

import pytest

from duet.cvm.errors import AuthenticationFailed, CvmUnreachable
from duet.cvm.ssh import connect_after_boot


class Booting:
    """A connection whose sshd answers from the `up`-th attempt on (or refuses the key)."""

    def __init__(self, up: int, *, refuse: bool = False) -> None:
        self.up, self.refuse, self.attempts = up, refuse, 0

    async def connect(self) -> str:
        self.attempts += 1
        if self.refuse:
            raise AuthenticationFailed("the server refused the controller's key")
        if self.attempts < self.up:
            raise CvmUnreachable("connection timed out")
        return "ssh-ed25519 AAAA"


def test_an_unreachable_guest_is_retried_until_it_answers() -> None:
    conn = Booting(up=3)
    assert asyncio.run(connect_after_boot(conn, boot_timeout_s=5, interval_s=0.01)) == "ssh-ed25519 AAAA"  # type: ignore[arg-type]
    assert conn.attempts == 3


def test_a_guest_that_never_answers_fails_after_the_boot_timeout() -> None:
    conn = Booting(up=10**9)
    started = time.monotonic()
    with pytest.raises(CvmUnreachable):
        asyncio.run(connect_after_boot(conn, boot_timeout_s=0.2, interval_s=0.01))  # type: ignore[arg-type]
    assert conn.attempts > 1 and time.monotonic() - started < 5


def test_without_a_boot_timeout_there_is_one_attempt() -> None:
    conn = Booting(up=2)
    with pytest.raises(CvmUnreachable):
        asyncio.run(connect_after_boot(conn, boot_timeout_s=0, interval_s=0.01))  # type: ignore[arg-type]
    assert conn.attempts == 1


def test_a_refused_key_is_not_retried() -> None:
    conn = Booting(up=1, refuse=True)
    with pytest.raises(AuthenticationFailed):
        asyncio.run(connect_after_boot(conn, boot_timeout_s=5, interval_s=0.01))  # type: ignore[arg-type]
    assert conn.attempts == 1


def test_the_cloud_providers_take_a_boot_timeout_and_default_to_ten_minutes() -> None:
    from duet.cvm.plan import make_provider

    azure = {"subscription_id": "s", "resource_group": "rg", "location": "westeurope"}
    assert make_provider("azure", {**azure, "boot_timeout_s": 30}).boot_timeout_s == 30  # type: ignore[attr-defined]
    assert make_provider("azure", azure).boot_timeout_s == 600  # type: ignore[attr-defined]
    gcp = {"project": "p", "zone": "europe-west4-a"}
    assert make_provider("gcp", {**gcp, "boot_timeout_s": 45}).boot_timeout_s == 45  # type: ignore[attr-defined]
