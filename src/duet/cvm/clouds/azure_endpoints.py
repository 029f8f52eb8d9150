"""Where the azure provider's SDK clients go: Azure's public cloud by default, or, when
the owner's providers intent names them, another ARM endpoint and Entra ID authority (a
test twin; one day a sovereign cloud or Azure Stack Hub) with the CA bundle their TLS
chains to.

The settings are not secret: they travel in `providers.set` and stand in the controller
log. They are refused under `--tee gramine` (`providers_config.ENCLAVE_REFUSED_SETTINGS`):
the control-plane check reads each VM's model from ARM, and an ARM the owner names could
answer in the real one's place; accepting them there would need users to pin the
endpoint. The CA bundle replaces the public roots for these endpoints only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from duet.cvm.errors import ProvisioningFailed

#: The provider settings this module reads.
KEYS = ("arm_endpoint", "authority_host", "ca_pem")


def check(config: Mapping[str, object]) -> None:
    """Refuse malformed endpoint settings (https URLs with a host and no path, query or
    credentials; a PEM bundle of certificates)."""
    for key in ("arm_endpoint", "authority_host"):
        value = config.get(key)
        if value is None:
            continue
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username or parts.password:
            raise ProvisioningFailed(f"azure: {key} must be an https URL with a host only "
                                     "(e.g. https://management.usgovcloudapi.net)")
    pem = config.get("ca_pem")
    if pem is not None:
        from cryptography import x509

        try:
            if not isinstance(pem, str) or not x509.load_pem_x509_certificates(pem.encode()):
                raise ValueError
        except ValueError:
            raise ProvisioningFailed("azure: ca_pem must be PEM certificates") from None


#: Azure's public cloud's ARM endpoint, where the clients go without `arm_endpoint`.
PUBLIC_ARM = "https://management.azure.com"


def base(url: str) -> str:
    return url.rstrip("/")


def arm_base(arm_endpoint: str | None) -> str:
    """The ARM endpoint the clients actually use (what `client_kwargs` gives them, and
    what a plan shows)."""
    return base(arm_endpoint) if arm_endpoint is not None else PUBLIC_ARM


_CA_FILES: dict[str, str] = {}


def ca_file(pem: str) -> str:
    """The bundle as a file (what `requests` takes), written once per bundle and process to
    a file this process created (mkstemp: a fresh name, O_EXCL, 0600) in the temporary
    directory: outside an enclave that directory is shared, and a file found there under a
    name we would pick (another CA, a symlink) must never be what the TLS check trusts."""
    path = _CA_FILES.get(pem)
    if path is None:
        fd, path = tempfile.mkstemp(prefix="duet-azure-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        _CA_FILES[pem] = path
    return path


def transport(ca_pem: str | None) -> Any:
    """An azure-core transport that verifies TLS against `ca_pem` (None: the default)."""
    if ca_pem is None:
        return None
    from azure.core.pipeline.transport import RequestsTransport

    return RequestsTransport(connection_verify=ca_file(ca_pem))


def client_kwargs(arm_endpoint: str | None, ca_pem: str | None) -> dict[str, Any]:
    """Keyword arguments for the azure-mgmt-* clients."""
    kw: dict[str, Any] = {}
    if arm_endpoint is not None:
        kw["base_url"] = base(arm_endpoint)
        kw["credential_scopes"] = [base(arm_endpoint) + "/.default"]
    t = transport(ca_pem)
    if t is not None:
        kw["transport"] = t
    return kw


def credential_kwargs(settings: Mapping[str, object]) -> dict[str, Any]:
    """Keyword arguments for azure-identity's `ClientSecretCredential`: the authority, with
    instance discovery off (it would ask Azure's public cloud which authorities exist),
    and the CA bundle."""
    kw: dict[str, Any] = {}
    authority = settings.get("authority_host")
    if isinstance(authority, str):
        kw["authority"] = base(authority)
        kw["disable_instance_discovery"] = True
    pem = settings.get("ca_pem")
    t = transport(pem if isinstance(pem, str) else None)
    if t is not None:
        kw["transport"] = t
    return kw
