"""A service user's expectations file for `duet verify --expect` (README, "Expectations").

Shape::

    controller: {tee: sgx, mrenclave: "<hex>", mrsigner: "<hex>", min_isv_svn: 1,
                 builds: [{mrenclave: "<hex>"}], allow_mrsigner_approval: false,
                 recovery: none}                # or {min_threshold: 2}
    cvm:
      tee: snp                        # the evidence kind: snp | simulated-snp | tdx | azure-snp | azure-tdx
                                      #   | azure-snp-maa | azure-tdx-maa (then pin MAA below)
      maa_jwks: maa-certs.json        # MAA kinds: MAA's signing keys (a JWKS file, or inline)
      maa_issuer: https://myinstance.weu.attest.azure.net
      azure_ak_roots: [vtpm-root.pem]  # azure-snp/azure-tdx: the vTPM AK certificate must chain here
      snp_arks: [dev-ark.pem]         # SEV-SNP roots instead of AMD's (twins, private roots): SIMULATED
      tdx_roots: [dev-dcap-root.der]  # DCAP roots instead of Intel's for TDX quotes (as snp_arks): SIMULATED
      instance_binding: none          # accept evidence bound to the host key only (e.g. GCP)
      measurement: "<hex>"
      host_data: "<hex>"              # optional: the controller's per-CVM launch value
      min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
      max_evidence_age: 1h
      mode: in-service
    history:
      allowed_commands: ['^apt-get install -y [a-z0-9.+-]+$']
    lockdown: [password_auth_off, only_controller_key, agents_disabled]
    owner:
      keys: ["<key id: 64 hex>", "<public key: base64 of the raw Ed25519 key>"]
    witnesses:                        # the CVM head must be in a controller-log checkpoint
      keys: ["<name+hash+key: a C2SP cosignature/v1 vkey>"]
      quorum: 1                       # cosigned by this many of them (default: all)
      max_age: 10m                    # with cosignatures no older than this

Every field is optional ("not checked if absent"); unknown keys are refused, so a typo
cannot silently drop a check. `controller` and the evidence claims under `cvm` use the
attestation package's `Expectations` fields.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from duet.attestation import Expectations as EvidenceExpectations
from duet.attestation.cvm_kinds import REPORTED_ONLY_KINDS, CvmKind, InstanceBinding
from duet.attestation.validate import one_line
from duet.client.errors import ClientError
from duet.ledger import keys as ledger_keys
from duet.ledger.entries import OWNER_MODES
from duet.ledger.errors import LedgerError
from duet.ledger.lockdown import CHECKS
from duet.ledger.regex import compile_linear

#: What `cvm.tee` may name: an evidence kind (a plain VM, `none`, never verifies), or a
#: kind that only `duet attestation verify` reports so far.
CVM_TEES = (*(k.value for k in CvmKind if k is not CvmKind.NONE), *REPORTED_ONLY_KINDS)
INSTANCE_BINDINGS = tuple(b.value for b in InstanceBinding)
LOCKDOWN_CHECKS = CHECKS
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")


def parse_duration(text: str) -> timedelta:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


class BuildExpectation(BaseModel):
    """One controller build the user accepts as a holder of the state key (docs/continuity.md)."""

    model_config = ConfigDict(extra="forbid")
    mrenclave: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class RecoveryExpectation(BaseModel):
    """`controller.recovery: {min_threshold: M}`: every recovery policy the controller log
    ever put in force needs at least M holders' shares to rebuild the state key."""

    model_config = ConfigDict(extra="forbid")
    min_threshold: int = Field(ge=1, le=16)


class ControllerExpectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tee: str | None = Field(None, description="sgx (or simulated)")
    #: Every build that ever held the state key must be one of these (and so must the
    #: quoted one); see client/build_history.py.
    builds: list[BuildExpectation] | None = None
    allow_mrsigner_approval: bool = False
    #: `none`: recovery from shares must never have been on (M colluding holders could
    #: rebuild K outside any enclave); or a minimum threshold (client/build_history.py).
    recovery: Literal["none"] | RecoveryExpectation | None = None
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    accepted_tcb_statuses: list[str] | None = None
    forbidden_advisories: list[str] | None = None
    max_collateral_age: str | None = None

    def evidence(self) -> EvidenceExpectations:
        return EvidenceExpectations(**self.model_dump(exclude={"tee", "builds", "allow_mrsigner_approval", "recovery"},
                                                      exclude_none=True))


class CvmExpectations(BaseModel):
    model_config = ConfigDict(extra="allow")
    tee: str | None = None
    instance_binding: str | None = None
    max_evidence_age: str | None = None
    mode: str | None = None
    #: A CVM whose evidence says DEBUG (the host can read and change its memory) fails
    #: `duet verify` unless this is true: a user must ask for it by name.
    allow_debug: bool = False

    @field_validator("instance_binding")
    @classmethod
    def _binding(cls, v: str | None) -> str | None:
        if v is not None and v not in INSTANCE_BINDINGS:
            raise ValueError(f"must be one of {', '.join(INSTANCE_BINDINGS)}")
        return v

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
        if v is not None and v not in OWNER_MODES:
            raise ValueError(f"must be one of {', '.join(OWNER_MODES)}")
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
                compile_linear(p)  # the engine the history check uses: RE2, linear time
            except ValueError as exc:
                raise ValueError(f"{p[:200]!r} is not a valid regex: {exc}") from None
        return v


_KEY_ID = re.compile(r"^[0-9a-f]{64}$")


