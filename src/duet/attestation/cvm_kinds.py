"""CVM evidence kinds: one verifier per kind, behind one registry.

The controller (before it logs evidence), the user's `duet verify`, offline bundles and
`duet attestation verify` all go through :func:`verify_evidence`, so the controller can
never log evidence that a user would refuse, and every kind gets the same checks:

1. the kind is registered, and is not ``none`` (a plain VM has no evidence);
2. simulated kinds are accepted only when the caller trusts simulated roots;
3. the kind's own ``parse`` and ``verify`` check signatures and chains, and that the
   report data is ``SHA-512(nonce || SSH host key blob)`` (:mod:`.binding`);
4. the instance binding the provider declared is compared with the per-CVM value
   (HOST_DATA, MRCONFIGID or the VM id); ``none`` checks nothing more, and a user must
   accept it explicitly.

Two vocabularies live here and are kept apart on purpose: :class:`EvidenceFormat` is
what `duet attestation verify` reads from a file (``azure`` covers both Azure kinds),
:class:`CvmKind` is what a CVM log's `evidence` entries say. :data:`FORMAT_OF` maps one
to the other. Adding a TEE kind is one ``KindSpec`` and one :func:`register` call.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .binding import cvm_report_data, instance_value_for
from .errors import AttestationError, BindingError, ParseError


class EvidenceFormat(StrEnum):
    """Formats `duet attestation verify` reads (``--kind``)."""

    SGX = "sgx"
    TDX = "tdx"
    SNP = "snp"
    AZURE = "azure"
    SIMULATED_SNP = "simulated-snp"
    MAA = "maa"


class CvmKind(StrEnum):
    """Evidence kinds a CVM log's `evidence` entries carry."""

    SNP = "snp"
    TDX = "tdx"
    AZURE_SNP = "azure-snp"
    AZURE_TDX = "azure-tdx"
    SIMULATED_SNP = "simulated-snp"
    SIMULATED_TDX = "simulated-tdx"
    #: Microsoft Azure Attestation tokens over an Azure CVM's hardware evidence: MAA is a
    #: trusted party (it judged the evidence), and only its keys the user pins count.
    AZURE_SNP_MAA = "azure-snp-maa"
    AZURE_TDX_MAA = "azure-tdx-maa"
    NONE = "none"


class InstanceBinding(StrEnum):
    """Which per-CVM value the evidence carries besides the host-key binding."""

    HOST_DATA = "host_data"  # SEV-SNP HOST_DATA, set by the host at launch
    MRCONFIGID = "mrconfigid"  # TDX MRCONFIGID, set by the host at launch
    VM_ID = "vm_id"  # the cloud's VM id, signed into Azure's runtime claims
    NONE = "none"  # nothing per-CVM: the host-key binding only (user must accept it)


FORMAT_OF: dict[str, EvidenceFormat | None] = {
    CvmKind.SNP: EvidenceFormat.SNP,
    CvmKind.TDX: EvidenceFormat.TDX,
    CvmKind.AZURE_SNP: EvidenceFormat.AZURE,
    CvmKind.AZURE_TDX: EvidenceFormat.AZURE,
    CvmKind.SIMULATED_SNP: EvidenceFormat.SIMULATED_SNP,
    CvmKind.SIMULATED_TDX: EvidenceFormat.TDX,
    CvmKind.AZURE_SNP_MAA: EvidenceFormat.MAA,
    CvmKind.AZURE_TDX_MAA: EvidenceFormat.MAA,
    CvmKind.NONE: None,
}
"""CVM evidence kind -> the file format `duet attestation verify` reads it as."""


REPORTED_ONLY_KINDS: tuple[str, ...] = ()
"""Kinds `duet attestation verify` reports that no CVM log carries (none today: the MAA
kinds became CVM kinds once their verifier took MAA's keys from the user's pins)."""


REPORT_KINDS = ("sgx", *(k.value for k in CvmKind if k not in (CvmKind.NONE, CvmKind.SIMULATED_SNP,
                                                                 CvmKind.SIMULATED_TDX)),
                *REPORTED_ONLY_KINDS)
