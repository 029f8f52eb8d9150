"""Typed errors of the CVM layer (providers and the SSH channel).

Each error carries a stable snake_case `code` so that the controller can log it and the
HTTP layer can map it to a status without parsing messages. Messages are meant for humans
and may change; codes may not.
"""

from __future__ import annotations


class CvmError(Exception):
    """Base class: something about a CVM (its provisioning or its SSH channel) failed."""

    code = "cvm_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HostKeyMismatch(CvmError):
    """The server presented a host key other than the pinned one.

    The connection was refused during key exchange, before authentication, so nothing
    (neither the client key's signature nor a command) was sent to the impostor.
    """

    code = "host_key_mismatch"


class CvmUnreachable(CvmError):
    """The CVM's SSH server could not be reached, or the connection broke.

    `may_have_run` is True when the connection broke after a command was sent: the
    command may have run (in part), and its result is unknown. The controller must then
    log the command as interrupted rather than retry it.
    """

    code = "cvm_unreachable"

    def __init__(self, message: str, *, may_have_run: bool = False) -> None:
        super().__init__(message)
        self.may_have_run = may_have_run


class AuthenticationFailed(CvmUnreachable):
    """The SSH server refused the controller's key (e.g. authorized_keys was changed)."""

    code = "cvm_auth_failed"


class ProvisioningFailed(CvmError):
    """A provider could not create, start or delete a CVM."""

    code = "provisioning_failed"


class CvmNotFound(CvmError):
    """The provider knows no CVM with this id (never created, or already deleted)."""

    code = "cvm_not_found"
