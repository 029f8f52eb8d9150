"""duet.attestation — pure, offline verification of TEE evidence.

Laid out as parse (``*/abi``) / verify (signatures, chains: ``*/verify``) / validate (claims
vs. expectations: ``validate``). Imports nothing else of duet and does no network I/O.

Public surface (everything else may change):

* SGX / TDX (DCAP, via dcap-qvl): :func:`verify_sgx_quote`, :func:`verify_tdx_quote`,
  :func:`prepare_collateral` → :class:`SgxReport`, :class:`TdxReport`
* SEV-SNP: :func:`verify_snp_report` → :class:`SnpReport`; :func:`parse_snp_report`
* Azure CVM: :func:`verify_azure_evidence` → :class:`AzureReport`; :func:`parse_azure_evidence`
* expectations: :class:`Expectations` (YAML), :func:`validate` → list of :class:`Failure`,
  :func:`check` (raises :class:`ExpectationFailed`)
* simulated (development roots, every result says ``simulated=True``):
  :class:`SimulatedSgx`, :class:`SimulatedSnp`, :func:`simulated_snp_report_from_dir`
* :func:`detect_kind` for tools
* errors: :mod:`duet.attestation.errors`, rooted at :class:`AttestationError`
"""

from __future__ import annotations

from .azure.evidence import AzureReport, parse_azure_evidence, verify_azure_evidence
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
    ParseError,
    Revoked,
    SignatureInvalid,
    TcbError,
    UnsupportedVersion,
    UntrustedRoot,
    VerificationError,
    WrongKind,
)
from .simulated import SimulatedSgx, SimulatedSnp, simulated_snp_report_from_dir
from .snp.abi import TcbVersion
from .snp.abi import parse_report as parse_snp_report
from .snp.verify import SnpReport, verify_snp_report
from .validate import Expectations, check, validate

__all__ = [
    "AttestationError",
    "AzureReport",
    "BindingError",
    "CertificateExpired",
    "CertificateRevoked",
    "ChainInvalid",
    "CollateralError",
    "DcapCollateral",
    "DebugEnclave",
    "ExpectationFailed",
    "Expectations",
    "Failure",
    "ParseError",
    "Revoked",
    "SgxReport",
    "SignatureInvalid",
    "SimulatedSgx",
    "SimulatedSnp",
    "SnpReport",
    "TcbError",
    "TcbVersion",
    "TdxReport",
    "UnsupportedVersion",
    "UntrustedRoot",
    "VerificationError",
    "WrongKind",
    "check",
    "detect_kind",
    "intel_sgx_root_ca_der",
    "parse_azure_evidence",
    "parse_snp_report",
    "prepare_collateral",
    "simulated_snp_report_from_dir",
    "validate",
    "verify_azure_evidence",
    "verify_sgx_quote",
    "verify_snp_report",
    "verify_tdx_quote",
]
