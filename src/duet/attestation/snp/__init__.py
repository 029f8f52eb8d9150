"""AMD SEV-SNP: ``abi`` parses reports, ``certs`` reads AMD certificates, ``verify`` checks."""

from .abi import AttestationReport, TcbVersion, parse_report
from .verify import SnpReport, verify_snp_report

__all__ = ["AttestationReport", "SnpReport", "TcbVersion", "parse_report", "verify_snp_report"]
