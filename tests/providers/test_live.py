"""Opt-in live tests: the whole life of a CVM on a real cloud (create, status, one command
over the controller's SSH channel, delete, gone). They cost money and need credentials
from the cloud's standard chain, so they run only when asked:

* ``DUET_LIVE_AZURE=1`` with ``AZURE_SUBSCRIPTION_ID``, ``DUET_AZURE_RESOURCE_GROUP``
  (existing), ``DUET_AZURE_LOCATION`` and DefaultAzureCredential able to log in;
* ``DUET_LIVE_GCP=1`` with ``DUET_GCP_PROJECT``, ``DUET_GCP_ZONE`` and Application
  Default Credentials;
* both need ``DUET_CONTROLLER_CIDR``: this machine's public address (SSH is admitted
  from there only).

``DUET_LIVE_TEE`` picks ``snp`` (default) or ``tdx``. Run: ``pytest -m slow tests/providers/test_live.py``.
"""

from __future__ import annotations

import os
import secrets

import pytest

from duet.cvm.provider import Provider

pytestmark = pytest.mark.slow


def _env(*names: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.skip(f"set {', '.join(missing)}")
    return {n: os.environ[n] for n in names}


async def _life(provider: Provider) -> None:
    from duet.cvm.ssh import CvmConnection, generate_client_key, public_line

    key = generate_client_key()
    cvm_id = "live-" + secrets.token_hex(4)
    spec = {"tee": os.environ.get("DUET_LIVE_TEE", "snp"), "host_data": secrets.token_hex(32),
            "controller_cidr": os.environ["DUET_CONTROLLER_CIDR"]}
    prov = await provider.create(cvm_id, authorized_key=public_line(key), spec=spec)
    try:
        assert await provider.status(cvm_id) == "running"
        conn = CvmConnection(host=prov.host, port=prov.port, user=prov.user, client_key=key, pinned_host_key=None,
                             connect_timeout_s=30)
        last: Exception | None = None
        for _ in range(30):  # cloud-init may still be starting sshd
            try:
                await conn.connect()
                break
            except Exception as exc:
                last = exc
                import asyncio

                await asyncio.sleep(10)
        else:
            raise AssertionError(f"no SSH: {last}")
        res = await conn.run("id -un; systemctl is-enabled walinuxagent google-guest-agent 2>&1; true")
        await conn.close()
        assert res.exit_status == 0
        assert res.stdout.decode().split()[0] == "duet"
    finally:
        await provider.delete(cvm_id)
    assert await provider.status(cvm_id) == "missing"


async def test_live_azure() -> None:
    if os.environ.get("DUET_LIVE_AZURE") != "1":
        pytest.skip("set DUET_LIVE_AZURE=1 to run against a real Azure subscription")
    env = _env("AZURE_SUBSCRIPTION_ID", "DUET_AZURE_RESOURCE_GROUP", "DUET_AZURE_LOCATION", "DUET_CONTROLLER_CIDR")
    from duet.cvm.plan import make_provider

    provider = make_provider("azure", {"subscription_id": env["AZURE_SUBSCRIPTION_ID"],
                                       "resource_group": env["DUET_AZURE_RESOURCE_GROUP"],
                                       "location": env["DUET_AZURE_LOCATION"]})
    await _life(provider)


async def test_live_gcp() -> None:
    if os.environ.get("DUET_LIVE_GCP") != "1":
        pytest.skip("set DUET_LIVE_GCP=1 to run against a real Google Cloud project")
    env = _env("DUET_GCP_PROJECT", "DUET_GCP_ZONE", "DUET_CONTROLLER_CIDR")
    from duet.cvm.plan import make_provider

    provider = make_provider("gcp", {"project": env["DUET_GCP_PROJECT"], "zone": env["DUET_GCP_ZONE"]})
    await _life(provider)