"""The `kind` a verified report states (an SGX quote, or a CVM kind; simulated SEV-SNP
reports say `snp` and `simulated: true`): what `Expectations.kind` may name."""


class NoEvidence(AttestationError):
    """The CVM runs without a TEE (kind ``none``): there is nothing to verify."""

    code = "no_evidence"


class UnsupportedKind(AttestationError):
    code = "unsupported_kind"


class SimulatedRefused(AttestationError):
    code = "simulated_refused"


@dataclass(frozen=True)
class Trust:
    """What a verifier trusts beyond the vendors' built-in roots.

    ``simulated``: accept evidence that chains to a development root. ``snp_arks``: other
    SEV-SNP roots (tests, private roots); for simulated kinds, when absent, the
    self-signed root the log carries is used (with ``simulated`` set, only).
    """

    simulated: bool = False
    snp_arks: tuple[bytes, ...] | None = None
    #: DCAP roots (DER) other than Intel's: for simulated TDX quotes (when absent, the
    #: self-signed root the log carries is used, with ``simulated`` set, only), and for
    #: `tdx` and `azure-tdx` evidence (its TD quote), as ``snp_arks`` for SEV-SNP (twins,
    #: private roots; a report under one says ``simulated``).
    tdx_roots: tuple[bytes, ...] | None = None
    #: What the verifier pins of Microsoft Azure Attestation, for the MAA kinds; without
    #: it MAA evidence is refused (a token proves nothing until MAA's keys are pinned).
    maa: MaaPins | None = None
    #: The Azure vTPM root (and intermediate) certificates the verifier pins (PEM or DER),
    #: for the AK certificate of the ``azure-*`` kinds: with them a missing, foreign or
    #: unchained AK certificate fails the evidence; without them it is "not checked".
    azure_ak_roots: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class MaaPins:
    """MAA signing keys and instance a verifier trusts (from its user's expectations, or
    the owner's provider settings on the controller), never from the evidence.

    ``jwks``: a JWKS (MAA's ``/certs`` document as the user saved it); ``key_sha256``:
    SHA-256 of pinned keys' SubjectPublicKeyInfo, whose key material may then come from
    the JWKS logged beside the token; ``issuer``: the MAA instance URL (the token's
    ``iss``). A token verifies only under a pinned key and issuer.
    """

    issuer: str | None = None
    jwks: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    key_sha256: tuple[str, ...] | None = None


@dataclass(frozen=True)
class KindSpec:
    """One CVM evidence kind: how to read, verify and describe it.

    ``parse(entry)`` takes the `evidence` entry (a mapping) and returns the pieces its
    ``verify`` needs; ``verify(parsed, expected_report_data, now, trust)`` checks the
    signatures and that the report data is the expected binding, and returns the
    verified report; ``claims(report)`` gives the values the instance bindings and
    expectations read (``host_data``, ``mrconfigid``, ``vm_id`` where present).
    """

    kind: str
    label: str
    simulated: bool
    bindings: frozenset[InstanceBinding]
    parse: Callable[[Mapping[str, Any]], Any]
    verify: Callable[[Any, bytes, datetime, Trust], Any]
    claims: Callable[[Any], Mapping[str, object]]
    format: EvidenceFormat | None = None


@dataclass(frozen=True)
class Verified:
    kind: str
    report: Any
    simulated: bool
    label: str


REGISTRY: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    """Add (or replace) a kind; returns it so tests can remove it again."""
    REGISTRY[spec.kind] = spec
    return spec


def unregister(kind: str) -> None:
    REGISTRY.pop(kind, None)


def spec_of(kind: object) -> KindSpec:
    spec = REGISTRY.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise UnsupportedKind(f"evidence kind {kind!r} is not supported by this verifier")
    return spec


def is_simulated(kind: str | None) -> bool:
    spec = REGISTRY.get(kind or "")
    return bool(spec and spec.simulated)


def label_of(kind: str | None) -> str:
    spec = REGISTRY.get(kind or "")
    return spec.label if spec is not None else str(kind)


