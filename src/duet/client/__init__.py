# ruff: noqa: F401  (the TYPE_CHECKING imports are the lazy exports, for type checkers)
"""duet's user-side SDK: the owner's client and the service user's verifier.

    from duet.client import Http, OwnerClient, verify

The names below are the public face (pinned by tests/client/test_sdk_exports.py); they
are imported on first use, so `import duet.client.http` (every `duet` command) does not
pay for the verifier and the attestation package it does not use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS = {
    "OwnerClient": "duet.client.owner",
    "ReadClient": "duet.client.api",
    "Http": "duet.client.http",
    "DEFAULT_URL": "duet.client.config",
    "Limits": "duet.client.config",
    "verify": "duet.client.verify",
    "Report": "duet.client.verify",
    "Check": "duet.client.audit",
    "LogState": "duet.client.audit",
    "RunResult": "duet.client.results",
    "export_bundle": "duet.client.bundle",
    "BundleSource": "duet.client.bundle",
    "UserExpectations": "duet.client.expectations",
    "load_expectations": "duet.client.expectations",
    "ClientError": "duet.client.errors",
    "ConfigError": "duet.client.errors",
    "LimitExceeded": "duet.client.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names for type checkers; at run time __getattr__ imports them
    from duet.client.api import ReadClient
    from duet.client.audit import Check, LogState
    from duet.client.bundle import BundleSource, export_bundle
    from duet.client.config import DEFAULT_URL, Limits
    from duet.client.errors import ClientError, ConfigError, LimitExceeded
    from duet.client.expectations import UserExpectations, load_expectations
    from duet.client.http import Http
    from duet.client.owner import OwnerClient
    from duet.client.results import RunResult
    from duet.client.verify import Report, verify


class _CallableVerifyModule(types.ModuleType):
    """`duet.client.verify` is both the module and the exported function: once the
    module is imported, Python sets the package attribute `verify` to the module, so
    `from duet.client import verify` yields the module. Calling it calls its `verify`
    (looked up at call time, so patching `duet.client.verify.verify` still works)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.verify(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "verify" and type(value) is types.ModuleType:
            value.__class__ = _CallableVerifyModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'duet.client' has no attribute {name!r}")
    mod = importlib.import_module(module)
    if name == "verify":
        return globals()["verify"]  # the module, made callable by _Package on import
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
