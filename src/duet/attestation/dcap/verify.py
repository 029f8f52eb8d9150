"""Verify SGX and TDX DCAP quotes with ``dcap-qvl`` against supplied collateral.

dcap-qvl does the Intel DCAP checks: the PCK chain to the root with both CRLs (unknown
revocation status is denied), TCB Info and QE Identity signatures and validity windows, the
QE report signature and its binding to the attestation key, the QE identity policy, the ISV
report signature, the platform TCB level (SGX and TDX components, TDX module identity),
and it refuses debug enclaves / TDs, reserved TD attribute bits, TDs without
SEPT_VE_DISABLE and TDs with a service TD.

What this module adds to dcap-qvl, so that results are what Intel's rules demand:

* **TCB status convergence.** dcap-qvl merges the QE and platform statuses by taking the
  more severe one; Intel's QVL (``convergeTcbStatusWithQeTcbStatus``) makes an out-of-date
  QE on a platform that needs configuration ``OutOfDateConfigurationNeeded``. We recompute
  the combined status from the two parts dcap-qvl reports.
* **PCE ID.** The TCB Info's ``pceId`` must equal the PCE-ID in the PCK certificate
  (dcap-qvl compares only the FMSPC).
* **Fail closed.** Any error from dcap-qvl — including a Rust panic surfacing as a
  ``BaseException`` — becomes a typed :class:`AttestationError`; an unknown TCB status
  string is an error, never "probably fine".
* **Parsing first.** The quote is parsed by our own bounds-checked parser before it is
  handed to dcap-qvl; the claims returned come from that parse of the very same bytes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import dcap_qvl  # type: ignore[import-untyped]

from ..errors import (
    AttestationError,
    CertificateExpired,
    CertificateRevoked,
    ChainInvalid,
    CollateralError,
    DebugEnclave,
    ParseError,
    SignatureInvalid,
    TcbError,
    UnsupportedVersion,
    UntrustedRoot,
    VerificationError,
)
from .abi import Quote, SgxReportBody, TdReportBody, parse_sgx_quote, parse_tdx_quote

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)

_COLLATERAL_KEYS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


@lru_cache(maxsize=1)
def intel_sgx_root_ca_der() -> bytes:
    """Intel SGX Root CA (DER), embedded. SHA-256 44a0196b…fab674d3."""
    return (resources.files("duet.attestation") / "roots" / "IntelSGXRootCA.der").read_bytes()


class DcapCollateral:
    """Collateral parsed once (dcap-qvl object + the TCB Info fields we check ourselves).

    Build it with :func:`prepare_collateral` and pass it to the verify functions to avoid
    re-parsing JSON on every verification.
    """

    __slots__ = ("chains", "fmspc", "issued", "pce_id", "qvl", "tcb_info_id")

    def __init__(
        self, qvl: Any, tcb_info_id: str, fmspc: str, pce_id: str, issued: str = "",
        chains: tuple[str, ...] = (),
    ) -> None:
        self.qvl = qvl
        self.tcb_info_id = tcb_info_id
        self.fmspc = fmspc
        self.pce_id = pce_id
        # The older issueDate of TCB Info and QE Identity (ISO 8601): how stale the
        # platform's TCB verdict may be, for a ``max_collateral_age`` policy.
        self.issued = issued
        #: The collateral's issuer chains (PEM), whose roots must be the trusted root.
        self.chains = chains


CollateralInput = DcapCollateral | Mapping[str, object] | str | bytes


def prepare_collateral(collateral: CollateralInput) -> DcapCollateral:
    """Accept dcap-qvl ``QuoteCollateralV3`` JSON (text, bytes or a mapping)."""
    if isinstance(collateral, DcapCollateral):
        return collateral
    try:
        if isinstance(collateral, bytes):
            collateral = collateral.decode("utf-8")
        if isinstance(collateral, str):
            data = json.loads(collateral)
        else:
            data = dict(collateral)
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise CollateralError(f"collateral is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise CollateralError("collateral must be a JSON object")
    missing = [k for k in _COLLATERAL_KEYS if k not in data]
    if missing:
        raise CollateralError(f"collateral lacks {', '.join(missing)}")
    try:
        tcb = json.loads(str(data["tcb_info"]))
        tcb_id = str(tcb.get("id", "SGX"))
        fmspc = str(tcb["fmspc"]).lower()
        pce_id = str(tcb["pceId"]).lower()
        dates = [str(tcb.get("issueDate", ""))]
        qe = json.loads(str(data["qe_identity"]))
        dates.append(str(qe.get("issueDate", "")) if isinstance(qe, dict) else "")
        parsed = [
            datetime.fromisoformat(d.replace("Z", "+00:00")) for d in dates if d
        ]
        issued = min(parsed).isoformat().replace("+00:00", "Z") if parsed else ""
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CollateralError(f"collateral tcb_info is unusable: {e}") from None
    try:
        qvl = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(data))
    except Exception as e:
        raise CollateralError(f"collateral rejected by dcap-qvl: {e}") from None
    chains = tuple(str(data[k]) for k in ("pck_crl_issuer_chain", "tcb_info_issuer_chain",
                                            "qe_identity_issuer_chain"))
    return DcapCollateral(qvl, tcb_id, fmspc, pce_id, issued, chains)


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    advisory_ids: list[str]
    qe_status: str
    platform_status: str


@dataclass(frozen=True)
class SgxReport:
    """Verified claims of an SGX enclave quote. Hex strings are lowercase."""

    mrenclave: str
    mrsigner: str
    isv_prod_id: int
    isv_svn: int
    attributes: str
    debug: bool
    report_data: bytes
    tcb_status: str
    advisory_ids: list[str]
    simulated: bool
    quote_version: int = 3
    cpu_svn: str = ""
    misc_select: int = 0
    config_id: str = ""
    config_svn: int = 0
    qe_tcb_status: str = ""
    platform_tcb_status: str = ""
    fmspc: str = ""
    collateral_issued: str = ""
    kind: str = field(default="sgx")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_data"] = self.report_data.hex()
        return d


@dataclass(frozen=True)
class TdxReport:
    """Verified claims of a TDX quote. Hex strings are lowercase."""

    mrtd: str
    rtmr0: str
    rtmr1: str
    rtmr2: str
    rtmr3: str
    mrconfigid: str
    mrowner: str
    mrownerconfig: str
    report_data: bytes
    td_attributes: str
    debug: bool
    tcb_status: str
    advisory_ids: list[str]
    simulated: bool
    quote_version: int = 4
    tee_tcb_svn: str = ""
    mrseam: str = ""
    mrsignerseam: str = ""
    seam_attributes: str = ""
    xfam: str = ""
    tee_tcb_svn2: str | None = None
    mrservicetd: str | None = None
    qe_tcb_status: str = ""
    platform_tcb_status: str = ""
    fmspc: str = ""
    collateral_issued: str = ""
    kind: str = field(default="tdx")
    #: From the guest's CC event log, replayed against RTMR0..3 (:mod:`..ccel`): the
    #: number of events and the named ones (kernel, cmdline). None: no log came with it.
    event_log: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_data"] = self.report_data.hex()
        return d


def converge_tcb_status(platform: str, qe: str) -> str:
    """Intel QVL's convergence of the platform TCB level status with the QE's."""
    if qe == "Revoked" or platform == "Revoked":
        return "Revoked"
    if qe == "OutOfDate":
        if platform in ("UpToDate", "SWHardeningNeeded", "OutOfDate"):
            return "OutOfDate"
        if platform in (
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDateConfigurationNeeded",
        ):
            return "OutOfDateConfigurationNeeded"
    if qe != "UpToDate":
        raise TcbError(f"QE identity TCB status {qe!r} is not one Intel defines for a QE")
    return platform


def _map_qvl_error(msg: str) -> AttestationError:
    m = " ".join(msg.split())
    low = m.lower()
    if "debug mode" in low:
        return DebugEnclave(f"debug enclave / TD refused ({m})")
    if "failed to decode quote" in low or "failed to parse quote" in low:
        return ParseError(m)
    if "unsupported" in low and ("version" in low or "key type" in low or "tee type" in low):
        if "qe identity" in low:
            return CollateralError(m)
        return UnsupportedVersion(m)
    if "unknown qe vendor" in low:
        return UnsupportedVersion(m)
    if "revoked" in low:
        if "tcb status" in low:
            return TcbError(f"platform TCB is revoked ({m})")
        return CertificateRevoked(m)
    if (
        "expired" in low
        or "in the future" in low
        or "notvalidyet" in low
        or "not valid yet" in low
        or "crlexpired" in low
    ):
        return CertificateExpired(m)
    if "root ca crl" in low or "unknownissuer" in low or "failed to load root ca" in low:
        return UntrustedRoot(f"the quote does not chain to the trusted root ({m})")
    if ("signature" in low and "invalid" in low) or "hash mismatch" in low:
        return SignatureInvalid(m)
    if "certificate" in low or "chain" in low or "crl" in low:
        return ChainInvalid(m)
    if "tcb" in low or "fmspc" in low or "isvsvn" in low or "component count" in low:
        return TcbError(m)
    if "collateral" in low or "tcbinfo" in low or "qeidentity" in low or "qe identity" in low:
        return CollateralError(m)
    if "qe " in low:
        return SignatureInvalid(m)
    return VerificationError(m)


def _run_qvl(quote: bytes, coll: DcapCollateral, now: datetime, root_ca_der: bytes | None) -> Any:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now_secs = int(now.timestamp())
    if now_secs < 0:
        raise ValueError("now is before 1970")
    try:
        if root_ca_der is None:
            return dcap_qvl.verify(quote, coll.qvl, now_secs)
        return dcap_qvl.verify_with_root_ca(quote, coll.qvl, root_ca_der, now_secs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # includes pyo3 PanicException: fail closed, typed
        raise _map_qvl_error(str(e)) from None


def _tcb_verdict(verified: Any) -> TcbVerdict:
    try:
        doc = json.loads(verified.to_json())
        qe = str(doc["qe_status"]["status"])
        platform = str(doc["platform_status"]["status"])
        advisories = [str(a) for a in verified.advisory_ids]
        merged = str(verified.status)
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"dcap-qvl returned an unreadable report: {e}") from None
    for s in (qe, platform, merged):
        if s not in TCB_STATUSES:
            raise TcbError(f"unknown TCB status {s!r}")
    status = converge_tcb_status(platform, qe)
    if status == "Revoked":
        raise TcbError("platform TCB is revoked")
    return TcbVerdict(
        status=status, advisory_ids=advisories, qe_status=qe, platform_status=platform
    )


def _check_pck_matches_tcb_info(q: Quote, coll: DcapCollateral) -> str:
    """Intel: FMSPC *and* PCE ID of the PCK certificate must match the TCB Info."""
    pem = q.pck_chain_pem
    if pem is None:
        raise UnsupportedVersion(
            f"quote certification data type {q.cert_data_type} is not an embedded PCK chain (5)"
        )
    try:
        ext = dcap_qvl.parse_pck_extension_from_pem(pem)
        fmspc = bytes(ext.fmspc).hex()
        pce_id = bytes(ext.pce_id).hex()
    except Exception as e:
        raise ChainInvalid(f"PCK certificate SGX extension unreadable: {e}") from None
    if fmspc != coll.fmspc:
        raise CollateralError(
            f"TCB Info is for FMSPC {coll.fmspc}, the PCK certificate has {fmspc}"
        )
    if pce_id != coll.pce_id:
        raise CollateralError(
            f"TCB Info is for PCE ID {coll.pce_id}, the PCK certificate has {pce_id}"
        )
    return fmspc


def _check_chain_roots(q: Quote, coll: DcapCollateral, root_ca_der: bytes | None) -> None:
    """Every chain the evidence carries (the quote's PCK chain and the collateral's issuer
    chains) must end in the trusted root itself. dcap-qvl anchors each chain at the root
    it is given and never reads the root certificate a chain carries, so without this a
    changed root in the evidence (a bundle, an exported log) would go unnoticed: every byte
    of the evidence is either checked or refused."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import Encoding

    trusted = root_ca_der if root_ca_der is not None else intel_sgx_root_ca_der()
    pems = [("the quote's PCK chain", q.pck_chain_pem or b"")]
    if coll.chains:
        pems += [(f"collateral chain {i + 1}", c.encode()) for i, c in enumerate(coll.chains)]
    for what, pem in pems:
        try:
            certs = x509.load_pem_x509_certificates(pem.rstrip(b"\0"))
        except (ValueError, x509.InvalidVersion) as e:
            raise ChainInvalid(f"{what} does not parse: {e}") from None
        if not certs or certs[-1].public_bytes(Encoding.DER) != trusted:
            raise UntrustedRoot(f"{what} does not end in the trusted root certificate")
        # Each certificate must be issued by the next one: then every byte of the chain is
        # checked here, whether or not dcap-qvl reads that chain.
        for child, parent in itertools.pairwise(certs):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise ChainInvalid(f"{what}: {child.subject.rfc4514_string()[:80]} is not issued by the "
                                   "next certificate") from None