def owner_key_id(text: str) -> str:
    """A user names an owner key by its key id (lowercase hex SHA-256 of the raw key, as
    `duet keygen` prints it) or by the public key itself (base64 of the raw 32 bytes, as
    genesis and `owner.keys` intents carry it)."""
    if _KEY_ID.fullmatch(text):
        return text
    try:
        return ledger_keys.key_id(ledger_keys.public_from_b64(text))
    except (LedgerError, ValueError, TypeError):
        raise ValueError(f"{text[:80]!r} is neither a key id (64 lowercase hex) nor a base64 Ed25519 public key")\
            from None


class OwnerExpectations(BaseModel):
    """The owner keys this user accepts: genesis and every later owner-key change must
    name only these (a controller that mints its own owner key is caught here)."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(min_length=1)

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            owner_key_id(k)
        return v

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(owner_key_id(k) for k in self.keys)


class WitnessExpectations(BaseModel):
    """The witnesses whose cosignatures this user demands (client/witness_check.py)."""

    model_config = ConfigDict(extra="forbid")
    keys: list[str] = Field(min_length=1)
    quorum: int | None = Field(None, ge=1)
    max_age: str | None = None

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        from duet.ledger.cosignature import CosignatureVerifier

        for k in v:
            try:
                CosignatureVerifier.from_vkey(k)
            except (LedgerError, ValueError) as exc:
                raise ValueError(f"{k[:80]!r} is not a cosignature/v1 vkey: {exc}") from None
        return v

    @field_validator("max_age")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _quorum(self) -> WitnessExpectations:
        if self.quorum is not None and self.quorum > len(self.keys):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.keys)} keys named")
        return self

    @property
    def age(self) -> timedelta | None:
        return None if self.max_age is None else parse_duration(self.max_age)


class UserExpectations(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controller: ControllerExpectations | None = None
    cvm: CvmExpectations | None = None
    history: HistoryExpectations | None = None
    lockdown: list[str] | None = None
    owner: OwnerExpectations | None = None
    witnesses: WitnessExpectations | None = None

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
        detail = " ".join(str(exc).split())
        raise ClientError("invalid_expectations", f"{path} is not valid YAML: {detail}") from None
    if not isinstance(doc, dict):
        raise ClientError("invalid_expectations", f"{path} must be a YAML mapping")
    _load_maa_jwks(path, doc)
    _load_pinned_certificates(path, doc)
    try:
        exp = UserExpectations.model_validate(doc)
    except ValidationError as exc:
        raise ClientError("invalid_expectations", f"{path}: {one_line(exc)}") from None
    # The evidence claims are checked by the attestation package's own model: name the
    # section in its errors too, so the line reads the same as the file.
    for name, section in (("cvm", exp.cvm), ("controller", exp.controller)):
        if section is None:
            continue
        try:
            section.evidence()
        except ValidationError as exc:
            raise ClientError(
                "invalid_expectations", f"{path}: {one_line(exc, prefix=name + '.')}"
            ) from None
    return exp


def _load_maa_jwks(path: Path, doc: dict[str, Any]) -> None:
    """`cvm.maa_jwks` may name a file (MAA's `/certs` document as the user saved it),
    relative to the expectations file: read it here, so that the pure model sees a JWKS."""
    cvm = doc.get("cvm")
    ref = cvm.get("maa_jwks") if isinstance(cvm, dict) else None
    if not isinstance(ref, str):
        return
    assert isinstance(cvm, dict)
    file = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
    try:
        cvm["maa_jwks"] = json.loads(file.read_bytes())
    except OSError as exc:
        raise ClientError("invalid_expectations", f"{path}: cvm.maa_jwks: cannot read {file}: {exc.strerror}") from None
    except ValueError:
        raise ClientError("invalid_expectations", f"{path}: cvm.maa_jwks: {file} is not JSON") from None


def _load_pinned_certificates(path: Path, doc: dict[str, Any]) -> None:
    """`cvm.azure_ak_roots`, `cvm.snp_arks` and `cvm.tdx_roots` entries may be PEM text or
    files (PEM or DER, relative to the expectations file): read the files here, so that the
    pure model sees PEM."""
    for field in ("azure_ak_roots", "snp_arks", "tdx_roots"):
        _load_certificates(path, doc, field)


def _load_certificates(path: Path, doc: dict[str, Any], field: str) -> None:
    cvm = doc.get("cvm")
    refs = cvm.get(field) if isinstance(cvm, dict) else None
    if not isinstance(refs, list):
        return
    assert isinstance(cvm, dict)
    out: list[object] = []
    for ref in refs:
        if not isinstance(ref, str) or ref.lstrip().startswith("-----BEGIN"):
            out.append(ref)
            continue
        file = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ClientError("invalid_expectations",
                              f"{path}: cvm.{field}: cannot read {file}: {exc.strerror}") from None
        if raw.lstrip().startswith(b"-----BEGIN"):
            out.append(raw.decode("ascii", errors="replace"))
            continue
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            out.append(x509.load_der_x509_certificate(raw).public_bytes(Encoding.PEM).decode())
        except ValueError:
            raise ClientError("invalid_expectations",
                              f"{path}: cvm.{field}: {file} is neither a PEM nor a DER certificate") from None
    cvm[field] = out


def weak_points(exp: UserExpectations | None) -> list[str]:
    """What the expectations leave open about the controller: `duet verify` says so
    loudly, and `--strict` refuses to run with them."""
    ctl = exp.controller if exp is not None else None
    out = []
    if ctl is None or (ctl.mrenclave is None and ctl.mrsigner is None and ctl.builds is None):
        out.append("the expectations pin neither controller.mrenclave nor controller.mrsigner: ANY genuine SGX "
                   "enclave (any build, including a modified one) is accepted as the controller")
    if ctl is None or ctl.accepted_tcb_statuses is None:
        out.append("the expectations set no controller.accepted_tcb_statuses: every TCB status except Revoked "
                   "(OutOfDate, SWHardeningNeeded, ...) is accepted")
    return out
