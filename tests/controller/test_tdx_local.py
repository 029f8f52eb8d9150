"""TDX end to end on a local CVM: a SIMULATED TD quote (real DCAP v4 format with its full
collateral under a development root) carries the host-key binding in REPORTDATA and the
per-CVM value in MRCONFIGID; the controller and the user verify it through the same
registry entry, and expectations on MRTD and the TEE kind are judged from the evidence."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import yaml

from duet.attestation.binding import tdx_mrconfigid
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

    good = _expect(tmp_path, {"tee": "simulated-tdx", "mrtd": LOCAL_MEASUREMENT.hex(), "mode": "in-service",
                              "max_evidence_age": "1h"})
    with controller.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "u", expect=load_expectations(good))
    checks = {c.name: c for c in report.checks}
    assert report.ok, {n: c.detail for n, c in checks.items() if not c.ok}
    assert "SIMULATED TDX" in checks["evidence"].detail and checks["evidence"].simulated

    # The verdict rests on the evidence: another MRTD, or the SNP kind, fails and says so.
    for cvm_exp, failing in (({"tee": "simulated-snp"}, "cvm_tee"),
                             ({"tee": "simulated-tdx", "mrtd": "00" * 48}, "cvm_claims")):
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
