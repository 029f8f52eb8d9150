"""Claims vs. expectations: one typed object of optional expected values.

Every field is "not checked if absent". A field that does not apply to the evidence at
hand (say ``mrenclave`` for an SNP report) is a failure, not silently skipped: the user
asked for something the evidence cannot show. Each :class:`Failure` names the field, the
value found and the value expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .cvm_kinds import REPORT_KINDS
from .dcap.verify import TCB_STATUSES, SgxReport, TdxReport
from .errors import AttestationError, ExpectationFailed, Failure, ParseError
from .snp.verify import SnpReport

_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``7d``: the duration syntax of every expectations file."""
    m = _DURATION.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"duration {text!r} must look like 90s, 30m, 1h or 7d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def one_line(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: ``field.sub: message; ...`` (never the pydantic dump).

    Shared by every reader of expectations so that a malformed file gets the same words
    from ``duet verify`` and ``duet attestation verify``.
    """
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        parts.append(f"{where}: {' '.join(str(e['msg']).split())}")
    return "; ".join(parts)


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


class MaaEnclave(BaseModel):
    """What MAA's own enclave must be (checked only when its quote was verified)."""

    model_config = ConfigDict(extra="forbid")
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    accepted_tcb_statuses: list[str] | None = None

    _v_32 = field_validator("mrenclave", "mrsigner")(_hex(32))

    @field_validator("accepted_tcb_statuses")
    @classmethod
    def _statuses(cls, v: list[str] | None) -> list[str] | None:
        for s in v or []:
            if s not in TCB_STATUSES:
                raise ValueError(f"unknown TCB status {s!r} (known: {', '.join(TCB_STATUSES)})")
        return v


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
    max_collateral_age: str | None = Field(
        None, description="oldest acceptable collateral issue date, as a duration (30d)"
    )

    # TDX
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    mrconfigid: str | None = None
    mrowner: str | None = None
    mrownerconfig: str | None = None
    # Event logs, replayed by the verifier: TDX's CC event log against RTMR0..3, an Azure
    # vTPM's TCG event log against the quoted SHA-256 PCRs
    require_event_log: bool | None = Field(
        None, description="true: the evidence must carry an event log that replays to its RTMRs / PCRs"
    )
    kernel_digest: str | None = Field(
        None, description="the kernel's digest (event log `kernel`): SHA-384 in RTMR1 (TDX), SHA-256 in PCR 4 (vTPM)"
    )
    kernel_cmdline: str | None = Field(
        None, description="the kernel command line measured into RTMR2 (TDX) / PCR 8 (vTPM) (event log `cmdline`)"
    )

    # SEV-SNP
    measurement: str | None = None
    host_data: str | None = None
    id_key_digest: str | None = None
    author_key_digest: str | None = None
    family_id: str | None = None
    image_id: str | None = None
    chip_id: str | None = None
    min_tcb: SnpTcb | None = None
    min_launch_tcb: SnpTcb | None = Field(None, description="floor for the SNP LAUNCH_TCB")
    min_committed_tcb: SnpTcb | None = Field(None, description="floor for the COMMITTED_TCB")
    min_guest_svn: int | None = None
    vmpl: int | None = None
    product: str | None = None
    no_debug: bool | None = Field(None, description="SNP policy DEBUG / TD DEBUG must be 0")
    no_migration_agent: bool | None = Field(None, description="SNP policy MIGRATE_MA must be 0")
    no_smt: bool | None = None
    required_policy_bits: int | None = None
    forbidden_policy_bits: int | None = None

    # MAA tokens: the enclave behind MAA's signing key (needs --collateral)
    maa_enclave: MaaEnclave | None = None
    maa_signing_keys: list[str] | None = Field(
        None, description="SHA-256 (hex) of MAA signing keys' SubjectPublicKeyInfo to accept"
    )
    maa_jwks: dict[str, Any] | None = Field(
        None, description="MAA's signing keys as a JWKS (its /certs document), pinned by the user"
    )
    maa_issuer: str | None = Field(None, description="the MAA instance URL a token must name (iss)")

    # SEV-SNP roots pinned in place of AMD's ARKs (a twin's development root, a private
    # root): evidence under them verifies, and its report says SIMULATED
    snp_arks: list[str] | None = Field(
        None, description="SEV-SNP root certificates, PEM, trusted instead of AMD's ARKs (twins, private roots)"
    )
    # DCAP roots pinned in place of Intel's for TDX quotes (`tdx`, and the TD quote of
    # `azure-tdx`), as `snp_arks` for SEV-SNP
    tdx_roots: list[str] | None = Field(
        None, description="DCAP root CA certificates, PEM, trusted instead of Intel's for TDX quotes "
        "(twins, private roots)"
    )

    # Azure vTPM
    azure_ak_roots: list[str] | None = Field(
        None, description="vTPM root (and intermediate) certificates, PEM, the AK certificate must chain to"
    )
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
        "kernel_digest",
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

    @field_validator("maa_signing_keys")
    @classmethod
    def _fingerprints(cls, v: list[str] | None) -> list[str] | None:
        for k in v or []:
            _hex(32)(k)
            if len(k.strip().lower().removeprefix("0x")) != 64:
                raise ValueError("each MAA signing key is a SHA-256 (64 hex digits)")
        return v

    @field_validator("maa_jwks")
    @classmethod
    def _jwks(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from .azure.maa import load_jwks

            try:
                keys = load_jwks(v)
            except ParseError as exc:
                raise ValueError(str(exc)) from None
            if not keys:
                raise ValueError("the JWKS holds no RSA key")
        return v

    @field_validator("snp_arks", "tdx_roots")
    @classmethod
    def _pinned_roots(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if v is not None:
            from .pinned_roots import load_pinned

            if not v:
                raise ValueError(f"name at least one {'SEV-SNP' if info.field_name == 'snp_arks' else 'DCAP'} "
                                 "root certificate")
            try:
                load_pinned(str(info.field_name), [p.encode() for p in v])
            except AttestationError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("azure_ak_roots")
    @classmethod
    def _ak_roots(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            from .azure.akcert import load_pins

            if not v:
                raise ValueError("name at least one vTPM root certificate")
            try:
                load_pins([p.encode() for p in v])
            except ParseError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("max_collateral_age")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            parse_age(v)
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
            raise ParseError(f"expectations: {one_line(e)}") from None

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


def validate(
    report: Any, expected: Expectations, *, now: datetime | None = None
) -> list[Failure]:
    """Compare verified claims to ``expected``; return every failure (empty: all good).

    ``report`` is an :class:`SgxReport`, :class:`TdxReport`, :class:`SnpReport` or an
    Azure result (anything with ``hardware`` and ``tpm`` attributes). ``now`` (default:
    the current time) is what ``max_collateral_age`` is measured against.
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
    for claim, floor_tcb in (
        ("reported_tcb", expected.min_tcb),
        ("launch_tcb", expected.min_launch_tcb),
        ("committed_tcb", expected.min_committed_tcb),
    ):
        if floor_tcb is None:
            continue
        found_tcb = attr(claim)
        if not isinstance(found_tcb, dict):
            fail(claim, f"not present in {kind} evidence", floor_tcb)
            continue
        for comp, floor in floor_tcb.model_dump(exclude_none=True).items():
            have = found_tcb.get(comp)
            if have is None or have < floor:
                fail(f"{claim}.{comp}", have, f">= {floor}")
    if expected.max_collateral_age is not None:
        issued = attr("collateral_issued")
        max_age = parse_age(expected.max_collateral_age)
        if not issued:
            fail("collateral_issued", f"not present in {kind} evidence", f"within {max_age}")
        else:
            at = now or datetime.now(UTC)
            try:
                when = datetime.fromisoformat(str(issued).replace("Z", "+00:00"))
            except ValueError:
                when = None
            if when is None or when.tzinfo is None:
                fail("collateral_issued", issued, "an ISO 8601 time with zone")
            elif at - when > max_age:
                fail("collateral_age", str(at - when), f"at most {max_age} ({issued})")

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

    # An Azure result carries the vTPM's replayed log itself; TDX's is on the quote's claims.
    log = getattr(report, "event_log", None) if hw is not None else attr("event_log")
    _check_event_log(log, expected, fail, kind)
    if expected.azure_ak_roots is not None:
        _check_ak_certificate(report, expected.azure_ak_roots, fail, kind)

    if expected.maa_enclave is not None:
        _check_maa_enclave(report, expected.maa_enclave, fail, kind)
    if expected.maa_signing_keys is not None:
        fp = getattr(report, "signing_key_sha256", None)
        pinned = [k.strip().lower().removeprefix("0x") for k in expected.maa_signing_keys]
        if not fp:
            fail("maa_signing_key", f"not present in {kind} evidence", "an MAA token")
        elif fp not in pinned:
            fail("maa_signing_key", fp, "one of " + ", ".join(pinned))

    if expected.maa_jwks is not None:
        from .azure.maa import key_fingerprint, load_jwks

        fp = getattr(report, "signing_key_sha256", None)
        pinned_jwks = sorted(key_fingerprint(k.key) for k in load_jwks(expected.maa_jwks).values())
        if not fp:
            fail("maa_signing_key", f"not present in {kind} evidence", "an MAA token")
        elif fp not in pinned_jwks:
            fail("maa_signing_key", fp, "a key of maa_jwks")
    if expected.maa_issuer is not None:
        iss = getattr(report, "issuer", None)
        if not isinstance(iss, str):
            fail("maa_issuer", f"not present in {kind} evidence", expected.maa_issuer)
        elif iss.rstrip("/") != expected.maa_issuer.rstrip("/"):
            fail("maa_issuer", iss, expected.maa_issuer)

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


def _check_event_log(log: Any, want: Expectations, fail: Any, kind: str) -> None:
    """The named events of a replayed CC event log (``TdxReport.event_log``)."""
    if not (want.require_event_log or want.kernel_digest is not None or want.kernel_cmdline is not None):
        return
    if not isinstance(log, dict):
        fail("event_log", f"not present in {kind} evidence (no event log came with it)", "a replayed log")
        return
    if want.kernel_digest is not None:
        kernel = log.get("kernel")
        found = kernel.get("digest") if isinstance(kernel, dict) else "no kernel event in the log"
        if found != want.kernel_digest:
            fail("event_log.kernel", found, want.kernel_digest)
    if want.kernel_cmdline is not None:
        cmdline = log.get("cmdline")
        if not isinstance(cmdline, dict):
            fail("event_log.cmdline", "no command line event in the log", want.kernel_cmdline)
        elif cmdline.get("measured") is not True:
            # The replay binds digests, not event data: text whose digest is not its hash
            # could say anything.
            fail("event_log.cmdline", f"{cmdline.get('text')!r}, whose digest is not its hash",
                 want.kernel_cmdline)
        elif cmdline.get("text") != want.kernel_cmdline:
            fail("event_log.cmdline", cmdline.get("text"), want.kernel_cmdline)


def _check_ak_certificate(report: Any, pinned: list[str], fail: Any, kind: str) -> None:
    """The verifier judged the AK certificate against these pins (``verified``, ending at
    one of the pinned roots): a result judged without them, or under others, fails."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from .azure.akcert import load_pins

    ak = getattr(report, "ak_certificate", None)
    if not isinstance(ak, dict):
        fail("ak_certificate", f"not present in {kind} evidence", "verified under azure_ak_roots")
        return
    if ak.get("status") != "verified":
        fail("ak_certificate", ak.get("status"), "verified under azure_ak_roots")
        return
    roots, _ = load_pins([p.encode() for p in pinned])
    want = {hashlib.sha256(r.public_bytes(Encoding.DER)).hexdigest() for r in roots}
    if ak.get("root_sha256") not in want:
        fail("ak_certificate.root", ak.get("root_sha256"), "one of azure_ak_roots")


def _check_maa_enclave(report: Any, want: MaaEnclave, fail: Any, kind: str) -> None:
    quotes = getattr(report, "signer_quotes", None)
    if quotes is None:
        fail("maa_enclave", f"not present in {kind} evidence", "an MAA token")
        return
    verified = [q for q in quotes if isinstance(q, dict) and q.get("verified")]
    if not verified:
        fail("maa_enclave", "not verified (its SGX quote needs --collateral)", "verified")
        return
    q = verified[0]
    for name in ("mrenclave", "mrsigner"):
        w = getattr(want, name)
        if w is not None and q.get(name) != w:
            fail(f"maa_enclave.{name}", q.get(name), w)
    if want.isv_prod_id is not None and q.get("isv_prod_id") != want.isv_prod_id:
        fail("maa_enclave.isv_prod_id", q.get("isv_prod_id"), want.isv_prod_id)
    svn = q.get("isv_svn")
    if want.min_isv_svn is not None and (not isinstance(svn, int) or svn < want.min_isv_svn):
        fail("maa_enclave.isv_svn", svn, f">= {want.min_isv_svn}")
    if want.accepted_tcb_statuses is not None:
        st = q.get("tcb_status")
        if st not in want.accepted_tcb_statuses:
            fail("maa_enclave.tcb_status", st, f"one of {', '.join(want.accepted_tcb_statuses)}")


def check(report: Any, expected: Expectations, *, now: datetime | None = None) -> None:
    """Raise :class:`ExpectationFailed` carrying every failure, if any."""
    failures = validate(report, expected, now=now)
    if failures:
        raise ExpectationFailed(failures)
