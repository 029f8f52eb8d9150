"""`duet attestation verify --expect` reads the same `cvm.snp_arks` as `duet verify`: an
`snp` report under a development ARK fails as untrusted without the pin, verifies with it
(and says SIMULATED), and fails with another ARK pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from duet.attestation.simulated import SimulatedSnp
from duet.cli.attestation_cmd import EXIT_FAILED, EXIT_OK, app

runner = CliRunner()


def _run(*args: str) -> tuple[int, dict[str, object]]:
    res = runner.invoke(app, ["verify", *args, "--json"])
    return res.exit_code, json.loads(res.output)


def test_snp_arks_in_the_expectations(sim_snp: SimulatedSnp, tmp_path: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    other = SimulatedSnp.load_or_create(tmp_path_factory.mktemp("other-snp"))
    report = tmp_path / "report.bin"
    report.write_bytes(sim_snp.report(b"x", measurement=bytes(48)))
    (tmp_path / "dev-ark.pem").write_bytes(sim_snp.ark_pem)
    (tmp_path / "other-ark.pem").write_bytes(other.ark_pem)
    base = [str(report), "--kind", "snp", "--certs", str(sim_snp.directory), "--now", "2026-06-01"]

    (tmp_path / "none.yaml").write_text("cvm: {measurement: '" + "00" * 48 + "'}\n")
    code, out = _run(*base, "--expect", str(tmp_path / "none.yaml"))
    assert code == EXIT_FAILED and out["error"]["code"] == "untrusted_root", out  # type: ignore[index]

    (tmp_path / "dev.yaml").write_text("cvm:\n  measurement: '" + "00" * 48 + "'\n  snp_arks: [dev-ark.pem]\n")
    code, out = _run(*base, "--expect", str(tmp_path / "dev.yaml"))
    assert code == EXIT_OK and out["verdict"] == "verified" and out["simulated"] is True, out
    assert any("SIMULATED" in c and "cvm.snp_arks" in c for c in out["caveats"]), out  # type: ignore[union-attr]

    (tmp_path / "other.yaml").write_text("cvm:\n  snp_arks: [other-ark.pem]\n")
    code, out = _run(*base, "--expect", str(tmp_path / "other.yaml"))
    assert code == EXIT_FAILED and out["error"]["code"] == "untrusted_root", out  # type: ignore[index]
