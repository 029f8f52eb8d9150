"""Expectations (validate) and the ``duet attestation verify`` CLI's verdicts and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from attestation_helpers import SIM_NOW, VECTORS, at, vec
from typer.testing import CliRunner

from duet.attestation.dcap.verify import verify_sgx_quote
from duet.attestation.errors import ExpectationFailed, ParseError
from duet.attestation.simulated import SimulatedSgx, SimulatedSnp
from duet.attestation.snp.verify import verify_snp_report
from duet.attestation.validate import Expectations, check, validate
from duet.cli.attestation_cmd import app

GSG = "snp/go-sev-guest/"
MEAS = (
    "b07af9620f3b839b47996422ddec6058338951d984e31211"
    "5131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
)


def snp_report():  # type: ignore[no-untyped-def]
    return verify_snp_report(
        vec(GSG + "attestation.bin"), vcek_der=vec(GSG + "vcek.testcer"), now=at("2025-01-01")
    )


def test_empty_expectations_pass() -> None:
    assert validate(snp_report(), Expectations()) == []


def test_snp_expectations() -> None:
    exp = Expectations.from_yaml(
        f"""
kind: snp
measurement: "{MEAS.upper()}"
report_data: "0102030405"
host_data: "{"00" * 32}"
min_tcb: {{bootloader: 2, snp: 5, microcode: 68}}
vmpl: 0
simulated: false
"""
    )
    assert validate(snp_report(), exp) == []


def test_snp_failures_name_field_found_expected() -> None:
    exp = Expectations(
        measurement="00" * 48, no_debug=True, min_tcb={"snp": 6}, mrenclave="11" * 32
    )  # type: ignore[arg-type]
    failures = validate(snp_report(), exp)
    by_field = {f.field: f for f in failures}
    assert by_field["measurement"].found == MEAS and by_field["measurement"].expected == "00" * 48
    assert by_field["debug"].found == "True"  # policy 0xb0000 has DEBUG set
    assert (
        by_field["reported_tcb.snp"].found == "5"
        and by_field["reported_tcb.snp"].expected == ">= 6"
    )
    assert "not present" in by_field["mrenclave"].found
    with pytest.raises(ExpectationFailed) as ei:
        check(snp_report(), exp)
    assert ei.value.code == "expectation_failed" and len(ei.value.failures) == 4


def test_sgx_expectations(sim_sgx: SimulatedSgx) -> None:
    q = sim_sgx.quote(
        b"rd", mrenclave=b"\x01" * 32, mrsigner=b"\x02" * 32, isv_prod_id=1, isv_svn=2
    )
    r = verify_sgx_quote(q, sim_sgx.collateral(), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)
    ok = Expectations(
        mrenclave="01" * 32,
        mrsigner="02" * 32,
        isv_prod_id=1,
        min_isv_svn=2,
        accepted_tcb_statuses=["UpToDate"],
        report_data=b"rd".hex(),
    )
    assert validate(r, ok) == []
    bad = Expectations(min_isv_svn=3, simulated=False, accepted_tcb_statuses=["OutOfDate"])
    assert {f.field for f in validate(r, bad)} == {"isv_svn", "simulated", "tcb_status"}


@pytest.mark.parametrize(
    "text", ["measurement: zz", "bogus_field: 1", "- a list", "accepted_tcb_statuses: [Fine]", ":"]
)
def test_bad_expectations(text: str) -> None:
    with pytest.raises(ParseError):
        Expectations.from_yaml(text)


# -- CLI ---------------------------------------------------------------------------------

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["verify", *args])
    return res.exit_code, res.output


def test_cli_sgx_verified_json() -> None:
    code, out = run(
        str(VECTORS / "sgx/dcap-qvl/sgx_quote"),
        "--collateral",
        str(VECTORS / "sgx/dcap-qvl/sgx_quote_collateral.json"),
        "--now",
        "2025-07-01T00:00:00Z",
        "--json",
    )
    assert code == 0, out
    doc = json.loads(out)
    assert doc["kind"] == "sgx" and doc["verdict"] == "verified"
    assert doc["claims"]["tcb_status"] == "ConfigurationAndSWHardeningNeeded"


def test_cli_snp_certs_and_expect(tmp_path: Path) -> None:
    (tmp_path / "vcek.der").write_bytes(vec(GSG + "vcek.testcer"))
    report = str(VECTORS / GSG / "attestation.bin")
    code, out = run(report, "--certs", str(tmp_path), "--now", "2025-01-01T00:00:00Z")
    assert code == 0 and "VERIFIED" in out, out
    exp = tmp_path / "exp.yaml"
    exp.write_text("cvm:\n  measurement: '00'\n")
    code, out = run(report, "--certs", str(tmp_path), "--now", "2025-01-01", "--expect", str(exp))
    assert code == 3 and "FAILED measurement" in out


def test_cli_signature_failure(tmp_path: Path) -> None:
    (tmp_path / "vcek.der").write_bytes(vec(GSG + "vcek.testcer"))
    b = bytearray(vec(GSG + "attestation.bin"))
    b[0x90] ^= 1
    (tmp_path / "r.bin").write_bytes(bytes(b))
    code, out = run(str(tmp_path / "r.bin"), "--certs", str(tmp_path), "--now", "2025-01-01")
    assert code == 3 and "signature_invalid" in out


@pytest.mark.parametrize(
    "args",
    [
        ["tlog/does-not-exist"],
        ["snp/go-sev-guest/vcek.testcer"],
        ["snp/go-sev-guest/attestation.bin"],  # no VCEK given
        ["sgx/dcap-qvl/sgx_quote"],  # no collateral
    ],
)
def test_cli_unusable_input(args: list[str]) -> None:
    code, out = run(str(VECTORS / args[0]), *args[1:], "--now", "2025-01-01")
    assert code == 4, out


def test_cli_azure_detected() -> None:
    code, out = run(str(VECTORS / "azure/az-snp-vtpm/evidence-v0.json"), "--now", "2025-06-01")
    assert code == 0 and "azure-snp" in out, out


def test_cli_simulated_snp_says_simulated(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    f = tmp_path / "report.bin"
    f.write_bytes(sim_snp.report(b"x", measurement=bytes(48)))
    certs = str(sim_snp.directory)
    code, out = run(str(f), "--certs", certs, "--now", "2026-06-01")
    assert code == 3 and "untrusted_root" in out  # as "snp": AMD roots only
    code, out = run(str(f), "--kind", "simulated-snp", "--certs", certs, "--now", "2026-06-01")
    assert code == 0, out
    assert all(line.startswith("[SIMULATED]") for line in out.splitlines() if line)


def test_cli_simulated_sgx_needs_flag(sim_sgx: SimulatedSgx, tmp_path: Path) -> None:
    q = tmp_path / "q.dat"
    q.write_bytes(sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32)))
    coll = tmp_path / "c.json"
    coll.write_text(json.dumps(sim_sgx.collateral()))
    base = [
        str(q),
        "--collateral",
        str(coll),
        "--certs",
        str(sim_sgx.directory),
        "--now",
        "2026-06-01",
    ]
    assert run(*base)[0] == 4
    code, out = run(*base, "--trust-simulated")
    assert code == 0 and "SIMULATED" in out
