"""Claims vs. expectations: one typed object of optional expected values.

Every field is "not checked if absent". A field that does not apply to the evidence at
hand (say ``mrenclave`` for an SNP report) is a failure, not silently skipped: the user
asked for something the evidence cannot show. Each :class:`Failure` names the field, the
value found and the value expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .cvm_kinds import REPORT_KINDS
from .dcap.verify import TCB_STATUSES, SgxReport, TdxReport
from .errors import ExpectationFailed, Failure, ParseError
from .snp.verify import SnpReport


def _hex(n_max: int) -> Any:
    def check(v: str | None) -> str | None:
        if v is None:
            return None
        s = v.strip().lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raise ValueError("must be hex") from None
        if len(raw) > n_max:
            raise ValueError(f"must be at most {n_max} bytes")
        return s

    return check


class SnpTcb(BaseModel):
    """A minimum TCB: each component present is a floor."""

    model_config = ConfigDict(extra="forbid")
    bootloader: int | None = Field(None, ge=0, le=255)
    tee: int | None = Field(None, ge=0, le=255)
    snp: int | None = Field(None, ge=0, le=255)
    microcode: int | None = Field(None, ge=0, le=255)
    fmc: int | None = Field(None, ge=0, le=255)


class Expectations(BaseModel):
    """What a service user expects of verified evidence. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(None, description="one of cvm_kinds.REPORT_KINDS")
    simulated: bool | None = Field(
        None, description="false: refuse evidence that rests on a development root"
    )
    report_data: str | None = Field(None, description="hex, up to 64 bytes, zero-padded")

    # SGX
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    # SGX / TDX TCB
    accepted_tcb_statuses: list[str] | None = None
    forbidden_advisories: list[str] | None = None

    # TDX
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    mrconfigid: str | None = None
    mrowner: str | None = None
    mrownerconfig: str | None = None

    # SEV-SNP
    measurement: str | None = None
    host_data: str | None = None
    id_key_digest: str | None = None
    author_key_digest: str | None = None
    family_id: str | None = None
    image_id: str | None = None
    chip_id: str | None = None
    min_tcb: SnpTcb | None = None
    min_guest_svn: int | None = None
    vmpl: int | None = None
    product: str | None = None
    no_debug: bool | None = Field(None, description="SNP policy DEBUG / TD DEBUG must be 0")
    no_migration_agent: bool | None = Field(None, description="SNP policy MIGRATE_MA must be 0")
    no_smt: bool | None = None
    required_policy_bits: int | None = None
    forbidden_policy_bits: int | None = None

    # Azure vTPM
    pcrs: dict[int, str] | None = None
    nonce: str | None = Field(None, description="hex of the TPM quote's extraData")
    vm_id: str | None = None

    _v_rd = field_validator("report_data")(_hex(64))
    _v_32 = field_validator("mrenclave", "mrsigner", "host_data")(_hex(32))
    _v_48 = field_validator(
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "measurement",
        "id_key_digest",
        "author_key_digest",
    )(_hex(48))
    _v_16 = field_validator("family_id", "image_id")(_hex(16))
    _v_64 = field_validator("chip_id", "nonce")(_hex(64))

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str | None) -> str | None:
        if v is not None and v not in REPORT_KINDS:
            raise ValueError(f"must be one of {', '.join(REPORT_KINDS)}")
        return v

    @field_validator("accepted_tcb_statuses")
    @classmethod
    def _statuses(cls, v: list[str] | None) -> list[str] | None:
        for s in v or []:
            if s not in TCB_STATUSES:
                raise ValueError(f"unknown TCB status {s!r} (known: {', '.join(TCB_STATUSES)})")
        return v

    @field_validator("pcrs")
    @classmethod
    def _pcrs(cls, v: dict[int, str] | None) -> dict[int, str] | None:
        if v is None:
            return None
        out = {}
        for k, h in v.items():
            if not 0 <= k < 24:
                raise ValueError(f"PCR index {k} out of range")
            out[k] = _hex(64)(h)
        return out

    @classmethod
    def from_yaml(cls, text: str) -> Expectations:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ParseError(f"expectations: not YAML ({e})") from None
        return cls.from_mapping(data or {})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Expectations:
        if not isinstance(data, Mapping):
            raise ParseError("expectations must be a mapping")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise ParseError(f"expectations: {e}") from None

    @classmethod
    def load(cls, path: Path) -> Expectations:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ParseError(f"expectations: cannot read {path}: {e}") from None
        return cls.from_yaml(text)


AnyReport = SgxReport | TdxReport | SnpReport


def _kind_of(report: Any) -> str:
    return str(getattr(report, "kind", type(report).__name__))


