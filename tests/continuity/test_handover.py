"""Upgrade by handover (docs/continuity.md), end to end with real controller processes.

Three CVMs under build A; the owner approves build B; an unapproved build B' asks to join
and gets nothing (logged); B joins, receives K with the state, rotates every CVM's SSH key
and drives every CVM; A accepts nothing more and its old key opens no CVM; the host of A is
then lost (process killed, data dir deleted) and B still drives every CVM. Each CVM log
stays consistent with the checkpoint a user verified under A, and `duet verify` shows the
build history and fails for a user whose expectations do not list B.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from continuity_helpers import controller_in as _controller
from continuity_helpers import log_entries as _entries
from continuity_helpers import old_secrets
from continuity_helpers import try_login as _try_login

from duet.client.expectations import UserExpectations
from duet.client.http import ClientError
from duet.client.verify import verify
from duet.cvm.ssh import import_private
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import open_checkpoint
from duet.ledger.note import Verifier
from helpers import free_port

pytestmark = pytest.mark.slow

A, B, B_PRIME = "aa" * 32, "bb" * 32, "cc" * 32


def test_upgrade_by_handover(tmp_path: Path, cvm_root: Path) -> None:
    owner_key = keys.Ed25519PrivateKey.generate()
    a = _controller(tmp_path, "a", owner_key)
    b = _controller(tmp_path, "b", owner_key)
    try:
        a.start("--cvm-root", str(cvm_root), "--simulated-mrenclave", A)
        owner_a = a.owner()
        cvms = [owner_a.create("local", name=f"web{i}")["id"] for i in range(3)]
        for cvm in cvms:
            assert owner_a.run(cvm, "echo under A > built-by", timeout_s=30)["exit_status"] == 0
        user_state = tmp_path / "user"
        seen = {}
        with a.http() as http:
            for cvm in cvms:
                report, _ = verify(http, cvm, trust_simulated=True, state_dir=user_state)
                assert report.ok, [c for c in report.checks if not c.ok]
                seen[cvm] = http.get_text(f"/v1/cvms/{cvm}/checkpoint")
        old_keys = {cvm: old_secrets(a.data, A, [cvm], tmp_path / 'copy')[1][cvm] for cvm in cvms}
        views = {v["id"]: v for v in owner_a.http.get_json("/v1/cvms")["cvms"]}
        assert all(asyncio.run(_try_login(views[c], old_keys[c])) == "in" for c in cvms)

        # The owner approves B with the CLI; a malformed measurement is refused before signing.
        key_file = tmp_path / "owner.key"
        key_file.write_bytes(keys.private_pem(owner_key))
        approve = [sys.executable, "-m", "duet.cli.main", "controller", "approve", "--controller", a.url,
                   "--key", str(key_file), "--trust-simulated", "--state-dir", str(tmp_path / "owner-state")]
        bad = subprocess.run([*approve, "--mrenclave", "xyz"], capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr
        ok = subprocess.run([*approve, "--mrenclave", B.upper()], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        approved = _entries(a, "/v1/controller/log/entries")
        assert approved[-2]["op"] == "controller.approve" and approved[-1] == {**approved[-1], "type": "build_approved",
                                                                              "mrenclave": B}

        # An unapproved build asks to join: refused, logged, nothing handed over.
        rogue = tmp_path / "rogue" / "data"
        res = subprocess.run(
            [sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(rogue),
             "--listen", f"127.0.0.1:{free_port()}", "--join", a.url, "--simulated-mrenclave", B_PRIME,
             "--cvm-root", str(cvm_root)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1 and "error [join_failed]" in res.stderr and "handover_refused" in res.stderr
        assert "Traceback" not in res.stderr
        assert not (rogue / "state.sqlite").exists() and not (rogue / "ledger.sqlite").exists()
        ctl_log = _entries(a, "/v1/controller/log/entries")
        assert ctl_log[-1]["type"] == "handover_refused" and ctl_log[-1]["mrenclave"] == B_PRIME
        assert not any(e["type"] == "handover" for e in ctl_log)
        assert owner_a.run(cvms[0], "true", timeout_s=30)["exit_status"] == 0  # A still in charge

        # B joins: same controller identity, the handover logged before B acts.
        b.start("--join", a.url, "--cvm-root", str(cvm_root), "--simulated-mrenclave", B)
        owner_b = b.owner()
        with a.http() as ha, b.http() as hb:
            assert hb.get_json("/v1/controller")["controller_id"] == ha.get_json("/v1/controller")["controller_id"]
            assert hb.get_json("/v1/controller")["measurement"]["mrenclave"] == B
        ctl_log = _entries(b, "/v1/controller/log/entries")
        handover = next(i for i, e in enumerate(ctl_log) if e["type"] == "handover")
        assert ctl_log[handover]["from_mrenclave"] == A and ctl_log[handover]["to_mrenclave"] == B

        # A is handed over: it accepts no intent.
        with pytest.raises(ClientError) as info:
            owner_a.run(cvms[0], "true", timeout_s=30)
        assert info.value.code == "handed_over"

        # Each CVM key was rotated by B before it acted; A's old key opens nothing.
        for cvm in cvms:
            log = _entries(b, f"/v1/cvms/{cvm}/entries")
            rotated = [e for e in log if e["type"] == "key_rotated"]
            assert len(rotated) == 1 and rotated[0]["controller_log_size"] > handover
            assert rotated[0]["previous_key_sha256"] == entries.sha256_hex(
                " ".join(import_private(old_keys[cvm]).export_public_key("openssh").decode().split()[:2]))
            outcome = asyncio.run(_try_login(views[cvm], old_keys[cvm]))
            assert outcome.startswith("refused"), outcome

        # A restarted on its old data dir still accepts nothing, and appends nothing to its
        # stale copy of the logs (which would fork them).
        a.kill()
        a.start("--cvm-root", str(cvm_root), "--simulated-mrenclave", A)
        with pytest.raises(ClientError) as info:
            a.owner().run(cvms[1], "true", timeout_s=30)
        assert info.value.code == "handed_over"
        for c in cvms:
            stale = _entries(a, f"/v1/cvms/{c}/entries")
            current = _entries(b, f"/v1/cvms/{c}/entries")
            # A's copy is a strict prefix of B's log (up to the handover): nothing of its own.
            assert len(stale) < len(current) and current[:len(stale)] == stale

        # The host of A is lost: its process and its data dir. B drives every CVM.
        a.kill()
        shutil.rmtree(a.data)
        for cvm in cvms:
            res_b = owner_b.run(cvm, "cat built-by; echo under B", timeout_s=30)
            assert res_b["exit_status"] == 0
            assert base64.b64decode(res_b["stdout"]) == b"under A\nunder B\n"
        # In-service under B: lockdown (only B's rotated key opens the CVM) and fresh
        # evidence from the simulated secure processor, which outlived A's host.
        assert owner_b.mode(cvms[0], "in-service")["mode"] == "in-service"

        # Every CVM log extends the checkpoint the user verified under A.
        with b.http() as hb:
            info_b = hb.get_json("/v1/controller")
            verifier = Verifier(f"duet/{info_b['controller_id']}", keys.public_from_b64(info_b["public_key"]))
            for cvm in cvms:
                old = open_checkpoint(seen[cvm], verifier, expected_origin=f"duet/{info_b['controller_id']}/{cvm}")
                new = open_checkpoint(hb.get_text(f"/v1/cvms/{cvm}/checkpoint"), verifier,
                                      expected_origin=f"duet/{info_b['controller_id']}/{cvm}")
                proof = hb.get_json(f"/v1/cvms/{cvm}/proofs/consistency", old=old.size, new=new.size)
                merkle.verify_consistency(old.size, new.size, [base64.b64decode(h) for h in proof["hashes"]],
                                          old.root_hash, new.root_hash)
            # The user's verify: the build history A → B; fails without B in the list.
            both = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}, {"mrenclave": B}]}})
            only_a = UserExpectations.model_validate({"controller": {"builds": [{"mrenclave": A}]}})
            report, _ = verify(hb, cvms[0], trust_simulated=True, state_dir=tmp_path / "user-b", expect=both)
            assert report.ok, [c for c in report.checks if not c.ok]
            assert [h["mrenclave"] for h in report.controller["builds"]] == [A, B]
            report, _ = verify(hb, cvms[0], trust_simulated=True, state_dir=tmp_path / "user-c", expect=only_a)
            failed = {c.name: c.detail for c in report.checks if not c.ok}
            assert set(failed) == {"controller_builds"} and B[:16] in failed["controller_builds"]
        # The CLI shows the history and exits non-zero for that user.
        (tmp_path / "only-a.yaml").write_text(f"controller:\n  builds:\n    - mrenclave: '{A}'\n")
        cli = subprocess.run(
            [sys.executable, "-m", "duet.cli.main", "verify", cvms[1], "--controller", b.url, "--trust-simulated",
             "--state-dir", str(tmp_path / "user-d"), "--expect", str(tmp_path / "only-a.yaml")],
            capture_output=True, text=True, timeout=120)
        assert cli.returncode != 0, cli.stdout
        assert "controller_builds" in cli.stdout + cli.stderr and A[:16] in cli.stdout + cli.stderr

        # B restarts with the same argv (--join included): it opens its own seal and goes on;
        # nothing is rotated again.
        b.kill()
        b.start("--join", a.url, "--cvm-root", str(cvm_root), "--simulated-mrenclave", B)
        assert b.owner().run(cvms[2], "true", timeout_s=30)["exit_status"] == 0
        assert sum(e["type"] == "key_rotated" for e in _entries(b, f"/v1/cvms/{cvms[2]}/entries")) == 1
    finally:
        a.kill()
        b.kill()
