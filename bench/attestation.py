"""Verifications per second for each evidence kind, with collateral / chains cached.

Prints one JSON object: {kind: {"per_second": ..., "ms_each": ...}, ...}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from duet.attestation.azure.evidence import parse_azure_evidence, verify_azure_evidence
from duet.attestation.dcap.verify import prepare_collateral, verify_sgx_quote, verify_tdx_quote
from duet.attestation.simulated import SimulatedSgx, SimulatedSnp
from duet.attestation.snp.verify import verify_snp_report

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "attestation" / "vectors"


def rate(fn: Callable[[], object], seconds: float = 1.0) -> dict[str, float]:
    fn()  # warm up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return {"per_second": round(n / elapsed, 1), "ms_each": round(1000 * elapsed / n, 3)}


def main() -> None:
    def v(rel: str) -> bytes:
        return (VECTORS / rel).read_bytes()

    out: dict[str, dict[str, float]] = {}
    sgx_q = v("sgx/dcap-qvl/sgx_quote")
    sgx_c = prepare_collateral(v("sgx/dcap-qvl/sgx_quote_collateral.json"))
    now_sgx = datetime(2025, 7, 1, tzinfo=UTC)
    out["sgx"] = rate(lambda: verify_sgx_quote(sgx_q, sgx_c, now=now_sgx))
    # The direct way: dcap-qvl alone (no claims parsing, no extra Intel-rule checks).
    import dcap_qvl

    raw_c = dcap_qvl.QuoteCollateralV3.from_json(v("sgx/dcap-qvl/sgx_quote_collateral.json").decode())
    out["sgx_dcap_qvl_direct"] = rate(lambda: dcap_qvl.verify(sgx_q, raw_c, int(now_sgx.timestamp())))
    out["sgx_ratio_duet_vs_direct"] = {
        "ratio": round(out["sgx"]["ms_each"] / out["sgx_dcap_qvl_direct"]["ms_each"], 3)
    }

    tdx_q = v("tdx/dcap-qvl/tdx_quote")
    tdx_c = prepare_collateral(v("tdx/dcap-qvl/tdx_quote_collateral.json"))
    out["tdx"] = rate(lambda: verify_tdx_quote(tdx_q, tdx_c, now=now_sgx))

    snp = v("snp/go-sev-guest/attestation.bin")
    vcek = v("snp/go-sev-guest/vcek.testcer")
    chain = v("snp/go-sev-guest/milan.testcer")
    now_snp = datetime(2025, 1, 1, tzinfo=UTC)
    out["snp"] = rate(lambda: verify_snp_report(snp, vcek_der=vcek, ask_pem=chain, now=now_snp))

    ev = parse_azure_evidence(v("azure/az-snp-vtpm/evidence-v0.json"))
    now_az = datetime(2025, 6, 1, tzinfo=UTC)
    out["azure-snp"] = rate(lambda: verify_azure_evidence(ev, now=now_az, nonce=b"challenge"))

    with tempfile.TemporaryDirectory() as d:
        sim = SimulatedSgx.load_or_create(Path(d) / "sgx")
        sq = sim.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
        sc = prepare_collateral(sim.collateral())
        now_sim = datetime(2026, 6, 1, tzinfo=UTC)
        out["simulated-sgx"] = rate(
            lambda: verify_sgx_quote(sq, sc, now=now_sim, root_ca_der=sim.root_ca_der)
        )
        ssnp = SimulatedSnp.load_or_create(Path(d) / "snp")
        sr = ssnp.report(b"x", measurement=bytes(48))
        arks = [ssnp.ark_pem]
        out["simulated-snp"] = rate(
            lambda: verify_snp_report(
                sr,
                vcek_der=ssnp.vcek_der,
                ask_pem=ssnp.cert_chain_pem,
                now=now_sim,
                trusted_arks=arks,
            )
        )
        out["simulated-sgx-quote-generation"] = rate(
            lambda: sim.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
        )
        out["simulated-snp-report-generation"] = rate(
            lambda: ssnp.report(b"x", measurement=bytes(48))
        )
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
