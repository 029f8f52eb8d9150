"""A service user's expectations file for `duet verify --expect` (README, "Expectations").

Shape::

    controller: {tee: sgx, mrenclave: "<hex>", mrsigner: "<hex>", min_isv_svn: 1}
    cvm:
      tee: snp                        # snp | simulated-snp | tdx | azure-snp | azure-tdx
      measurement: "<hex>"
      host_data: "<hex>"              # optional: the controller's per-CVM launch value
      min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
      max_evidence_age: 1h
      mode: in-service
    history:
      allowed_commands: ['^apt-get install -y [a-z0-9.+-]+$']
    lockdown: [password_auth_off, only_controller_key, agents_disabled]

Every field is optional ("not checked if absent"); unknown keys are refused, so a typo
cannot silently drop a check. `controller` and the evidence claims under `cvm` use the
attestation package's `Expectations` fields.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from duet.attestation import Expectations as EvidenceExpectations
from duet.client.http import ClientError
from duet.ledger.lockdown import CHECKS

CVM_TEES = ("snp", "simulated-snp", "tdx", "azure-snp", "azure-tdx")
LOCKDOWN_CHECKS = CHECKS
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")


def parse_duration(text: str) -> timedelta:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


class ControllerExpectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tee: str | None = Field(None, description="sgx (or simulated)")
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    accepted_tcb_statuses: list[str] | None = None

    def evidence(self) -> EvidenceExpectations:
        return EvidenceExpectations(**self.model_dump(exclude={"tee"}, exclude_none=True))


class CvmExpectations(BaseModel):
    model_config = ConfigDict(extra="allow")
    tee: str | None = None
    max_evidence_age: str | None = None
    mode: str | None = None

    @field_validator("tee")
    @classmethod
    def _tee(cls, v: str | None) -> str | None:
        if v is not None and v not in CVM_TEES:
            raise ValueError(f"must be one of {', '.join(CVM_TEES)}")
        return v

    @field_validator("max_evidence_age")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str | None) -> str | None:
        if v is not None and v not in ("in-update", "in-service"):
            raise ValueError("must be in-update or in-service")
        return v

    @property
    def max_age(self) -> timedelta | None:
        return None if self.max_evidence_age is None else parse_duration(self.max_evidence_age)

    def evidence(self) -> EvidenceExpectations:
        """The claims part, checked by the attestation package (which refuses unknown keys)."""
        return EvidenceExpectations(**(self.model_extra or {}))


class HistoryExpectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowed_commands: list[str] | None = None

    @field_validator("allowed_commands")
    @classmethod
    def _regexes(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"{p!r} is not a valid regex: {exc}") from None
        return v


class UserExpectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controller: ControllerExpectations | None = None
    cvm: CvmExpectations | None = None
    history: HistoryExpectations | None = None
    lockdown: list[str] | None = None

    @field_validator("lockdown")
    @classmethod
    def _lockdown(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            if name not in LOCKDOWN_CHECKS:
                raise ValueError(f"unknown lockdown check {name!r}; known: {', '.join(LOCKDOWN_CHECKS)}")
        return v


def load_expectations(path: Path) -> UserExpectations:
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClientError("invalid_expectations", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClientError("invalid_expectations", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ClientError("invalid_expectations", f"{path} must be a YAML mapping")
    try:
        exp = UserExpectations.model_validate(doc)
        if exp.cvm is not None:
            exp.cvm.evidence()
        if exp.controller is not None:
            exp.controller.evidence()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ClientError("invalid_expectations", f"{path}: {problems}") from None
    return exp
