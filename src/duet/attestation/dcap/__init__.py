"""Intel DCAP (SGX and TDX) quotes: ``abi`` parses, ``verify`` checks with dcap-qvl."""

from .verify import (
    DcapCollateral,
    SgxReport,
    TdxReport,
    prepare_collateral,
    verify_sgx_quote,
    verify_tdx_quote,
)

__all__ = [
    "DcapCollateral",
    "SgxReport",
    "TdxReport",
    "prepare_collateral",
    "verify_sgx_quote",
    "verify_tdx_quote",
]