def validate(report: Any, expected: Expectations) -> list[Failure]:
    """Compare verified claims to ``expected``; return every failure (empty: all good).

    ``report`` is an :class:`SgxReport`, :class:`TdxReport`, :class:`SnpReport` or an
    Azure result (anything with ``hardware`` and ``tpm`` attributes).
    """
    out: list[Failure] = []
    hw = getattr(report, "hardware", None)
    target: Any = hw if hw is not None else report
    kind = _kind_of(report)

    def fail(field: str, found: object, want: object) -> None:
        out.append(Failure(field, str(found), str(want)))

    def eq_hex(field: str, found: str | None, want: str | None) -> None:
        if want is None:
            return
        if found is None:
            fail(field, f"not present in {kind} evidence", want)
        elif found != want:
            fail(field, found, want)

    def attr(name: str) -> Any:
        return getattr(target, name, None)

    if expected.kind is not None and kind != expected.kind:
        fail("kind", kind, expected.kind)
    if expected.simulated is not None and bool(getattr(report, "simulated", False)) != (
        expected.simulated
    ):
        fail("simulated", getattr(report, "simulated", False), expected.simulated)
    if expected.report_data is not None:
        found_rd = attr("report_data")
        want_rd = bytes.fromhex(expected.report_data).ljust(64, b"\0").hex()
        eq_hex("report_data", found_rd.hex() if isinstance(found_rd, bytes) else None, want_rd)

    for name in (
        "mrenclave",
        "mrsigner",
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mrconfigid",
        "mrowner",
        "mrownerconfig",
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "family_id",
        "image_id",
        "chip_id",
    ):
        eq_hex(name, attr(name), getattr(expected, name))

    def int_floor(field: str, found: Any, want: int | None, *, exact: bool = False) -> None:
        if want is None:
            return
        if not isinstance(found, int) or isinstance(found, bool):
            fail(field, f"not present in {kind} evidence", want)
        elif (found != want) if exact else (found < want):
            fail(field, found, want if exact else f">= {want}")

    int_floor("isv_prod_id", attr("isv_prod_id"), expected.isv_prod_id, exact=True)
    int_floor("isv_svn", attr("isv_svn"), expected.min_isv_svn)
    int_floor("guest_svn", attr("guest_svn"), expected.min_guest_svn)
    int_floor("vmpl", attr("vmpl"), expected.vmpl, exact=True)

    if expected.accepted_tcb_statuses is not None:
        status = attr("tcb_status")
        if status is None:
            fail("tcb_status", f"not present in {kind} evidence", expected.accepted_tcb_statuses)
        elif status not in expected.accepted_tcb_statuses:
            fail("tcb_status", status, f"one of {', '.join(expected.accepted_tcb_statuses)}")
    if expected.forbidden_advisories:
        found_adv = set(attr("advisory_ids") or [])
        bad = sorted(found_adv & set(expected.forbidden_advisories))
        if bad:
            fail(
                "advisory_ids",
                ", ".join(bad),
                "none of " + ", ".join(expected.forbidden_advisories),
            )

    if expected.product is not None and attr("product") != expected.product:
        fail("product", attr("product"), expected.product)
    if expected.min_tcb is not None:
        found_tcb = attr("reported_tcb")
        if not isinstance(found_tcb, dict):
            fail("reported_tcb", f"not present in {kind} evidence", expected.min_tcb)
        else:
            for comp, floor in expected.min_tcb.model_dump(exclude_none=True).items():
                have = found_tcb.get(comp)
                if have is None or have < floor:
                    fail(f"reported_tcb.{comp}", have, f">= {floor}")

    policy = attr("policy")
    # Each "must be off" flag: absent from this kind of evidence is a failure, not a pass.
    for wanted, claim, label in (
        (expected.no_debug, "debug", "debug"),
        (expected.no_migration_agent, "migrate_ma", "policy.MIGRATE_MA"),
        (expected.no_smt, "smt_allowed", "policy.SMT"),
    ):
        if not wanted:
            continue
        value = attr(claim)
        if value is None:
            fail(label, f"not present in {kind} evidence", False)
        elif value:
            fail(label, True, False)
    for field, want_bits, must_set in (
        ("policy (required bits)", expected.required_policy_bits, True),
        ("policy (forbidden bits)", expected.forbidden_policy_bits, False),
    ):
        if want_bits is None:
            continue
        if not isinstance(policy, int):
            fail(field, f"not present in {kind} evidence", hex(want_bits))
        elif must_set and policy & want_bits != want_bits:
            fail(field, hex(policy), f"all of {want_bits:#x} set")
        elif not must_set and policy & want_bits:
            fail(field, hex(policy), f"none of {want_bits:#x} set")

    tpm = getattr(report, "tpm", None)
    if expected.pcrs is not None:
        pcrs = getattr(tpm, "pcrs", None)
        if not isinstance(pcrs, dict):
            fail("pcrs", f"not present in {kind} evidence", expected.pcrs)
        else:
            for idx, want in sorted(expected.pcrs.items()):
                have = pcrs.get(idx)
                if have != want:
                    fail(f"pcr[{idx}]", have, want)
    if expected.nonce is not None:
        nonce = getattr(tpm, "nonce", None)
        eq_hex("nonce", nonce.hex() if isinstance(nonce, bytes) else None, expected.nonce)
    if expected.vm_id is not None:
        vm_id = getattr(report, "vm_id", None)
        if vm_id is None or str(vm_id).lower() != expected.vm_id.lower():
            fail("vm_id", vm_id, expected.vm_id)
    return out


def check(report: Any, expected: Expectations) -> None:
    """Raise :class:`ExpectationFailed` carrying every failure, if any."""
    failures = validate(report, expected)
    if failures:
        raise ExpectationFailed(failures)
