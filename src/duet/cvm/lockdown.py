"""Lockdown checks: evidence, in the log, that the controller is the only way in.

Each check is a shell command run with the CVM's root privileges plus a pure judgement
of its output; the command, its output and the verdict are logged (`lockdown` entry),
so a user can re-read exactly what was seen. A check that cannot run fails: a missing
tool or unreadable file never turns into a pass.

For the `local` provider "the CVM's root" is this machine's root (the local sshd and its
system user live here), so the commands run host-side; on real CVMs the same commands go
over the controller's SSH session under `sudo -n`.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

Runner = Callable[[str], Awaitable[tuple[int, str]]]

AGENTS = ("waagent", "walinuxagent", "google_guest_agent", "google_osconfig_agent", "amazon-ssm-agent")
AGENT_UNITS = ("walinuxagent", "waagent", "google-guest-agent", "google-osconfig-agent",
               "amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent")
ROOT_LOGIN_OK = ("no", "prohibit-password", "without-password")


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


def _settings(sshd_t: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in sshd_t.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def judge_password_auth(sshd_t: str) -> tuple[bool, str]:
    s = _settings(sshd_t)
    if "passwordauthentication" not in s:
        return False, "no effective sshd configuration was read"
    bad = [k for k in ("passwordauthentication", "kbdinteractiveauthentication", "permitemptypasswords",
                       "hostbasedauthentication", "gssapiauthentication", "kerberosauthentication")
           if s.get(k, ["no"])[0] != "no"]
    if bad:
        return False, "sshd allows: " + ", ".join(f"{k} {s[k][0]}" for k in bad)
    return True, "sshd allows public-key login only"


def judge_root_login(sshd_t: str) -> tuple[bool, str]:
    s = _settings(sshd_t)
    value = s.get("permitrootlogin", [""])[0]
    if value in ROOT_LOGIN_OK:
        return True, f"permitrootlogin {value}"
    return False, f"permitrootlogin is {value or 'unknown'}; want no or prohibit-password"


def _resolve_akf(path: str, akf: str) -> str:
    """sshd reads a relative AuthorizedKeysFile (or one with %h) from the user's home;
    for the CVM's user that is the directory above `.ssh` of the expected file."""
    home = akf.rsplit("/.ssh/", 1)[0] if "/.ssh/" in akf else None
    if home is None:
        return path
    path = path.replace("%h", home).replace("%%", "%")
    return path if path.startswith("/") else f"{home}/{path}"


def judge_only_controller_key(output: str, controller_key: str, akf: str) -> tuple[bool, str]:
    """Output: `sshd -T` lines, then a line `--- <file>` and each authorized_keys file."""
    sshd_part, _, files_part = output.partition("\n--- ")
    s = _settings(sshd_part)
    problems = []
    if s.get("authorizedkeyscommand", ["none"])[0] != "none":
        problems.append("an AuthorizedKeysCommand is set")
    if s.get("authorizedprincipalscommand", ["none"])[0] != "none":
        problems.append("an AuthorizedPrincipalsCommand is set")
    if s.get("trustedusercakeys", ["none"])[0] != "none":
        problems.append("TrustedUserCAKeys is set")
    files = [_resolve_akf(f, akf) for f in s.get("authorizedkeysfile", [""])[0].split()]
    if files != [akf]:
        problems.append(f"AuthorizedKeysFile is {' '.join(files) or 'unset'}, want only {akf}")
    want = " ".join(controller_key.split()[:2])
    found: dict[str, list[str]] = {}
    current = None
    for line in ("--- " + files_part).splitlines() if files_part else []:
        if line.startswith("--- "):
            current = line[4:].strip()
            found[current] = []
        elif current is not None and line.strip() and not line.lstrip().startswith("#"):
            found[current].append(" ".join(line.split()[:2]))
    if found.get(akf) != [want]:
        problems.append(f"{akf} holds {len(found.get(akf, []))} keys, want exactly the controller's")
    others = {f: k for f, k in found.items() if f != akf and k}
    if others:
        problems.append("other authorized keys exist: " + ", ".join(sorted(others)))
    if problems:
        return False, "; ".join(problems)
    return True, "the controller's key is the only way to log in"


