"""Simulated TDX (v4 / v5 quotes, full collateral under a dev root, through dcap-qvl) and
RTMR replay from a CCEL event log."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from attestation_helpers import SIM_NOW
from typer.testing import CliRunner

from duet.attestation.ccel import (
    EV_NO_ACTION,
    build_ccel,
    check_rtmrs,
    parse_ccel,
    replay_rtmrs,
)
from duet.attestation.dcap.verify import verify_tdx_quote
from duet.attestation.errors import (
    BindingError,
    CertificateExpired,
    CertificateRevoked,
    CollateralError,
    DebugEnclave,
    ParseError,
    SignatureInvalid,
    UntrustedRoot,
    VerificationError,
)
from duet.attestation.simulated import SimulatedSgx, SimulatedTdx
from duet.attestation.simulated.tdx import OUTDATED_TEE_TCB_SVN
from duet.attestation.validate import Expectations, validate
from duet.cli.attestation_cmd import app

MRTD = hashlib.sha384(b"td image").digest()
CFG = hashlib.sha384(b"instance 42").digest()
RTMRS = tuple(hashlib.sha384(bytes([i])).digest() for i in range(4))
runner = CliRunner()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(tmp_path_factory.mktemp("tdx"))


def verify(sim: SimulatedTdx, quote: bytes, **kw: object) -> object:
    return verify_tdx_quote(
        quote, kw.pop("collateral", sim.collateral()), now=kw.pop("now", SIM_NOW),  # type: ignore[arg-type]
        root_ca_der=kw.pop("root", sim.root_ca_der),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("version", "td15"), [(4, False), (5, False), (5, True)])
def test_quote_versions_verify_with_every_field(sim: SimulatedTdx, version: int, td15: bool) -> None:
    q = sim.quote(b"bind", mrtd=MRTD, rtmrs=RTMRS, mrconfigid=CFG, mrowner=b"\x07" * 48,  # type: ignore[arg-type]
                  version=version, td15=td15)
    r = verify_tdx_quote(q, sim.collateral(), now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert (r.quote_version, r.simulated, r.tcb_status, r.advisory_ids) == (version, True, "UpToDate", [])
    assert r.mrtd == MRTD.hex() and r.mrconfigid == CFG.hex() and r.mrowner == "07" * 48
    assert [r.rtmr0, r.rtmr1, r.rtmr2, r.rtmr3] == [x.hex() for x in RTMRS]
    assert r.report_data == b"bind".ljust(64, b"\0")
    assert (r.tee_tcb_svn2 is not None) == td15 and r.collateral_issued == "2026-01-01T00:00:00Z"
    exp = Expectations(mrtd=MRTD.hex(), mrconfigid=CFG.hex(), rtmr3=RTMRS[3].hex(),
                       report_data=b"bind".hex(), accepted_tcb_statuses=["UpToDate"], no_debug=True)
    assert validate(r, exp) == []


def test_outdated_module_reports_status_and_advisory(sim: SimulatedTdx) -> None:
    r = verify_tdx_quote(sim.quote(b"x", tee_tcb_svn=OUTDATED_TEE_TCB_SVN), sim.collateral(),
                         now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert (r.tcb_status, r.advisory_ids) == ("OutOfDate", ["INTEL-SA-00001"])


def test_simulated_tdx_negatives(sim: SimulatedTdx, sim_sgx: SimulatedSgx) -> None:
    q = sim.quote(b"x", mrtd=MRTD)
    with pytest.raises(UntrustedRoot):  # Intel's root only
        verify_tdx_quote(q, sim.collateral(), now=SIM_NOW)
    with pytest.raises(UntrustedRoot):  # another dev root
        verify_tdx_quote(q, sim.collateral(), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)
    with pytest.raises(CertificateRevoked):
        verify_tdx_quote(q, sim.collateral(revoke_pck=True), now=SIM_NOW, root_ca_der=sim.root_ca_der)
    with pytest.raises(CertificateExpired):
        verify_tdx_quote(q, sim.collateral(), now=datetime(2037, 1, 1, tzinfo=UTC),
                         root_ca_der=sim.root_ca_der)
    with pytest.raises(CollateralError):  # SGX TCB Info for a TD quote
        verify_tdx_quote(q, sim_sgx.collateral(), now=SIM_NOW, root_ca_der=sim.root_ca_der)
    with pytest.raises(DebugEnclave):
        verify_tdx_quote(sim.quote(b"x", debug=True), sim.collateral(), now=SIM_NOW,
                         root_ca_der=sim.root_ca_der)
    with pytest.raises(VerificationError, match="SEPT_VE_DISABLE"):
        verify_tdx_quote(sim.quote(b"x", td_attributes=0), sim.collateral(), now=SIM_NOW,
                         root_ca_der=sim.root_ca_der)
    bad = bytearray(q)
    bad[48 + 136] ^= 1  # a byte of MRTD
    with pytest.raises(SignatureInvalid):
        verify_tdx_quote(bytes(bad), sim.collateral(), now=SIM_NOW, root_ca_der=sim.root_ca_der)


def test_cli_simulated_tdx_needs_trust_and_says_simulated(sim: SimulatedTdx, tmp_path: Path) -> None:
    f = tmp_path / "quote.dat"
    f.write_bytes(sim.quote(b"x", mrtd=MRTD, version=5))
    coll = tmp_path / "c.json"
    coll.write_text(json.dumps(sim.collateral()))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "root-whatever.cer").write_bytes(sim.root_ca_der)
    base = ["verify", str(f), "--collateral", str(coll), "--certs", str(certs), "--now", "2026-06-01"]
    res = runner.invoke(app, base)
    assert res.exit_code == 4 and "--trust-simulated" in res.output
    exp = tmp_path / "e.yaml"
    exp.write_text(f"cvm:\n  tee: simulated-tdx\n  mrtd: '{MRTD.hex()}'\n")
    res = runner.invoke(app, [*base, "--trust-simulated", "--expect", str(exp)])
    assert res.exit_code == 0, res.output
    assert "[SIMULATED] kind: tdx" in res.output and "SIMULATED: development root" in res.output


# -- CCEL ----------------------------------------------------------------------------------

EVENTS = [
    (0, 0x80000008, b"firmware volume (MRTD, not replayed into an RTMR)"),
    (1, 0x80000001, b"TD HOB"),
    (1, EV_NO_ACTION, b"not measured"),
    (2, 0x0000000D, b"EV_IPL: kernel"),
    (2, 0x0000000D, b"EV_IPL: console=ttyS0 root=/dev/vda1"),
    (3, 0x0000000D, b"EV_IPL: initrd"),
]


def _expected() -> list[bytes]:
    rt = [bytes(48)] * 4
    for idx, etype, data in EVENTS:
        if etype == EV_NO_ACTION or not 1 <= idx <= 4:
            continue
        rt[idx - 1] = hashlib.sha384(rt[idx - 1] + hashlib.sha384(data).digest()).digest()
    return rt


def test_ccel_replay_matches_the_quote(sim: SimulatedTdx) -> None:
    log = build_ccel(EVENTS) + b"\xff" * 64  # firmware pads the table
    rtmrs = replay_rtmrs(parse_ccel(log))
    assert list(rtmrs) == _expected() and rtmrs[3] == bytes(48)
    r = verify_tdx_quote(sim.quote(b"x", rtmrs=rtmrs), sim.collateral(), now=SIM_NOW,
                         root_ca_der=sim.root_ca_der)
    events = check_rtmrs(log, [r.rtmr0, r.rtmr1, r.rtmr2, r.rtmr3])
    assert [e.data for e in events if e.rtmr == 1][1].endswith(b"root=/dev/vda1")


def test_ccel_that_is_not_the_measured_one_fails() -> None:
    log = build_ccel(EVENTS)
    reported = [x.hex() for x in _expected()]
    forged = build_ccel([*EVENTS[:4], (2, 0x0D, b"EV_IPL: console=ttyS0 init=/bin/sh"), EVENTS[5]])
    with pytest.raises(BindingError, match="RTMR1"):
        check_rtmrs(forged, reported)
    with pytest.raises(BindingError, match="RTMR2"):
        check_rtmrs(build_ccel(EVENTS[:5]), reported)  # an event left out
    for cut in (10, 40, len(log) - 3):
        with pytest.raises(ParseError):
            check_rtmrs(log[:cut] + b"\x01", reported)


def test_guest_bundle_makes_quotes_without_ca_keys(sim: SimulatedTdx, tmp_path: Path) -> None:
    """What the integrator wires into a local TD: the guest signs its own quotes, binding
    the host key through REPORTDATA and the instance through MRCONFIGID."""
    from duet.attestation.binding import cvm_report_data, tdx_mrconfigid
    from duet.attestation.simulated import simulated_tdx_quote_from_dir

    path = sim.write_guest_bundle(tmp_path)
    held = json.loads(path.read_text())
    assert "pck_ca_key" not in held and "root_key" not in held
    host_data = hashlib.sha256(b"per-CVM value").digest()
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    rd = cvm_report_data(b"nonce", host_key)
    q = simulated_tdx_quote_from_dir(tmp_path, rd, mrtd=MRTD, mrconfigid=tdx_mrconfigid(host_data),
                                     version=5)
    r = verify_tdx_quote(q, sim.collateral(), now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert r.report_data == rd and r.mrconfigid == (host_data + bytes(16)).hex() and r.simulated
    with pytest.raises(FileNotFoundError):
        simulated_tdx_quote_from_dir(tmp_path / "nothing", rd)