def _is_simulated(root_ca_der: bytes | None) -> bool:
    return root_ca_der is not None and root_ca_der != intel_sgx_root_ca_der()


def verify_sgx_quote(
    quote: bytes,
    collateral: CollateralInput,
    *,
    now: datetime,
    root_ca_der: bytes | None = None,
) -> SgxReport:
    """Verify an SGX DCAP quote (v3). ``root_ca_der=None`` trusts only Intel's SGX root.

    Passing another root (e.g. :attr:`SimulatedSgx.root_ca_der`) is the only way to accept
    non-Intel evidence; the result then has ``simulated=True``. Debug enclaves are refused.
    """
    q = parse_sgx_quote(quote)
    coll = prepare_collateral(collateral)
    if coll.tcb_info_id != "SGX":
        raise CollateralError(f"collateral TCB Info is for {coll.tcb_info_id}, not SGX")
    body = q.body
    assert isinstance(body, SgxReportBody)
    if body.debug:
        raise DebugEnclave("the enclave has the DEBUG attribute set")
    fmspc = _check_pck_matches_tcb_info(q, coll)
    verified = _run_qvl(quote, coll, now, root_ca_der)
    _check_chain_roots(q, coll, root_ca_der)
    tcb = _tcb_verdict(verified)
    return SgxReport(
        mrenclave=body.mr_enclave.hex(),
        mrsigner=body.mr_signer.hex(),
        isv_prod_id=body.isv_prod_id,
        isv_svn=body.isv_svn,
        attributes=body.attributes.hex(),
        debug=body.debug,
        report_data=body.report_data,
        tcb_status=tcb.status,
        advisory_ids=tcb.advisory_ids,
        simulated=_is_simulated(root_ca_der),
        quote_version=q.header.version,
        cpu_svn=body.cpu_svn.hex(),
        misc_select=body.misc_select,
        config_id=body.config_id.hex(),
        config_svn=body.config_svn,
        qe_tcb_status=tcb.qe_status,
        platform_tcb_status=tcb.platform_status,
        fmspc=fmspc,
        collateral_issued=coll.issued,
    )


