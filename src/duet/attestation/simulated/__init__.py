"""Simulated TEEs for development and tests: real formats, development roots, SIMULATED.

Nothing here is trusted by default: a verifier accepts simulated evidence only when the
caller passes the development root explicitly (``root_ca_der=`` / ``trusted_arks=``).
"""

from .sgx import SimulatedSgx
from .snp import SimulatedSnp, simulated_snp_report_from_dir
from .tdx import SimulatedTdx, simulated_tdx_quote_from_dir

__all__ = [
    "SimulatedSgx",
    "SimulatedSnp",
    "SimulatedTdx",
    "simulated_snp_report_from_dir",
    "simulated_tdx_quote_from_dir",
]
