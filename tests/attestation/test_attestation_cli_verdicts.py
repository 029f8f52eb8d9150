"""`duet attestation verify`: exit codes that do not collide, caveats on their own lines,
launch / committed TCB floors, collateral age, and the one expectations schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from attestation_helpers import SIM_NOW, VECTORS, vec
from typer.testing import CliRunner

from duet.attestation.simulated import SimulatedSgx, SimulatedSnp
from duet.attestation.snp.abi import TcbVersion
from duet.attestation.snp.verify import verify_snp_report
from duet.attestation.validate import Expectations, validate
from duet.cli import attestation_cmd
from duet.cli.attestation_cmd import app

GSG = "snp/go-sev-guest/"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["verify", *args])
    return res.exit_code, res.output


def _gsg_certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    d.mkdir(exist_ok=True)
    (d / "k").write_bytes(vec(GSG + "vcek.testcer"))
    return d


# -- exit codes ----------------------------------------------------------------------------


def test_exit_codes_do_not_collide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = str(VECTORS / GSG / "attestation.bin")
    certs = str(_gsg_certs(tmp_path))
    assert run(report, "--certs", certs, "--now", "2025-01-01")[0] == 0
    assert runner.invoke(app, ["verify", report, "--no-such-option"]).exit_code == 2  # usage
    b = bytearray(vec(GSG + "attestation.bin"))
    b[0x90] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(b))
    code, out = run(str(tmp_path / "bad.bin"), "--certs", certs, "--now", "2025-01-01")
    assert code == 3 and "verification failed" in out.lower()  # not 2: that is usage
    assert run(str(tmp_path / "missing.bin"), "--now", "2025-01-01")[0] == 4

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(attestation_cmd, "_verify", boom)
    code, out = run(report, "--certs", certs, "--now", "2025-01-01")
    assert code == 1 and "error [internal_error]: RuntimeError: a bug" in out
    assert "Traceback" not in out


# -- caveats -------------------------------------------------------------------------------


def test_advisories_and_tcb_status_on_their_own_lines() -> None:
    code, out = run(
        str(VECTORS / "sgx/dcap-qvl/sgx_quote"),
        "--collateral",
        str(VECTORS / "sgx/dcap-qvl/sgx_quote_collateral.json"),
        "--now",
        "2025-07-01T00:00:00Z",
    )
    assert code == 0, out
    lines = out.splitlines()
    assert "CAVEAT TCB status: ConfigurationAndSWHardeningNeeded" in lines
    assert "CAVEAT advisory: INTEL-SA-00289" in lines and "CAVEAT advisory: INTEL-SA-00615" in lines
    assert lines[-1] == "verdict: VERIFIED WITH 3 CAVEAT(S) (listed above)"


def test_up_to_date_has_no_caveats(sim_sgx: SimulatedSgx, tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.write_bytes(sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32)))
    c = tmp_path / "c.json"
    c.write_text(json.dumps(sim_sgx.collateral()))
    code, out = run(str(q), "--collateral", str(c), "--certs", str(sim_sgx.directory),
                    "--trust-simulated", "--now", "2026-06-01", "--json")
    assert code == 0 and json.loads(out)["caveats"] == []


def test_debug_report_still_verifies_but_says_so(tmp_path: Path) -> None:
    """The go-sev-guest report has policy DEBUG set: the signature is judged as before."""
    code, out = run(str(VECTORS / GSG / "attestation.bin"), "--certs", str(_gsg_certs(tmp_path)),
                    "--now", "2025-01-01")
    assert code == 0, out
    assert out.splitlines()[0] == "!!! DEBUG ENABLED !!!"
    assert "CAVEAT DEBUG ENABLED" in out and out.splitlines()[-1].endswith("DEBUG ENABLED")


def test_launch_and_committed_tcb_shown_and_bounded(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    old = TcbVersion.build(bootloader=4, tee=0, snp=10, microcode=213)
    rep = sim_snp.report(b"x", measurement=bytes(48), launch_tcb=old, committed_tcb=old)
    r = verify_snp_report(rep, vcek_der=sim_snp.vcek_der, ask_pem=sim_snp.cert_chain_pem,
                          now=SIM_NOW, trusted_arks=[sim_snp.ark_pem])
    assert r.launch_tcb["snp"] == 10 and r.reported_tcb["snp"] == 22
    exp = Expectations(min_tcb={"snp": 22}, min_launch_tcb={"snp": 20},  # type: ignore[arg-type]
                       min_committed_tcb={"snp": 10})
    assert [(f.field, f.found) for f in validate(r, exp)] == [("launch_tcb.snp", "10")]
    f = tmp_path / "r.bin"
    f.write_bytes(rep)
    code, out = run(str(f), "--kind", "simulated-snp", "--certs", str(sim_snp.directory),
                    "--now", "2026-06-01")
    assert code == 0, out
    assert "launch_tcb.snp: 10" in out and "committed_tcb.snp: 10" in out
    assert "reported_tcb.snp: 22" in out


def test_max_collateral_age(sim_sgx: SimulatedSgx, tmp_path: Path) -> None:
    from duet.attestation.dcap.verify import verify_sgx_quote

    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    r = verify_sgx_quote(q, sim_sgx.collateral(), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)
    assert r.collateral_issued == "2026-01-01T00:00:00Z"
    assert validate(r, Expectations(max_collateral_age="200d"), now=SIM_NOW) == []
    (f,) = validate(r, Expectations(max_collateral_age="30d"), now=SIM_NOW)
    assert f.field == "collateral_age" and f.found.startswith("151 days")
    snp = verify_snp_report(vec(GSG + "attestation.bin"), vcek_der=vec(GSG + "vcek.testcer"),
                            now=SIM_NOW.replace(year=2025))
    (f,) = validate(snp, Expectations(max_collateral_age="30d"))
    assert f.field == "collateral_issued" and "not present" in f.found  # no CRL was checked


# -- one expectations schema ---------------------------------------------------------------


def test_expect_takes_the_duet_verify_file(tmp_path: Path) -> None:
    report = str(VECTORS / GSG / "attestation.bin")
    certs = str(_gsg_certs(tmp_path))
    exp = tmp_path / "e.yaml"
    exp.write_text(
        "controller: {tee: sgx, mrenclave: '" + "00" * 32 + "'}\n"
        "cvm:\n  tee: snp\n  min_tcb: {snp: 5}\n  min_launch_tcb: {snp: 5}\n"
        "  max_evidence_age: 1h\n"
        "history: {allowed_commands: ['^true$']}\n"
    )
    code, out = run(report, "--certs", certs, "--now", "2025-01-01", "--expect", str(exp))
    assert code == 0, out
    assert "NOT CHECKED cvm.max_evidence_age" in out and "NOT CHECKED history" in out
    exp.write_text("cvm:\n  tee: tdx\n")
    code, out = run(report, "--certs", certs, "--now", "2025-01-01", "--expect", str(exp))
    assert code == 3 and "FAILED tee: found snp, expected tdx" in out
    exp.write_text("controller: {tee: sgx}\n")
    code, out = run(report, "--certs", certs, "--now", "2025-01-01", "--expect", str(exp))
    assert code == 4 and "no cvm: section" in out


@pytest.mark.parametrize(
    "text",
    [
        "cvm: {measurment: 12}\n",  # typo
        "cvm: {measurement: zz}\n",  # not hex
        "cvm: {min_tcb: {snp: 300}}\n",
        "controller: {mrenclave: 1, bogus: 2}\n",
        "cvm: [\n",  # not YAML
        "cvm: {azure_ak_roots: [no-such-root.pem]}\n",  # a pinned file that is not there
        "cvm: {azure_ak_roots: ['-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n']}\n",
        "- a list\n",
    ],
)
def test_malformed_file_same_line_from_both_commands(tmp_path: Path, text: str) -> None:
    exp = tmp_path / "bad.yaml"
    exp.write_text(text)
    duet = [sys.executable, "-m", "duet.cli.main"]
    a = subprocess.run([*duet, "verify", "some-cvm", "--controller", "http://127.0.0.1:9",
                        "--expect", str(exp)], capture_output=True, text=True, timeout=60)
    b = subprocess.run([*duet, "attestation", "verify", str(VECTORS / GSG / "attestation.bin"),
                        "--expect", str(exp)], capture_output=True, text=True, timeout=60)
    assert a.stderr.startswith("error [invalid_expectations]: "), a.stderr
    assert a.stderr == b.stderr and a.stderr.count("\n") == 1, (a.stderr, b.stderr)
    assert "pydantic" not in a.stderr and "For further information" not in a.stderr
    assert (a.returncode, b.returncode) == (1, 4)


def test_attestation_expectations_errors_are_one_line() -> None:
    from duet.attestation.errors import ParseError

    with pytest.raises(ParseError) as ei:
        Expectations.from_yaml("measurement: zz\nmin_tcb: {snp: -1}\n")
    assert "\n" not in str(ei.value) and "measurement" in str(ei.value)