def tdx_report_from_body(
    q: Quote,
    *,
    tcb: TcbVerdict | None,
    simulated: bool,
    fmspc: str = "",
    collateral_issued: str = "",
) -> TdxReport:
    """Claims of a TD quote body. With ``tcb=None`` the claims are *unverified*."""
    body = q.body
    assert isinstance(body, TdReportBody)
    return TdxReport(
        mrtd=body.mr_td.hex(),
        rtmr0=body.rtmrs[0].hex(),
        rtmr1=body.rtmrs[1].hex(),
        rtmr2=body.rtmrs[2].hex(),
        rtmr3=body.rtmrs[3].hex(),
        mrconfigid=body.mr_config_id.hex(),
        mrowner=body.mr_owner.hex(),
        mrownerconfig=body.mr_owner_config.hex(),
        report_data=body.report_data,
        td_attributes=body.td_attributes.hex(),
        debug=body.debug,
        tcb_status=tcb.status if tcb else "Unverified",
        advisory_ids=tcb.advisory_ids if tcb else [],
        simulated=simulated,
        quote_version=q.header.version,
        tee_tcb_svn=body.tee_tcb_svn.hex(),
        mrseam=body.mr_seam.hex(),
        mrsignerseam=body.mr_signer_seam.hex(),
        seam_attributes=body.seam_attributes.hex(),
        xfam=body.xfam.hex(),
        tee_tcb_svn2=body.tee_tcb_svn2.hex() if body.tee_tcb_svn2 is not None else None,
        mrservicetd=body.mr_service_td.hex() if body.mr_service_td is not None else None,
        qe_tcb_status=tcb.qe_status if tcb else "",
        platform_tcb_status=tcb.platform_status if tcb else "",
        fmspc=fmspc,
        collateral_issued=collateral_issued,
    )