# --- the shared check ----------------------------------------------------------------


def verify_evidence(
    entry: Mapping[str, Any],
    *,
    host_key: str,
    now: datetime,
    trust: Trust,
    binding: InstanceBinding | str,
    host_data: str | None = None,
    instance_id: str | None = None,
) -> Verified:
    """Verify one `evidence` entry for a CVM whose pinned SSH host key is ``host_key``.

    ``binding`` is the instance binding the provider declared; ``host_data`` (genesis)
    and ``instance_id`` (provisioned) are the per-CVM values it is compared with.
    Raises :class:`AttestationError` naming what failed.
    """
    kind = entry.get("kind")
    if kind == CvmKind.NONE:
        raise NoEvidence(
            "the CVM runs without a TEE (the owner allowed a plain VM): there is no hardware evidence"
        )
    spec = spec_of(kind)
    if spec.simulated and not trust.simulated:
        raise SimulatedRefused(f"the CVM's evidence is {spec.label}; pass --trust-simulated to accept it")
    try:
        nonce = bytes.fromhex(str(entry["nonce"]))
    except (KeyError, ValueError):
        raise ParseError("the evidence entry has no hex nonce") from None
    if len(nonce) < 16:
        raise ParseError("the evidence nonce is shorter than 16 bytes: it cannot show freshness")
    expected = cvm_report_data(nonce, host_key)
    report = spec.verify(spec.parse(entry), expected, now, trust)
    _check_instance(spec, report, InstanceBinding(binding), host_data, instance_id)
    simulated = spec.simulated or bool(getattr(report, "simulated", False))
    return Verified(kind=spec.kind, report=report, simulated=simulated, label=spec.label)


def _check_instance(
    spec: KindSpec, report: Any, binding: InstanceBinding, host_data: str | None, instance_id: str | None
) -> None:
    if binding is InstanceBinding.NONE:
        return
    if binding not in spec.bindings:
        raise BindingError(f"{spec.label} evidence cannot carry the instance binding {binding.value}")
    want = instance_value_for(binding.value, host_data=host_data, instance_id=instance_id)
    if want is None:
        raise BindingError(f"the log holds no per-CVM value for the {binding.value} binding")
    found = spec.claims(report).get(binding.value)
    if not isinstance(found, str) or found.lower() != want.lower():
        raise BindingError(
            f"{binding.value} in the evidence is {found}, not the value the controller chose for this CVM ({want})"
        )


# --- the built-in kinds --------------------------------------------------------------


def _b64(entry: Mapping[str, Any], *path: str) -> bytes:
    value: Any = entry
    for p in path:
        value = value.get(p) if isinstance(value, Mapping) else None
    if not isinstance(value, str):
        raise ParseError(f"the evidence entry lacks {'.'.join(path)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{'.'.join(path)} is not base64") from None


def _pem_blocks(text: str) -> list[bytes]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    return [b.encode() + b"\n" for b in blocks]


@dataclass(frozen=True)
class _SnpParsed:
    report: bytes
    vcek: bytes
    chain: str


def _parse_snp(entry: Mapping[str, Any]) -> _SnpParsed:
    collateral = entry.get("collateral")
    chain = collateral.get("cert_chain", "") if isinstance(collateral, Mapping) else ""
    return _SnpParsed(_b64(entry, "evidence"), _b64(entry, "collateral", "vcek"), str(chain or ""))


def _snp_verify(parsed: _SnpParsed, expected: bytes, now: datetime, arks: Any) -> Any:
    from .snp.verify import verify_snp_report

    report = verify_snp_report(parsed.report, vcek_der=parsed.vcek, ask_pem=parsed.chain.encode() or None,
                               now=now, trusted_arks=arks)
    if report.report_data != expected:
        raise BindingError("REPORT_DATA (nonce and host key) is not bound to the SSH host key the controller pinned")
    return report


def _verify_snp(parsed: _SnpParsed, expected: bytes, now: datetime, trust: Trust) -> Any:
    return _snp_verify(parsed, expected, now, list(trust.snp_arks) if trust.snp_arks is not None else None)


