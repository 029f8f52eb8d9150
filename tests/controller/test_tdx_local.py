"""TDX end to end on a local CVM: a SIMULATED TD quote (real DCAP v4 format with its full
collateral under a development root) carries the host-key binding in REPORTDATA and the
per-CVM value in MRCONFIGID; the controller and the user verify it through the same
registry entry, and expectations on MRTD and the TEE kind are judged from the evidence."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path

import yaml

from duet.attestation.binding import tdx_mrconfigid
from duet.attestation.simulated.tdx import SIMULATED_CMDLINE
from duet.client.expectations import load_expectations
from duet.client.verify import fetch_leaves, verify
from duet.cvm.local import LOCAL_MEASUREMENT
from duet.ledger import entries
from helpers import ControllerProc


def _expect(tmp: Path, cvm: dict[str, object]) -> Path:
    path = tmp / f"expect-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"controller": {"tee": "sgx"}, "cvm": cvm,
                                    "history": {"allowed_commands": ["^echo [a-z]+$"]}}))
    return path


def test_a_simulated_tdx_cvm_lives_and_verifies(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    view = owner.create("local", name="td", tee="simulated-tdx")
    cvm = view["id"]
    assert view["simulated"] is True
    owner.run(cvm, "echo hello")
    owner.mode(cvm, "in-service")
    with controller.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        log = [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]
    genesis = log[0]
    evidence = [e for e in log if e["type"] == "evidence"]
    assert genesis["evidence_kind"] == "simulated-tdx" and genesis["instance_binding"] == "mrconfigid"
    assert [e["kind"] for e in evidence] == ["simulated-tdx", "simulated-tdx"]
    quote = base64.b64decode(str(evidence[-1]["evidence"]))
    assert tdx_mrconfigid(bytes.fromhex(str(genesis["host_data"]))) in quote  # the instance, set at launch

    # The TD's event log (SIMULATED) travels beside each quote and replays to its RTMRs.
    assert all(e["collateral"].get("ccel") for e in evidence)
    kernel = hashlib.sha384(b"SIMULATED kernel image " + LOCAL_MEASUREMENT.hex().encode()).hexdigest()
    good = _expect(tmp_path, {"tee": "simulated-tdx", "mrtd": LOCAL_MEASUREMENT.hex(), "mode": "in-service",
                              "max_evidence_age": "1h", "require_event_log": True, "kernel_digest": kernel,
                              "kernel_cmdline": SIMULATED_CMDLINE})
    with controller.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "u", expect=load_expectations(good))
    checks = {c.name: c for c in report.checks}
    assert report.ok, {n: c.detail for n, c in checks.items() if not c.ok}
    assert "SIMULATED TDX" in checks["evidence"].detail and checks["evidence"].simulated
    assert "event log replays to its RTMRs (3 events" in checks["evidence"].detail
    assert repr(SIMULATED_CMDLINE) in checks["evidence"].detail

    # The verdict rests on the evidence: another MRTD, or the SNP kind, fails and says so.
    for cvm_exp, failing in (({"tee": "simulated-snp"}, "cvm_tee"),
                             ({"tee": "simulated-tdx", "mrtd": "00" * 48}, "cvm_claims"),
                             ({"kernel_digest": "00" * 48}, "cvm_claims"),
                             ({"kernel_cmdline": SIMULATED_CMDLINE + " init=/bin/sh"}, "cvm_claims")):
        with controller.http() as http:
            bad, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "u",
                            expect=load_expectations(_expect(tmp_path, cvm_exp)))
        assert not {c.name: c for c in bad.checks}[failing].ok, failing


def test_simulated_tdx_evidence_for_another_instance_or_root_is_refused(tmp_path: Path) -> None:
    """The registry entry both sides run: a TD quote whose MRCONFIGID names another CVM
    fails the instance binding; a quote under another development root than the one the
    controller trusts fails; without --trust-simulated nothing simulated passes."""
    from datetime import UTC, datetime

    import pytest

    from duet.attestation import cvm_kinds
    from duet.attestation.binding import cvm_report_data
    from duet.attestation.errors import AttestationError
    from duet.attestation.simulated.tdx import SimulatedTdx

    tdx, other = SimulatedTdx.load_or_create(tmp_path / "a"), SimulatedTdx.load_or_create(tmp_path / "b")
    host_key = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()
    nonce, mine, theirs = bytes(32), "11" * 32, "22" * 32
    now = datetime(2027, 1, 1, tzinfo=UTC)

    def entry(platform: SimulatedTdx, host_data: str) -> dict[str, object]:
        quote = platform.quote(cvm_report_data(nonce, host_key), mrtd=LOCAL_MEASUREMENT,
                               mrconfigid=tdx_mrconfigid(bytes.fromhex(host_data)))
        return {"kind": "simulated-tdx", "nonce": nonce.hex(), "evidence": base64.b64encode(quote).decode(),
                "collateral": {**platform.collateral(), "root_ca": base64.b64encode(platform.root_ca_der).decode()}}

    def check(e: dict[str, object], trust: cvm_kinds.Trust) -> object:
        return cvm_kinds.verify_evidence(e, host_key=host_key, now=now, trust=trust, binding="mrconfigid",
                                         host_data=mine)

    controller_trust = cvm_kinds.Trust(simulated=True, tdx_roots=(tdx.root_ca_der,))
    assert check(entry(tdx, mine), controller_trust)
    with pytest.raises(AttestationError, match="mrconfigid"):
        check(entry(tdx, theirs), controller_trust)  # evidence of another instance
    with pytest.raises(AttestationError, match="development root"):
        check(entry(other, mine), controller_trust)  # another platform's root
    with pytest.raises(AttestationError):
        check(entry(tdx, mine), cvm_kinds.Trust(simulated=False))  # simulated needs --trust-simulated


def test_an_event_log_that_does_not_replay_fails_the_evidence(tmp_path: Path) -> None:
    """Both sides run the registry entry: the CCEL beside a TD quote must replay to the
    quote's RTMRs, or the evidence fails (fail closed); the named events come only from a
    log that replays, and a command line whose digest is not its hash is not believed."""
    from datetime import UTC, datetime

    import pytest

    from duet.attestation import cvm_kinds
    from duet.attestation.binding import cvm_report_data
    from duet.attestation.ccel import EV_IPL, build_ccel, parse_ccel, replay_rtmrs
    from duet.attestation.errors import BindingError
    from duet.attestation.simulated.tdx import SimulatedTdx, simulated_boot_log
    from duet.attestation.validate import Expectations, validate

    tdx = SimulatedTdx.load_or_create(tmp_path / "a")
    host_key = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()
    nonce = bytes(32)
    ccel, rtmrs = simulated_boot_log(LOCAL_MEASUREMENT)

    def entry(log: bytes | None, quoted: tuple[bytes, ...] = rtmrs) -> dict[str, object]:
        r0, r1, r2, r3 = quoted
        quote = tdx.quote(cvm_report_data(nonce, host_key), mrtd=LOCAL_MEASUREMENT, rtmrs=(r0, r1, r2, r3))
        collateral: dict[str, object] = {**tdx.collateral(), "root_ca": base64.b64encode(tdx.root_ca_der).decode()}
        if log is not None:
            collateral["ccel"] = base64.b64encode(log).decode()
        return {"kind": "simulated-tdx", "nonce": nonce.hex(), "evidence": base64.b64encode(quote).decode(),
                "collateral": collateral}

    def check(e: dict[str, object]) -> object:
        return cvm_kinds.verify_evidence(e, host_key=host_key, now=datetime(2027, 1, 1, tzinfo=UTC),
                                         trust=cvm_kinds.Trust(simulated=True, tdx_roots=(tdx.root_ca_der,)),
                                         binding="none").report

    report = check(entry(ccel))
    log = report.event_log  # type: ignore[attr-defined]
    assert log["events"] == 3 and log["cmdline"] == {"rtmr": 2, "digest": log["cmdline"]["digest"],
                                                     "text": SIMULATED_CMDLINE, "measured": True}
    assert validate(report, Expectations(require_event_log=True, kernel_cmdline=SIMULATED_CMDLINE)) == []
    boot = [(1, 6, b"SIMULATED TD firmware configuration"),
            (2, 0x80000003, b"SIMULATED kernel image " + LOCAL_MEASUREMENT.hex().encode()),
            (3, EV_IPL, b"kernel_cmdline: " + SIMULATED_CMDLINE.encode())]
    assert build_ccel(boot) == ccel
    # A log of another command line than the one measured: the replay fails.
    forged = build_ccel([*boot[:2], (3, EV_IPL, b"kernel_cmdline: " + SIMULATED_CMDLINE.encode() + b" init=/bin/sh")])
    with pytest.raises(BindingError, match="RTMR2"):
        check(entry(forged))
    # An event appended, an event left out, or a log of another boot: fails.
    with pytest.raises(BindingError, match="RTMR3"):
        check(entry(build_ccel([*boot, (4, 6, b"later")])))
    with pytest.raises(BindingError, match="RTMR1"):
        check(entry(build_ccel([boot[0], boot[2]])))
    with pytest.raises(BindingError):
        check(entry(simulated_boot_log(bytes(48))[0]))
    # No log at all: the evidence verifies, but an expectation of one fails.
    bare = check(entry(None))
    assert [f.field for f in validate(bare, Expectations(require_event_log=True))] == ["event_log"]
    assert [f.field for f in validate(bare, Expectations(kernel_cmdline=SIMULATED_CMDLINE))] == ["event_log"]
    # Text whose digest is not its hash (the replay binds digests only) is not believed.
    events = parse_ccel(ccel)
    lying = ccel.replace(b"kernel_cmdline: " + SIMULATED_CMDLINE.encode(),
                         b"kernel_cmdline: " + SIMULATED_CMDLINE.replace("ttyS0", "ttyS9").encode())
    assert replay_rtmrs(parse_ccel(lying)) == replay_rtmrs(events)  # digests unchanged: it replays
    fooled = check(entry(lying))
    assert [f.field for f in validate(fooled, Expectations(
        kernel_cmdline=SIMULATED_CMDLINE.replace("ttyS0", "ttyS9")))] == ["event_log.cmdline"]


def test_expect_init_pins_the_replayed_event_log() -> None:
    """`duet expect init` pins what the newest evidence's replayed event log names, so the
    next boot with another kernel or command line fails `cvm_claims`."""
    from types import SimpleNamespace

    from duet.cli.expect_init import build

    log = {"events": 3, "kernel": {"rtmr": 1, "digest": "ab" * 48},
           "cmdline": {"rtmr": 2, "digest": "cd" * 48, "text": SIMULATED_CMDLINE, "measured": True}}
    report = SimpleNamespace(state=SimpleNamespace(evidence_kind="simulated-tdx", mode="in-update"), checks=[],
                             controller={}, owner_keys=[])
    evidence = SimpleNamespace(mrtd=LOCAL_MEASUREMENT.hex(), event_log=log)
    doc, _ = build(report, [{"type": "genesis"}], evidence)
    assert doc["cvm"]["require_event_log"] is True
    assert doc["cvm"]["kernel_digest"] == "ab" * 48 and doc["cvm"]["kernel_cmdline"] == SIMULATED_CMDLINE
    log["cmdline"]["measured"] = False  # text the replay does not bind is not pinned
    doc, _ = build(report, [{"type": "genesis"}], evidence)
    assert "kernel_cmdline" not in doc["cvm"]
