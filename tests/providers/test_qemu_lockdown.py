"""The lockdown attacks against a real distribution's sshd: one Debian guest booted under
TCG through the whole controller, the scenarios run against it in turn. Each scenario
changes the guest in-update (as the owner would, with sudo), must fail lockdown on entry
to in-service naming its check, must fail `duet verify`'s lockdown expectation with the
same name, and is undone before the next. Slow: `make test-slow`."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from test_qemu_boot import guest_settings, require_image

pytestmark = pytest.mark.slow

OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKz0gSqC8lJc2a0XJWqg4m3Wx6z0V8aA3Gp7Hn1m8b2q"
AKF = "/etc/ssh/duet/authorized_keys"
ENFORCED = ["password_auth_off", "root_login_off", "only_controller_key", "sshd_access", "sshd_match_blocks",
            "listeners", "passwords_locked", "agents_disabled", "serial_console_off"]


def _set_akf(body: str) -> str:
    """A command writing `body` ({key} = the controller's key line) to the key file."""
    # One line (the policy's `.*` does not span lines): printf %b makes the newlines.
    script = body.replace("{key}", "$(cat /root/akf.orig)").replace("\n", "\\n")
    return f"sudo -n sh -c 'cp -n {AKF} /root/akf.orig; printf \"%b\\n\" \"{script}\" > {AKF}'"


RESTORE_AKF = f"sudo -n cp /root/akf.orig {AKF}"

#: name, the command doing it, the check that must fail, the command undoing it.
SCENARIOS: list[tuple[str, str, str, str]] = [
    ("separator line", _set_akf(f"{OTHER}\n--- {AKF}\n{{key}}"), "only_controller_key", RESTORE_AKF),
    ("stray line", _set_akf("{key}\nnot a key"), "only_controller_key", RESTORE_AKF),
    ("second key", _set_akf(f"{{key}}\n{OTHER}"), "only_controller_key", RESTORE_AKF),
    ("command= option", _set_akf('command=\\"/bin/true\\" {key}'), "only_controller_key", RESTORE_AKF),
    ("environment= option", _set_akf('environment=\\"X=1\\" {key}'), "only_controller_key", RESTORE_AKF),
    ("~/.ssh of the duet user", f"mkdir -p ~/.ssh && echo '{OTHER}' > ~/.ssh/authorized_keys",
     "only_controller_key", "rm -rf ~/.ssh"),
    ("Match Address re-enabling passwords",
     "printf 'Match Address 10.0.0.0/8\\n  PasswordAuthentication yes\\n' | "
     "sudo -n tee /etc/ssh/sshd_config.d/99-test.conf >/dev/null",
     "sshd_match_blocks", "sudo -n rm /etc/ssh/sshd_config.d/99-test.conf"),
    ("second sshd on port 2222", "sudo -n /usr/sbin/sshd -p 2222 -o PidFile=/run/sshd-2222.pid && sleep 1",
     "listeners", "sudo -n sh -c 'kill $(cat /run/sshd-2222.pid)'; sleep 1"),
    ("home with a space", "sudo -n useradd -m -d '/home/a b' ab && sudo -n mkdir -p '/home/a b/.ssh' && "
     f"echo '{OTHER}' | sudo -n tee '/home/a b/.ssh/authorized_keys' >/dev/null",
     "only_controller_key", "sudo -n userdel -r ab"),
]


async def test_lockdown_scenarios_against_a_debian_guest(tmp_path: Path) -> None:
    image = require_image()
    from duet.client.audit import audit_log
    from duet.client.cvm_checks import lockdown_checks
    from duet.client.expectations import UserExpectations
    from duet.controller.serve import build_controller
    from duet.ledger import keys
    from duet.ledger.intent import sign_intent

    os.chmod(tmp_path, 0o755)
    providers = tmp_path / "providers.yaml"
    providers.write_text(json.dumps({"qemu": {
        **guest_settings(image), "base_dir": str(tmp_path / "qemu"), "allow_no_tee": True,
    }}))
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    ctl = build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub", providers_file=providers)
    await ctl.startup()

    def intent(op: str, args: dict[str, object], cvm: str | None = None) -> str:
        return sign_intent(owner, op=op, aud=ctl.controller_id, args=args, cvm=cvm, iat=int(time.time()))

    def log(cvm: str) -> tuple[list[dict[str, Any]], Any]:
        leaves = ctl.ledger.leaves(cvm, 0, ctl.ledger.tree_head(cvm).size)
        audit = audit_log(leaves, controller_id=ctl.controller_id,
                          controller_key_b64=keys.public_b64(ctl.public_key), cvm_id=cvm)
        return audit.decoded, audit

    async def run(cvm: str, command: str) -> dict[str, Any]:
        """Run a command; its result with stdout/stderr decoded (the API sends base64)."""
        _, res = await ctl.submit(intent("cvm.run", {"command": command, "timeout_s": 300}, cvm))
        for stream in ("stdout", "stderr"):
            res[stream] = base64.b64decode(res[stream]).decode("utf-8", "replace")
        return res

    async def enter(cvm: str) -> str | None:
        """Enter in-service; the refusal's message, or None if it entered."""
        try:
            await ctl.submit(intent("cvm.mode", {"mode": "in-service"}, cvm))
        except Exception as exc:
            assert getattr(exc, "code", None) == "lockdown_failed", exc
            return str(exc)
        await ctl.submit(intent("cvm.mode", {"mode": "in-update"}, cvm))
        return None

    def verify_lockdown(cvm: str, names: list[str]) -> Any:
        decoded, audit = log(cvm)
        [check] = lockdown_checks(decoded, audit.state, UserExpectations.model_validate({"lockdown": names}))
        return check

    failures: list[str] = []
    try:
        _, created = await ctl.submit(intent("cvm.create", {"provider": "qemu", "tee": "none"}, None))
        cvm = created["cvm"]["id"]
        assert created["cvm"]["status"] == "ready", created
        baseline = verify_lockdown(cvm, ENFORCED)
        assert baseline.ok, baseline.detail
        assert await enter(cvm) is None
        for name, do, check, undo in SCENARIOS:
            res = await run(cvm, do)
            if res["exit_status"] != 0:
                failures.append(f"{name}: setting it up failed: {res.get('stderr')}")
                continue
            refused = await enter(cvm)
            verdict = verify_lockdown(cvm, ENFORCED)
            if refused is None or check not in refused:
                failures.append(f"{name}: entered in-service, or refused without naming {check}: {refused}")
            if verdict.ok or check not in verdict.detail:
                failures.append(f"{name}: duet verify does not fail {check}: {verdict.detail}")
            await run(cvm, undo)
        assert await enter(cvm) is None, "the guest did not come back clean after the scenarios"

        # An update's nohup loop: in-service is entered, the loop is shown and flagged.
        await run(cvm, "nohup sh -c 'while :; do sleep 1; done # duet-loop' >/dev/null 2>&1 &")
        await ctl.submit(intent("cvm.mode", {"mode": "in-service"}, cvm))
        decoded, _ = log(cvm)
        lockdown = [e for e in decoded if e["type"] == "lockdown"][-1]
        if not any("duet-loop" in p["command"] for p in lockdown["facts"]["update_processes"]):
            failures.append(f"nohup loop not flagged: {lockdown['facts'].get('update_processes')}")
        flagged = verify_lockdown(cvm, ["no_update_processes"])
        if flagged.ok:
            failures.append("no_update_processes passes with the loop running")
        await ctl.submit(intent("cvm.mode", {"mode": "in-update"}, cvm))

        # Start-up hooks planted in the duet user's home never run inside a builtin.
        plant = ("d=$(python3 -c 'import site; print(site.getusersitepackages())') && mkdir -p \"$d\" && "
                 "echo 'import os; open(os.path.expanduser(\"~\") + \"/pwned-pth\", \"a\")' > \"$d/zz.pth\" && "
                 "for f in .bashrc .profile .shrc; do echo 'touch ~/pwned-rc' > ~/$f; done; "
                 "python3 -c pass; ls -a ~")
        planted = await run(cvm, plant)
        assert "pwned-pth" in planted["stdout"], planted  # the hook works in an ordinary python3
        await run(cvm, "rm -f ~/pwned-pth ~/pwned-rc")
        await ctl.submit(intent("cvm.mode", {"mode": "in-service"}, cvm))
        await ctl.submit(intent("cvm.mode", {"mode": "in-update"}, cvm))
        left = await run(cvm, "ls -a ~")
        if "pwned" in left["stdout"]:
            failures.append(f"a planted hook ran inside a builtin: {left['stdout']}")
        assert not failures, "\n".join(failures)
        await ctl.submit(intent("cvm.delete", {}, cvm))
    finally:
        await ctl.shutdown()
        for rec in list(ctl._records.values()):
            if rec.mode != "deleted":
                await ctl.providers[rec.provider].delete(rec.id)
