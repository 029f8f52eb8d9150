"""duet.attestation — pure, offline verification of TEE evidence.

Laid out as parse (``*/abi``) / verify (signatures, chains: ``*/verify``) / validate (claims
vs. expectations: ``validate``). Imports nothing else of duet and does no network I/O.

Public surface (everything else may change):

* SGX / TDX (DCAP, via dcap-qvl): :func:`verify_sgx_quote`, :func:`verify_tdx_quote`,
  :func:`prepare_collateral` → :class:`SgxReport`, :class:`TdxReport`
* SEV-SNP: :func:`verify_snp_report` → :class:`SnpReport`; :func:`parse_snp_report`
* Azure CVM: :func:`verify_azure_evidence` → :class:`AzureReport`; :func:`parse_azure_evidence`
* MAA tokens: :func:`verify_maa_token` → :class:`MaaReport`; as CVM evidence (kinds
  :data:`KIND_SNP_MAA`, :data:`KIND_TDX_MAA` in :mod:`.cvm_kinds`) only against MAA keys
  the verifier pins (:func:`pinned_maa_keys`, :func:`verify_maa_cvm_token`)
* certificates by content: :class:`CertStore`, :func:`verify_snp_report_with_certs`
* TDX event log: :func:`parse_ccel`, :func:`replay_rtmrs`, :func:`check_rtmrs`
* expectations: :class:`Expectations` (YAML), :func:`validate` → list of :class:`Failure`,
  :func:`check` (raises :class:`ExpectationFailed`)
* simulated (development roots, every result says ``simulated=True``):
  :class:`SimulatedSgx`, :class:`SimulatedSnp`, :class:`SimulatedTdx`,
  :func:`simulated_snp_report_from_dir`
* :func:`detect_kind` for tools
* errors: :mod:`duet.attestation.errors`, rooted at :class:`AttestationError`
"""

from __future__ import annotations

from .azure.evidence import AzureReport, parse_azure_evidence, verify_azure_evidence
from .azure.maa import (
    KIND_SNP_MAA,
    KIND_TDX_MAA,
    MaaReport,
    pinned_maa_keys,
    verify_maa_cvm_token,
    verify_maa_token,
)
from .ccel import check_rtmrs, parse_ccel, replay_rtmrs
from .certstore import CertStore
from .dcap.verify import (
    DcapCollateral,
    SgxReport,
    TdxReport,
    intel_sgx_root_ca_der,
    prepare_collateral,
    verify_sgx_quote,
    verify_tdx_quote,
)
from .detect import detect_kind
from .errors import (
    AttestationError,
    BindingError,
    CertificateExpired,
    CertificateRevoked,
    ChainInvalid,
    CollateralError,
    DebugEnclave,
    ExpectationFailed,
    Failure,
    MissingCertificate,
    ParseError,
    ProductMismatch,
    Revoked,
    SignatureInvalid,
    TcbError,
    TokenExpired,
    TokenNotYetValid,
    UnsupportedVersion,
    UntrustedRoot,
    VerificationError,
    WrongKind,
)
from .simulated import SimulatedSgx, SimulatedSnp, SimulatedTdx, simulated_snp_report_from_dir
from .snp.abi import TcbVersion
from .snp.abi import parse_report as parse_snp_report
from .snp.verify import SnpReport, verify_snp_report, verify_snp_report_with_certs
from .validate import Expectations, check, validate

__all__ = [
    "KIND_SNP_MAA",
    "KIND_TDX_MAA",
    "AttestationError",
    "AzureReport",
    "BindingError",
    "CertStore",
    "CertificateExpired",
    "CertificateRevoked",
    "ChainInvalid",
    "CollateralError",
    "DcapCollateral",
    "DebugEnclave",
    "ExpectationFailed",
    "Expectations",
    "Failure",
    "MaaReport",
    "MissingCertificate",
    "ParseError",
    "ProductMismatch",
    "Revoked",
    "SgxReport",
    "SignatureInvalid",
    "SimulatedSgx",
    "SimulatedSnp",
    "SimulatedTdx",
    "SnpReport",
    "TcbError",
    "TcbVersion",
    "TdxReport",
    "TokenExpired",
    "TokenNotYetValid",
    "UnsupportedVersion",
    "UntrustedRoot",
    "VerificationError",
    "WrongKind",
    "check",
    "check_rtmrs",
    "detect_kind",
    "intel_sgx_root_ca_der",
    "parse_azure_evidence",
    "parse_ccel",
    "parse_snp_report",
    "pinned_maa_keys",
    "prepare_collateral",
    "replay_rtmrs",
    "simulated_snp_report_from_dir",
    "validate",
    "verify_azure_evidence",
    "verify_maa_cvm_token",
    "verify_maa_token",
    "verify_sgx_quote",
    "verify_snp_report",
    "verify_snp_report_with_certs",
    "verify_tdx_quote",
]
