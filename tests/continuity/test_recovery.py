"""A microcode update, end to end with real controller processes and CVMs (issue 17, test 2).

Two CVMs under build A; the owner approves A and turns recovery on (2 of 3 holders, by the
CLI). The platform's CPUSVN changes: a restart cannot open the local seal. Restarted with
`--recover`, the controller waits for shares; one holder is not enough, a second one is.
The controller then logs `recovered`, replaces K (`state_key_rotated`, reason
`tcb_recovery`, both CPUSVNs), rotates every CVM's SSH key, and runs a command on every
CVM. The old K opens nothing of the new state; each CVM's old key opens no CVM. `duet
verify` passes for a user who accepts A and a threshold of 2, and fails for a user who
expects `controller.recovery: none`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from continuity_helpers import controller_in, old_secrets
from continuity_helpers import log_entries as _entries
from continuity_helpers import try_login as _try_login

from duet.client.expectations import UserExpectations
from duet.client.verify import verify
from duet.controller.statekey import StateKey
from duet.ledger import keys

pytestmark = pytest.mark.slow

A = "aa" * 32


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "duet.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def _wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_microcode_update_recovered_from_shares(tmp_path: Path, cvm_root: Path) -> None:
    owner_key = keys.Ed25519PrivateKey.generate()
    ctl = controller_in(tmp_path, "ctl", owner_key)
    key_file = tmp_path / "owner.key"
    key_file.write_bytes(keys.private_pem(owner_key))
    own = ["--key", str(key_file), "--trust-simulated", "--state-dir", str(tmp_path / "owner-state")]
    try:
        ctl.start("--cvm-root", str(cvm_root), "--simulated-mrenclave", A)
        owner = ctl.owner()
        cvms = [owner.create("local", name=f"db{i}")["id"] for i in range(2)]
        for cvm in cvms:
            assert owner.run(cvm, "echo before > mark", timeout_s=30)["exit_status"] == 0
        views = {v["id"]: v for v in owner.http.get_json("/v1/cvms")["cvms"]}

        # Three holders make their keys; the owner approves A and turns recovery on.
        holders = []
        for i in range(3):
            res = _cli("controller", "recovery", "keygen", "--out", str(tmp_path / f"holder{i}.key"))
            assert res.returncode == 0, res.stderr
            holders.append(tmp_path / f"holder{i}.key")
        assert _cli("controller", "approve", "--controller", ctl.url, *own, "--mrenclave", A).returncode == 0
        res = _cli("controller", "recovery", "set", "--controller", ctl.url, *own, "--threshold", "2",
                   *[a for h in holders for a in ("--holder", f"{h}.pub")], "--out", str(tmp_path / "shares"))
        assert res.returncode == 0, res.stderr
        assert "2 of 3 holders" in res.stdout
        shown = _cli("controller", "recovery", "show", "--controller", ctl.url, "--trust-simulated")
        assert shown.returncode == 0 and "2 of 3 holders" in shown.stdout, shown.stderr
        # The owner can fetch the shares again; nobody else can.
        again = _cli("controller", "recovery", "shares", "--controller", ctl.url, *own, "--out",
                     str(tmp_path / "shares2"))
        assert again.returncode == 0, again.stderr
        assert {p.name for p in (tmp_path / "shares2").iterdir()} == {"share-1.json", "share-2.json", "share-3.json"}
        with ctl.http() as http:
            with pytest.raises(Exception) as info:
                http.get_json("/v1/controller/recovery/shares")
            assert getattr(info.value, "code", None) == "invalid_request"
        old_k, old_keys = old_secrets(ctl.data, A, cvms, tmp_path / "copy")

        # The microcode update: the same build at CPUSVN 2 cannot open the seal.
        ctl.kill()
        plain = _cli("controller", "serve", "--data", str(ctl.data), "--listen", f"127.0.0.1:{ctl.port}",
                     "--simulated-mrenclave", A, "--simulated-cpusvn", "2", "--cvm-root", str(cvm_root))
        assert plain.returncode == 1 and "error [seal_unreadable]" in plain.stderr, plain.stderr

        # With --recover it waits for shares instead.
        ctl.start("--cvm-root", str(cvm_root), "--simulated-mrenclave", A, "--simulated-cpusvn", "2", "--recover")
        with ctl.http() as http:
            assert http.get_json("/v1/controller")["recovering"] is True
            session = http.get_json("/v1/controller/recovery/session")
        assert session["threshold"] == 2 and session["received"] == []
        assert "RECOVERY" in ctl.log() and "CPUSVN 1" in ctl.log()

        def hand(i: int) -> subprocess.CompletedProcess[str]:
            return _cli("controller", "recover", "--controller", ctl.url, "--share",
                        str(tmp_path / "shares" / f"share-{i + 1}.json"), "--holder-key", str(holders[i]),
                        "--trust-simulated")

        # Without --trust-simulated the holder refuses a SIMULATED enclave; a holder with
        # another holder's key cannot open the share.
        refused = _cli("controller", "recover", "--controller", ctl.url, "--share",
                       str(tmp_path / "shares" / "share-1.json"), "--holder-key", str(holders[0]))
        assert refused.returncode != 0 and "recovery_refused" in refused.stderr, refused.stderr
        wrong = _cli("controller", "recover", "--controller", ctl.url, "--share",
                     str(tmp_path / "shares" / "share-1.json"), "--holder-key", str(holders[1]), "--trust-simulated")
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr, wrong.stderr
        one = hand(0)
        assert one.returncode == 0 and "1 more share(s) needed" in one.stdout, one.stderr
        with ctl.http() as http:
            assert http.get_json("/v1/controller")["recovering"] is True  # one share: nothing yet
        started = time.monotonic()
        two = hand(2)
        assert two.returncode == 0 and "rebuilt its state key" in two.stdout, two.stderr

        # The controller goes on serving as itself, on the same address.
        def serving() -> bool:
            with ctl.http(timeout=2) as http:
                return "recovering" not in http.get_json("/v1/controller") and \
                    http.get_json("/readyz").get("status") == "ready"
        _wait_for(serving, "the recovered controller")
        recovery_s = time.monotonic() - started
        owner = ctl.owner()
        log = _entries(ctl, "/v1/controller/log/entries")
        rec = next(i for i, e in enumerate(log) if e["type"] == "recovered")
        rot = log[rec + 1]
        assert log[rec]["mrenclave"] == A and len(log[rec]["holders"]) == 2  # type: ignore[arg-type]
        assert rot["type"] == "state_key_rotated" and rot["reason"] == "tcb_recovery"
        assert (rot["from_cpusvn"], rot["to_cpusvn"]) == (1, 2)

        # Every CVM key was rotated after the recovery; the old keys open nothing.
        for cvm in cvms:
            rotated = [e for e in _entries(ctl, f"/v1/cvms/{cvm}/entries") if e["type"] == "key_rotated"]
            assert len(rotated) == 1 and rotated[0]["reason"] == "recovery"
            assert int(rotated[0]["controller_log_size"]) > rec + 1  # type: ignore[call-overload]
            assert asyncio.run(_try_login(views[cvm], old_keys[cvm])).startswith("refused")
        # And a command runs on every CVM.
        for cvm in cvms:
            res_cmd = owner.run(cvm, "cat mark; echo after", timeout_s=30)
            assert res_cmd["exit_status"] == 0 and base64.b64decode(res_cmd["stdout"]) == b"before\nafter\n"

        # The old K opens nothing of the state the controller now keeps.
        _, _ = ctl.kill(), None
        db = sqlite3.connect(ctl.data / "state.sqlite")
        blob = db.execute("SELECT v FROM meta WHERE k='controller_key'").fetchone()[0]
        db.close()
        with pytest.raises(Exception):
            StateKey(old_k).decrypt("controller-key", blob)
        # A restart at CPUSVN 2 opens the new seal on its own; nothing is rotated again.
        ctl.start("--cvm-root", str(cvm_root), "--simulated-mrenclave", A, "--simulated-cpusvn", "2", "--recover")
        assert ctl.owner().run(cvms[0], "true", timeout_s=30)["exit_status"] == 0
        assert sum(e["type"] == "state_key_rotated" for e in _entries(ctl, "/v1/controller/log/entries")) == 1

        # The user's view: the build history is A (recovered by A); a threshold of 2 is
        # fine; `controller.recovery: none` fails.
        good = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}],
                                                               "recovery": {"min_threshold": 2}}})
        with ctl.http() as http:
            report, _ = verify(http, cvms[0], trust_simulated=True, state_dir=tmp_path / "user", expect=good)
            assert report.ok, [c for c in report.checks if not c.ok]
        (tmp_path / "none.yaml").write_text("controller:\n  recovery: none\n")
        cli = _cli("verify", cvms[1], "--controller", ctl.url, "--trust-simulated", "--state-dir",
                   str(tmp_path / "user2"), "--expect", str(tmp_path / "none.yaml"))
        assert cli.returncode != 0 and "controller_recovery" in cli.stdout + cli.stderr
        print(json.dumps({"recovery_s_after_last_share": round(recovery_s, 2)}))
    finally:
        ctl.kill()