def _self_signed(pem: bytes) -> None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(cert)
    except Exception as exc:
        raise ParseError(f"the evidence's root certificate is not a valid self-signed certificate: {exc}") from None


def _verify_simulated_snp(parsed: _SnpParsed, expected: bytes, now: datetime, trust: Trust) -> Any:
    if trust.snp_arks is not None:
        arks = list(trust.snp_arks)
    else:
        # The development ARK travels in the log; accept it only as a well-formed,
        # self-signed root, so every byte of it is still checked.
        blocks = _pem_blocks(parsed.chain)
        if len(blocks) != 2:
            raise ParseError("simulated evidence must carry exactly its ASK and ARK")
        _self_signed(blocks[-1])
        arks = [blocks[-1]]
    return _snp_verify(parsed, expected, now, arks)


def _snp_claims(report: Any) -> Mapping[str, object]:
    return {"host_data": report.host_data, "measurement": report.measurement}


def _ccel(entry: Mapping[str, Any]) -> bytes | None:
    """The guest's CC event log, when the evidence carries one (``collateral.ccel``)."""
    collateral = entry.get("collateral")
    if not isinstance(collateral, Mapping) or collateral.get("ccel") is None:
        return None
    return _b64(entry, "collateral", "ccel")


def _with_event_log(report: Any, ccel: bytes | None) -> Any:
    """Replay the event log against the quote's RTMRs; a log that does not replay fails the
    evidence (the quote's RTMRs are what was measured, the log is only the guest's word)."""
    if ccel is None:
        return report
    import dataclasses

    from .ccel import event_log_claims

    claims = event_log_claims(ccel, [report.rtmr0, report.rtmr1, report.rtmr2, report.rtmr3])
    return dataclasses.replace(report, event_log=claims)


@dataclass(frozen=True)
class _TdxParsed:
    quote: bytes
    collateral: Mapping[str, Any]
    ccel: bytes | None


def _parse_tdx(entry: Mapping[str, Any]) -> _TdxParsed:
    collateral = entry.get("collateral") or {}
    dcap = {k: v for k, v in collateral.items() if k != "ccel"} if isinstance(collateral, Mapping) else collateral
    return _TdxParsed(_b64(entry, "evidence"), dcap, _ccel(entry))


def _verify_tdx(parsed: _TdxParsed, expected: bytes, now: datetime, trust: Trust) -> Any:
    from .dcap.verify import verify_tdx_quote

    if trust.tdx_roots is None:
        report = verify_tdx_quote(parsed.quote, parsed.collateral, now=now)
    else:
        report = under_one_of(trust.tdx_roots, lambda root: verify_tdx_quote(
            parsed.quote, dict(parsed.collateral), now=now, root_ca_der=root))
    if report.report_data != expected:
        raise BindingError("REPORTDATA (nonce and host key) is not bound to the SSH host key the controller pinned")
    return _with_event_log(report, parsed.ccel)


def under_one_of(roots: Sequence[bytes], verify: Callable[[bytes], Any]) -> Any:
    """The first root the evidence verifies under (`verify(root)`); else the first root's
    refusal."""
    if not roots:
        raise ParseError("no DCAP root is trusted")
    first: AttestationError | None = None
    for root in roots:
        try:
            return verify(root)
        except AttestationError as exc:
            first = first or exc
    assert first is not None
    raise first


@dataclass(frozen=True)
class _SimTdxParsed:
    quote: bytes
    collateral: Mapping[str, Any]
    root: bytes
    ccel: bytes | None = None


def _parse_simulated_tdx(entry: Mapping[str, Any]) -> _SimTdxParsed:
    collateral = entry.get("collateral")
    if not isinstance(collateral, Mapping):
        raise ParseError("simulated TDX evidence carries no collateral")
    return _SimTdxParsed(_b64(entry, "evidence"), {k: v for k, v in collateral.items() if k not in ("root_ca",
                         "simulated", "ccel")}, _b64(entry, "collateral", "root_ca"), _ccel(entry))