def verify_tdx_quote(
    quote: bytes,
    collateral: CollateralInput,
    *,
    now: datetime,
    root_ca_der: bytes | None = None,
) -> TdxReport:
    """Verify a TDX DCAP quote (v4 or v5). Debug TDs are refused."""
    q = parse_tdx_quote(quote)
    coll = prepare_collateral(collateral)
    if coll.tcb_info_id != "TDX":
        raise CollateralError(f"collateral TCB Info is for {coll.tcb_info_id}, not TDX")
    body = q.body
    assert isinstance(body, TdReportBody)
    if body.debug:
        raise DebugEnclave("the TD has the DEBUG attribute set")
    fmspc = _check_pck_matches_tcb_info(q, coll)
    verified = _run_qvl(quote, coll, now, root_ca_der)
    _check_chain_roots(q, coll, root_ca_der)
    tcb = _tcb_verdict(verified)
    return tdx_report_from_body(
        q,
        tcb=tcb,
        simulated=_is_simulated(root_ca_der),
        fmspc=fmspc,
        collateral_issued=coll.issued,
    )


def load_pinned_dcap_roots(blobs: Sequence[bytes], what: str) -> list[bytes]:
    """DCAP roots someone pins in place of Intel's SGX root CA (`..pinned_roots`), for TDX
    quotes (a twin's development root, a private root), as DER: what ``root_ca_der``
    takes. Each is signed as Intel's is (ECDSA), verified under its own key."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from ..pinned_roots import load_pinned_roots
    from ..snp.certs import common_name

    def verify_self(cert: x509.Certificate) -> None:
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ChainInvalid(f"{what}: {common_name(cert)!r} does not verify under its own key") from None

    return load_pinned_roots(blobs, what, verify_self)