def judge_passwords_locked(output: str) -> tuple[bool, str]:
    """Output: shadow lines `user:field`; every field must be unusable as a password."""
    usable = []
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return False, "no account was read"
    odd = [line for line in lines if not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?:[^:]*", line)]
    if odd:
        return False, "unexpected output instead of account entries: " + "; ".join(odd[:3])
    for line in lines:
        user, field = line.split(":", 2)[:2]
        if not (field in ("", "*", "!", "!!") or field.startswith(("!", "*"))):
            usable.append(user)
        if field == "":
            usable.append(user + " (empty password)")
    if usable:
        return False, "accounts with a usable password: " + ", ".join(usable)
    return True, f"{len(lines)} accounts, none with a usable password"


def judge_absent(output: str, what: str) -> tuple[bool, str]:
    found = [line for line in output.splitlines() if line.strip() and not line.startswith("#")]
    if found:
        return False, f"{what} present: " + "; ".join(found[:5])
    return True, f"no {what}"


def local_commands(ctx: Mapping[str, object]) -> dict[str, str]:
    """The check commands for a local CVM (run host-side as root)."""
    q = shlex.quote
    names = ("sshd", "sshd_config", "authorized_keys_file", "user", "home")
    sshd, cfg, akf, user, home = (str(ctx[k]) for k in names)
    sshd_t = f"{q(sshd)} -T -f {q(cfg)} -C user={q(user)},host=localhost,addr=127.0.0.1"
    other_keys = (
        f"for f in {q(home)}/.ssh/authorized_keys* {q(home)}/.ssh/authorized_keys2; do "
        f'[ -e "$f" ] && [ "$f" != {q(akf)} ] && echo "--- $f" && cat "$f"; done; true'
    )
    shadow = f"getent shadow {q(user)} | cut -d: -f1,2" if ctx.get("privileged") else \
        f"echo {q(user)}:'*'  # unprivileged local CVM: the developer's own account, no password login"
    return {
        "password_auth_off": sshd_t,
        "root_login_off": sshd_t,
        "only_controller_key": f"{sshd_t}; echo '--- {akf}'; cat {q(akf)}; {other_keys}",
        "passwords_locked": shadow,
        "agents_disabled": (
            "for a in " + " ".join(AGENTS) + '; do p=$(command -v "$a") && echo "installed: $p"; done; '
            "for u in " + " ".join(AGENT_UNITS) + "; do "
            '[ -e "/etc/systemd/system/multi-user.target.wants/$u.service" ] && echo "enabled: $u"; done; true'
        ),
        "serial_console_off": (
            "for t in ttyS0 ttyS1 hvc0 ttyAMA0; do "
            '[ -e "/etc/systemd/system/getty.target.wants/serial-getty@$t.service" ] '
            '&& echo "enabled: serial-getty@$t"; '
            "done; ps -eo args | grep -E '^[^ ]*getty.*(ttyS|hvc|ttyAMA)' || true"
        ),
    }


def remote_commands(*, user: str, akf: str) -> dict[str, str]:
    """The check commands for a real CVM, run over SSH by the provisioning user with
    `sudo -n` (the cloud-init of every provider grants it exactly that)."""
    q = shlex.quote
    if not re.fullmatch(r"/[A-Za-z0-9/._-]+", akf):
        raise ValueError(f"unsafe authorized_keys path {akf!r}")
    sshd_t = f"sudo -n /usr/sbin/sshd -T -C user={q(user)},host=localhost,addr=127.0.0.1"
    other_keys = (
        "sudo -n sh -c 'for h in $(getent passwd | cut -d: -f6 | sort -u) /root; do "
        'for f in "$h"/.ssh/authorized_keys "$h"/.ssh/authorized_keys2; do '
        f'[ -e "$f" ] && [ "$f" != {akf} ] && echo "--- $f" && cat "$f"; done; done; true' + "'"
    )
    units = " ".join(AGENT_UNITS)
    # Without a running systemd the unit checks below would print nothing: say so instead,
    # so that the check fails rather than passes unexamined.
    need_systemd = '[ -d /run/systemd/system ] || echo "cannot check: systemd is not running"; '
    return {
        "password_auth_off": sshd_t,
        "root_login_off": sshd_t,
        "only_controller_key": f"{sshd_t}; echo '--- {akf}'; sudo -n cat {q(akf)}; {other_keys}",
        "passwords_locked": "sudo -n getent shadow | cut -d: -f1,2",
        "agents_disabled": (
            need_systemd + f"for u in {units}; do s=$(systemctl is-enabled \"$u\" 2>/dev/null || true); "
            'case "$s" in enabled*|static|alias|indirect|generated) echo "enabled: $u ($s)";; esac; '
            'systemctl is-active --quiet "$u" 2>/dev/null && echo "running: $u"; done; true'
        ),
        "serial_console_off": (
            need_systemd + "for t in ttyS0 ttyS1 hvc0 ttyAMA0; do s=$(systemctl is-enabled \"serial-getty@$t.service\" "
            '2>/dev/null || true); [ "$s" = enabled ] && echo "enabled: serial-getty@$t"; '
            "systemctl is-active --quiet \"serial-getty@$t.service\" 2>/dev/null "
            "&& echo \"running: serial-getty@$t\"; "
            "done; true"
        ),
    }


def judge(name: str, output: str, *, controller_key: str, akf: str) -> tuple[bool, str]:
    if name == "password_auth_off":
        return judge_password_auth(output)
    if name == "root_login_off":
        return judge_root_login(output)
    if name == "only_controller_key":
        return judge_only_controller_key(output, controller_key, akf)
    if name == "passwords_locked":
        return judge_passwords_locked(output)
    if name == "agents_disabled":
        return judge_absent(output, "cloud agent that can inject keys or run commands")
    if name == "serial_console_off":
        return judge_absent(output, "serial console login")
    return False, f"unknown check {name}"


async def run_checks(
    commands: Mapping[str, str], runner: Runner, *, controller_key: str, akf: str
) -> list[CheckResult]:
    results = []
    for name, command in commands.items():
        try:
            rc, output = await runner(command)
        except Exception as exc:
            results.append(CheckResult(name, command, "", False, f"could not run: {exc}"))
            continue
        ok, detail = judge(name, output, controller_key=controller_key, akf=akf)
        if rc != 0:
            ok, detail = False, f"exit status {rc}: {detail}"
        results.append(CheckResult(name, command, output, ok, detail))
    return results


async def host_runner(command: str) -> tuple[int, str]:
    """Run a check command on this machine (the local provider's "CVM root")."""
    proc = await asyncio.create_subprocess_shell(
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace")