def _verify_simulated_tdx(parsed: _SimTdxParsed, expected: bytes, now: datetime, trust: Trust) -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    from .dcap.verify import verify_tdx_quote

    if trust.tdx_roots is not None:
        if parsed.root not in trust.tdx_roots:
            raise ParseError("the evidence's development root is not the one this verifier trusts")
        root = parsed.root
    else:
        # The development root travels in the log: accept it only as a well-formed,
        # self-signed certificate, so every byte of it is still checked.
        from cryptography import x509

        try:
            cert = x509.load_der_x509_certificate(parsed.root)
        except (ValueError, x509.InvalidVersion):
            raise ParseError("the evidence's root is not a DER certificate") from None
        _self_signed(cert.public_bytes(Encoding.PEM))
        root = parsed.root
    report = verify_tdx_quote(parsed.quote, dict(parsed.collateral), now=now, root_ca_der=root)
    if report.report_data != expected:
        raise BindingError("REPORTDATA (nonce and host key) is not bound to the SSH host key the controller pinned")
    return _with_event_log(report, parsed.ccel)


def _tdx_claims(report: Any) -> Mapping[str, object]:
    return {"mrconfigid": report.mrconfigid, "mrtd": report.mrtd}


def _parse_azure(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    raw = _b64(entry, "evidence")
    try:
        envelope = json.loads(raw)
    except ValueError:
        raise ParseError("the Azure evidence is not a JSON envelope") from None
    collateral = entry.get("collateral")
    tdx = collateral.get("tdx") if isinstance(collateral, Mapping) else None
    return envelope, tdx


def _azure_verifier(kind: str) -> Callable[[tuple[Any, Any], bytes, datetime, Trust], Any]:
    def verify(parsed: tuple[Any, Any], expected: bytes, now: datetime, trust: Trust) -> Any:
        from .azure.evidence import verify_azure_evidence

        def under(root: bytes | None) -> Any:
            # The vTPM quote's extraData carries the first 32 bytes of the binding.
            return verify_azure_evidence(parsed[0], now=now, nonce=expected[:32], tdx_collateral=parsed[1],
                                         trusted_arks=list(trust.snp_arks) if trust.snp_arks is not None else None,
                                         ak_roots=trust.azure_ak_roots, root_ca_der=root)

        # The TD quote beside an Azure TDX HCL report chains to Intel's DCAP root, unless
        # the verifier pins others (`tdx_roots`, as for `tdx`).
        if kind == CvmKind.AZURE_TDX and trust.tdx_roots is not None:
            report = under_one_of(trust.tdx_roots, under)
        else:
            report = under(None)
        if report.kind != kind:
            raise ParseError(f"the envelope holds {report.kind} evidence, the entry says {kind}")
        return report
    return verify


def _azure_claims(report: Any) -> Mapping[str, object]:
    return {"vm_id": report.vm_id}


@dataclass(frozen=True)
class _MaaParsed:
    token: str
    logged_jwks: Mapping[str, Any] | None


def _parse_maa(entry: Mapping[str, Any]) -> _MaaParsed:
    try:
        token = _b64(entry, "evidence").decode("ascii").strip()
    except UnicodeDecodeError:
        raise ParseError("the MAA evidence is not a token (ASCII)") from None
    collateral = entry.get("collateral")
    jwks = collateral.get("jwks") if isinstance(collateral, Mapping) else None
    return _MaaParsed(token, jwks if isinstance(jwks, Mapping) else None)


def _maa_verifier(kind: str) -> Callable[[_MaaParsed, bytes, datetime, Trust], Any]:
    def verify(parsed: _MaaParsed, expected: bytes, now: datetime, trust: Trust) -> Any:
        from .azure.maa import pinned_maa_keys, verify_maa_cvm_token

        pins = trust.maa or MaaPins()
        keys = pinned_maa_keys(jwks=pins.jwks, key_sha256=pins.key_sha256, logged_jwks=parsed.logged_jwks)
        return verify_maa_cvm_token(parsed.token, keys, kind=kind, issuer=pins.issuer, report_data=expected,
                                    now=now)
    return verify


def _maa_claims(report: Any) -> Mapping[str, object]:
    out: dict[str, object] = {"vm_id": report.vm_id, "maa_signing_key_sha256": report.signing_key_sha256,
                              "maa_issuer": report.issuer}
    for name in ("measurement", "host_data", "mrtd", "mrconfigid"):
        if getattr(report, name, None) is not None:
            out[name] = getattr(report, name)
    return out


_SNP_BINDINGS = frozenset({InstanceBinding.HOST_DATA, InstanceBinding.NONE})
_TDX_BINDINGS = frozenset({InstanceBinding.MRCONFIGID, InstanceBinding.NONE})
_AZURE_BINDINGS = frozenset({InstanceBinding.VM_ID, InstanceBinding.NONE})

for _spec in (
    KindSpec(CvmKind.SNP, "SEV-SNP", False, _SNP_BINDINGS, _parse_snp, _verify_snp, _snp_claims,
             EvidenceFormat.SNP),
    KindSpec(CvmKind.SIMULATED_SNP, "SIMULATED SEV-SNP", True, _SNP_BINDINGS, _parse_snp, _verify_simulated_snp,
             _snp_claims, EvidenceFormat.SIMULATED_SNP),
    KindSpec(CvmKind.TDX, "TDX", False, _TDX_BINDINGS, _parse_tdx, _verify_tdx, _tdx_claims, EvidenceFormat.TDX),
    KindSpec(CvmKind.SIMULATED_TDX, "SIMULATED TDX", True, _TDX_BINDINGS, _parse_simulated_tdx,
             _verify_simulated_tdx, _tdx_claims, EvidenceFormat.TDX),
    KindSpec(CvmKind.AZURE_SNP, "Azure vTPM (SEV-SNP)", False, _AZURE_BINDINGS, _parse_azure,
             _azure_verifier(CvmKind.AZURE_SNP), _azure_claims, EvidenceFormat.AZURE),
    KindSpec(CvmKind.AZURE_TDX, "Azure vTPM (TDX)", False, _AZURE_BINDINGS, _parse_azure,
             _azure_verifier(CvmKind.AZURE_TDX), _azure_claims, EvidenceFormat.AZURE),
    KindSpec(CvmKind.AZURE_SNP_MAA, "MAA token (Azure SEV-SNP)", False, _AZURE_BINDINGS, _parse_maa,
             _maa_verifier(CvmKind.AZURE_SNP_MAA), _maa_claims, EvidenceFormat.MAA),
    KindSpec(CvmKind.AZURE_TDX_MAA, "MAA token (Azure TDX)", False, _AZURE_BINDINGS, _parse_maa,
             _maa_verifier(CvmKind.AZURE_TDX_MAA), _maa_claims, EvidenceFormat.MAA),
):
    register(_spec)


# --- what each provider offers -------------------------------------------------------


@dataclass(frozen=True)
class TeeOffer:
    """What a provider delivers for one requested TEE: the evidence kind its CVMs
    produce and the instance binding that evidence carries (the provider's declaration)."""

    evidence_kind: str
    binding: InstanceBinding


class TeeNotOffered(AttestationError):
    code = "tee_not_offered"


def resolve_offer(provider: str, offers: Mapping[str, TeeOffer], requested: str | None) -> tuple[str, TeeOffer]:
    """(provider, requested TEE) -> the evidence kind the CVM will produce.

    ``requested`` None takes the provider's first offer. A TEE the provider cannot
    deliver is refused, naming what it offers, never silently substituted.
    """
    if not offers:
        raise TeeNotOffered(f"provider {provider!r} declares no TEE it can deliver")
    tee = requested if requested is not None else next(iter(offers))
    offer = offers.get(tee)
    if offer is None:
        raise TeeNotOffered(
            f"provider {provider!r} cannot deliver TEE {tee!r}; it offers {', '.join(offers)}"
        )
    if offer.evidence_kind != CvmKind.NONE:
        spec_of(offer.evidence_kind)
    return tee, offer
