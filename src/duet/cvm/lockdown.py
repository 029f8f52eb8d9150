"""Lockdown checks: evidence, in the log, that the controller is the only way in.

The checks gather *facts* as root (`duet.cvm.guest.lockdown_facts`) and judge them with
the pure judges of `duet.ledger.lockdown`; the `lockdown` entry logs the facts beside the
verdicts, and `duet verify` judges the logged facts again. A fact that cannot be gathered
fails every check that needs it: a missing tool or an unreadable file never passes.

Where the facts are gathered:

* `local`: "the CVM's root" is this machine's root (the local sshd and its system user
  live here), so the gatherer runs host-side, in-process. It opens every file with
  openat/O_NOFOLLOW from `/`, refuses links and files not owned by root unread, runs no
  shell and reads nothing in the CVM user's home (only whether something is there).
* real CVMs: the same gatherer is sent as the text of a logged command and runs in the
  guest, ``sudo -n env -i PATH=... python3 -I -S -c <script> <params>``, with no login
  shell and no start-up files; its JSON output is the facts.

Listener rule per provider: `local`, the CVM's own sshd on its port (127.0.0.1) and no
socket held by the CVM user or its sessions; real guests (Ubuntu 24.04 / Debian, sshd or a
socket-activated ``ssh.socket``), port 22 only and no other TCP listener on a non-loopback
address.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from duet.cvm.guest import lockdown_facts
from duet.ledger.lockdown import ADVISORY, CHECKS, JUDGE_VERSION, judge_all

Runner = Callable[[str], Awaitable[tuple[int, str]]]

#: Where real guests keep the controller's key: root-owned, outside any user's home.
REMOTE_AUTHORIZED_KEYS = "/etc/ssh/duet/authorized_keys"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CheckResult:
    name: str
    command: str
    output: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "output": self.output, "ok": self.ok,
                "detail": self.detail}


@dataclass(frozen=True)
class Lockdown:
    """One run of the checks: the facts (logged) and the verdicts on them."""

    facts: dict[str, Any]
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        """Every check that can refuse passes (advisory ones are logged, not enforced)."""
        return all(r.ok for r in self.results if r.name not in ADVISORY)


def judged(facts: dict[str, Any], how: str) -> Lockdown:
    return Lockdown(facts, [CheckResult(name, how, "", ok, detail) for name, ok, detail in judge_all(facts)])


def local_params(ctx: Mapping[str, object], controller_key: str) -> dict[str, Any]:
    privileged = bool(ctx["privileged"])
    return {
        "where": "local",
        "user": ctx["user"],
        "authorized_keys_file": ctx["authorized_keys_file"],
        "sshd": ctx["sshd"],
        "sshd_config": ctx["sshd_config"],
        "home": ctx["home"],
        "privileged": privileged,
        "cvm_uid": ctx.get("uid") if privileged else None,
        "marker": ctx.get("marker"),
        "sshd_pid": ctx.get("sshd_pid"),
        # Unprivileged, the CVM user is the developer, who owns the CVM directory.
        "require_root": privileged,
        "expected": {
            "user": ctx["user"],
            "authorized_keys_file": ctx["authorized_keys_file"],
            "controller_key": " ".join(controller_key.split()[:2]),
            "root_owned_key_file": privileged,
            "forcecommand": ctx.get("forcecommand"),
            "listener_rule": "local",
            "port": ctx["port"],
        },
    }


async def run_local(ctx: Mapping[str, object], controller_key: str) -> Lockdown:
    """Gather host-side (this process is the local CVM's root) and judge."""
    params = local_params(ctx, controller_key)
    facts = await asyncio.to_thread(lockdown_facts.gather, params)
    return judged(facts, "host-side, in-process: openat/O_NOFOLLOW reads, sshd -T (no shell)")


def remote_params(*, user: str, controller_key: str, must_be_absent: list[str]) -> dict[str, Any]:
    return {
        "where": "remote",
        "user": user,
        "authorized_keys_file": REMOTE_AUTHORIZED_KEYS,
        "sshd": "/usr/sbin/sshd",
        "must_be_absent": must_be_absent,
        "expected": {
            "user": user,
            "authorized_keys_file": REMOTE_AUTHORIZED_KEYS,
            "controller_key": " ".join(controller_key.split()[:2]),
            "root_owned_key_file": True,
            "forcecommand": None,
            "listener_rule": "remote",
            "port": 22,
            "must_be_absent": must_be_absent,
        },
    }


def remote_command(params: Mapping[str, Any]) -> str:
    """The logged command that gathers the facts in a real guest: clean environment,
    isolated Python (no site, no user site, no PYTHON* variables), no login shell."""
    return (f"sudo -n env -i PATH={CLEAN_PATH} LANG=C python3 -I -S -c "
            f"{shlex.quote(lockdown_facts.guest_source())} {shlex.quote(json.dumps(params, sort_keys=True))}")


def rotate_key_command(lines: list[str]) -> str:
    """The logged builtin that replaces the controller's key(s) in a real guest's root-owned
    authorized-keys file (atomically: a new file, then a rename). A template of it is in
    `duet.ledger.builtins` (`rotate_key v1`), so users can tell it from an owner command."""
    akf = REMOTE_AUTHORIZED_KEYS
    script = f'umask 022 && printf "%s\\n" "$@" > {akf}.new && mv -f {akf}.new {akf}'
    return (f"sudo -n env -i PATH={CLEAN_PATH} sh -c {shlex.quote(script)} rotate_key "
            + " ".join(shlex.quote(" ".join(line.split()[:2])) for line in lines))


async def run_remote(params: Mapping[str, Any], runner: Runner) -> Lockdown:
    command = remote_command(params)
    try:
        rc, out = await runner(command)
    except Exception as exc:
        return judged({"judge_version": JUDGE_VERSION, "error": f"could not run: {exc}"}, "over SSH")
    try:
        facts = json.loads(out)
        if not isinstance(facts, dict) or rc != 0:
            raise ValueError(f"exit status {rc}")
    except ValueError as exc:
        facts = {"judge_version": JUDGE_VERSION, "error": f"the gatherer gave no facts ({exc})"}
    # The guest reports what it saw; what it had to compare with is the controller's.
    facts["expected"] = dict(params["expected"])
    return judged(facts, "in the guest: the logged lockdown command (python3 -I -S, sudo, env -i)")


__all__ = [
    "CHECKS",
    "REMOTE_AUTHORIZED_KEYS",
    "CheckResult",
    "Lockdown",
    "judged",
    "local_params",
    "remote_command",
    "remote_params",
    "rotate_key_command",
    "run_local",
    "run_remote",
]
