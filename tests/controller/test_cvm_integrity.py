"""The CVM's side: evidence bound to the pinned host key, lockdown, expectations,
offline bundles (docs/invariants.md, invariants 2 and 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from duet.client.bundle import BundleSource
from duet.client.expectations import load_expectations
from duet.client.http import ClientError
from duet.client.verify import fetch_leaves, verify
from duet.cvm.local import LOCAL_MEASUREMENT
from duet.ledger import entries
from helpers import ControllerProc


def _log(c: ControllerProc, cvm: str) -> list[dict[str, object]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _expect(tmp: Path, **overrides: object) -> Path:
    doc: dict[str, object] = {
        "controller": {"tee": "sgx"},
        "cvm": {
            "tee": "simulated-snp",
            "measurement": LOCAL_MEASUREMENT.hex(),
            "max_evidence_age": "1h",
            "mode": "in-service",
            "no_debug": True,
        },
        "history": {"allowed_commands": [r"^echo [a-z0-9 ]+$", r"^apt-get install -y [a-z0-9.+-]+$"]},
        "lockdown": ["password_auth_off", "root_login_off", "only_controller_key", "passwords_locked",
                     "agents_disabled", "serial_console_off"],
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            doc[section][field] = value  # type: ignore[index]
        else:
            doc[section] = value
    path = tmp / f"expect-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _report(c: ControllerProc, cvm: str, tmp: Path, expect: Path):  # type: ignore[no-untyped-def]
    with c.http() as http:
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp / "user", expect=load_expectations(expect))
    return report


def _failed(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.detail for c in report.checks if not c.ok}


@pytest.fixture
def lived(controller: ControllerProc) -> str:
    """A CVM's life: commands in-update, in-service, back to in-update, in-service."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo setting up")
    owner.mode(cvm, "in-service")
    owner.mode(cvm, "in-update")
    owner.run(cvm, "echo second update")
    owner.mode(cvm, "in-service")
    return cvm


def test_life_verifies_against_expectations(controller: ControllerProc, lived: str, tmp_path: Path) -> None:
    report = _report(controller, lived, tmp_path, _expect(tmp_path))
    assert report.ok, _failed(report)
    names = {c.name for c in report.checks}
    assert {"evidence", "evidence_age", "cvm_claims", "mode", "history", "lockdown", "cvm_tee"} <= names
    assert report.state.epoch == 2
    log = _log(controller, lived)
    purposes = [e.get("purpose") for e in log if e["type"] == "evidence"]
    assert purposes == ["provisioning", "in-service", "in-service"]


@pytest.mark.parametrize(
    "override,check",
    [
        ({"cvm.measurement": "00" * 48}, "cvm_claims"),
        ({"cvm.host_data": "11" * 32}, "cvm_claims"),
        ({"history": {"allowed_commands": [r"^apt-get install -y [a-z0-9.+-]+$"]}}, "history"),
        ({"cvm.max_evidence_age": "0s"}, "evidence_age"),
        ({"cvm.mode": "in-update"}, "mode"),
        ({"cvm.tee": "tdx"}, "cvm_tee"),
        ({"controller": {"tee": "sgx", "mrenclave": "00" * 32}}, "controller_quote"),
    ],
)
def test_one_changed_expectation_fails_and_is_named(
    controller: ControllerProc, lived: str, tmp_path: Path, override: dict[str, object], check: str
) -> None:
    report = _report(controller, lived, tmp_path, _expect(tmp_path, **override))
    failed = _failed(report)
    assert not report.ok
    assert check in failed, failed


