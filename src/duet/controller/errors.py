"""The controller's typed errors: each has a stable `code` clients can act on.

Errors from other parts (ledger, attestation, cvm) also carry a `code`; the HTTP layer
(`controller/app.py`, `STATUS`) maps every code to a status in one place; docs/errors.md
lists them.
"""

from __future__ import annotations


class DuetError(Exception):
    code = "duet_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: Index of the log entry that records this refusal, when one was written.
        self.index: int | None = None


class ConfigError(DuetError):
    """The controller cannot start as asked (wrong owner key, unusable data dir, ...)."""

    code = "config_error"


class DataDirInUse(ConfigError):
    """Another controller process holds this data dir."""

    code = "data_dir_in_use"


class AddressInUse(ConfigError):
    """The listening address cannot be bound (in use, or not ours)."""

    code = "address_in_use"


class InvalidRequest(DuetError):
    code = "invalid_request"


class UnknownCvm(DuetError):
    code = "unknown_cvm"


class ReplayedIntent(DuetError):
    code = "replayed_intent"


class Forbidden(DuetError):
    """A valid, authenticated intent that the CVM's mode or policy does not allow."""

    code = "forbidden"


class ModeForbids(Forbidden):
    code = "forbidden_in_mode"


class PolicyForbids(Forbidden):
    code = "forbidden_by_policy"


class InvalidTransition(Forbidden):
    code = "invalid_transition"


class CvmDeleted(DuetError):
    code = "cvm_deleted"


class CvmNotReady(DuetError):
    """The CVM cannot take commands: provisioning failed, or it is quarantined."""

    code = "cvm_not_ready"


class InvalidPolicy(DuetError):
    code = "invalid_policy"


class UnknownProvider(DuetError):
    code = "unknown_provider"


class TeeNotOffered(DuetError):
    """A create asked for a TEE its provider cannot deliver: refused, never substituted."""

    code = "tee_not_offered"


class RollbackDetected(DuetError):
    code = "rollback_detected"