def test_cli_verify_expect_exit_codes(controller: ControllerProc, lived: str, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "duet.cli.main", "verify", lived, "--controller", controller.url,
            "--trust-simulated", "--state-dir", str(tmp_path / "cli-state")]
    good = subprocess.run([*base, "--expect", str(_expect(tmp_path))], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "VERIFIED" in good.stdout and "SIMULATED" in good.stdout
    bad = subprocess.run([*base, "--expect", str(_expect(tmp_path, **{"cvm.measurement": "ab" * 48}))],
                         capture_output=True, text=True)
    assert bad.returncode == 3
    assert "FAIL  cvm_claims" in bad.stdout and "measurement" in bad.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("cvm: {measurment: 12}\n")
    typo = subprocess.run([*base, "--expect", str(broken)], capture_output=True, text=True)
    assert typo.returncode == 1 and "invalid_expectations" in typo.stderr
    assert "Traceback" not in typo.stderr


def test_without_trust_simulated_nothing_passes(controller: ControllerProc, lived: str, tmp_path: Path) -> None:
    with controller.http() as http:
        report, _ = verify(http, lived, trust_simulated=False, state_dir=tmp_path)
    assert not report.ok
    assert "SIMULATED" in _failed(report)["controller_quote"]


def _swap_host_key(c: ControllerProc, cvm: str) -> None:
    """An impostor takes over the CVM's address: same port, another host key."""
    d = c.data / "cvms" / cvm
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (d / name).unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh_host_ed25519_key")], check=True)
    pid = int((d / "sshd.pid").read_text())
    subprocess.run(["kill", str(pid)], check=True)


def test_impostor_after_provisioning_is_refused(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    _swap_host_key(controller, cvm)
    controller.kill()
    controller.start()  # restarts the CVM's sshd (now with the impostor's key) on start-up
    marker = Path(f"/tmp/duet-mitm-{uuid.uuid4().hex}")
    with pytest.raises(ClientError) as info:
        owner.run(cvm, f"touch {marker}")
    assert info.value.code == "host_key_mismatch"
    assert not marker.exists()
    log = _log(controller, cvm)
    assert any(e["type"] == "error" and e["code"] == "host_key_mismatch" for e in log)
    with pytest.raises(ClientError) as again:
        owner.run(cvm, f"touch {marker}")
    assert again.value.code == "cvm_not_ready"
    assert not marker.exists()


def test_loosened_sshd_fails_lockdown_at_next_in_service(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    cfg = controller.data / "cvms" / cvm / "sshd_config"
    cfg.write_text(cfg.read_text().replace("PasswordAuthentication no", "PasswordAuthentication yes"))
    akf = Path("/var/lib/duet-cvm-homes") / f"{cvm}.platform" / "authorized_keys"
    with akf.open("a") as f:
        f.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJmUZAXsk1TVXt0itPBTsHxxbL7Ecx+6WvJSzGQJGquK intruder\n")
    with pytest.raises(ClientError) as info:
        owner.mode(cvm, "in-service")
    assert info.value.code == "lockdown_failed"
    assert "password_auth_off" in info.value.message and "only_controller_key" in info.value.message
    with controller.http() as http:
        assert http.get_json(f"/v1/cvms/{cvm}")["mode"] == "in-update"
    report = _report(controller, cvm, tmp_path, _expect(tmp_path))
    failed = _failed(report)
    assert "password_auth_off failed" in failed["lockdown"] and "only_controller_key failed" in failed["lockdown"]
    assert "mode" in failed


def test_offline_bundle_verifies_and_any_change_fails(controller: ControllerProc, lived: str, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    out = subprocess.run([sys.executable, "-m", "duet.cli.main", "state", "export", lived, "--out", str(bundle),
                          "--controller", controller.url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    controller.kill()  # no network from here on: the controller is gone
    expect = load_expectations(_expect(tmp_path))

    def check(path: Path) -> bool:
        try:
            report, _ = verify(BundleSource.load(path), lived, trust_simulated=True,
                               state_dir=tmp_path / f"s-{uuid.uuid4().hex}", expect=expect)
        except ClientError:
            return False
        return report.ok

    assert check(bundle)
    raw = bundle.read_bytes()
    baseline = _semantics(raw)
    rng = __import__("random").Random(7)
    positions = sorted(rng.sample(range(len(raw)), 60))
    undetected = []
    for pos in positions:
        mutated = bytearray(raw)
        mutated[pos] ^= 0x01
        path = tmp_path / "mutated.json"
        path.write_bytes(bytes(mutated))
        if check(path):
            # Only acceptable if the flip did not change any value (e.g. unused base64 bits).
            if _semantics(bytes(mutated)) != baseline:
                undetected.append(pos)
    context = [raw[max(0, p - 120):p + 40] for p in undetected]
    assert not undetected, f"byte changes at {undetected} went unnoticed: {context}"


def _semantics(raw: bytes) -> object:
    """The bundle's content with encodings undone, to tell a real change from a no-op."""
    import base64

    try:
        data = json.loads(raw)
        data["entries"] = [base64.b64decode(e) for e in data["entries"]]
        return data
    except Exception:
        return None


def test_watch_stops_on_rollback(controller: ControllerProc, tmp_path: Path) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    for i in range(3):
        owner.run(cvm, f"echo {i}")
    state = tmp_path / "watch-state"
    cmd = [sys.executable, "-m", "duet.cli.main", "watch", cvm, "--controller", controller.url, "--trust-simulated",
           "--state-dir", str(state), "--interval", "0.1", "--max-checks", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    controller.kill()
    from test_attacks import _rewrite_log

    _rewrite_log(controller.data, cvm, lambda leaves: leaves[:-3])
    controller.start()
    hook_out = tmp_path / "violation.txt"
    second = subprocess.run([*cmd, "--on-violation", f"echo \"$DUET_VIOLATION\" > {hook_out}"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 3
    assert "rolled back" in second.stderr
    assert "rolled back" in hook_out.read_text()


def test_bad_bundle_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text("[]")
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", "--bundle", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "invalid_bundle" in r.stderr and "Traceback" not in r.stderr
    assert shutil.which("ssh-keygen")
