"""duet's builtin commands as versioned templates, for the verifier's history check.

Builtins (`attest`, `snapshot`, `lockdown`) are duet's own fixed commands, logged like
every other command. The history check (`duet verify` with ``history.allowed_commands``)
requires every builtin entry to be exactly one of these templates: a builtin cannot carry
an owner's command past the allow-list. Old templates stay here, so logs written by older
controllers still verify; a template is never edited, only added.

v2 (this version) runs each builtin clean: ``env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin``,
``python3 -I -S`` wherever Python runs (no PYTHON* variables, no site, no user site, so no
``.pth`` file), through ``sh -c`` (neither a login nor an interactive shell: no rc file).

Templates whose text is long (the guest scripts) are kept as SHA-256 digests of the
command with its nonce replaced by ``{nonce}`` (attest) or of the script (lockdown).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import Any

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_CLEAN_SH = f"env -i PATH={CLEAN_PATH} LANG=C LC_ALL=C sh -c "

SNAPSHOT_V1 = (
    "dpkg-query -W -f='${Package} ${Version}\\n' 2>/dev/null | LC_ALL=C sort",
    "ss -ltnuH 2>/dev/null || cat /proc/net/tcp /proc/net/tcp6",
    "systemctl list-unit-files --state=enabled --no-legend 2>/dev/null || echo 'no systemd'",
    "cat /proc/cmdline",
    "sha256sum ~/.ssh/authorized_keys 2>/dev/null || echo 'no authorized_keys in home'",
    "uname -a",
)

_PERSISTENCE_PATHS = (
    "/etc/crontab /etc/cron.d /etc/cron.hourly /etc/cron.daily /etc/cron.weekly /etc/cron.monthly "
    "/var/spool/cron/crontabs /var/spool/cron/atjobs /var/spool/cron/atspool /etc/sudoers /etc/sudoers.d "
    "/etc/pam.d /etc/security /etc/ld.so.preload /etc/profile.d /etc/environment /etc/modules-load.d"
)
_SNAPSHOT_V2_BODIES = (
    "dpkg-query -W -f='${Package} ${Version}\\n' 2>/dev/null | sort",
    # Listening sockets, with the process holding each (all of them as root where sudo works).
    "S=; sudo -n true 2>/dev/null && S='sudo -n'; $S ss -ltnupH 2>/dev/null || cat /proc/net/tcp /proc/net/tcp6",
    # Processes: pid, parent, session, user, start time, cgroup (the SSH session or unit), command.
    "ps -eo pid=,ppid=,sid=,user:24=,lstart=,cgroup:72=,args= 2>/dev/null | cut -c1-400",
    # Persistence points: cron, at, sudoers, PAM, preload, profile and module drop-ins.
    f"S=; sudo -n true 2>/dev/null && S='sudo -n'; for p in {_PERSISTENCE_PATHS}; do "
    "[ -e \"$p\" ] || continue; $S find \"$p\" -xdev -maxdepth 2 -printf '%M %u %TY-%Tm-%Td %p\\n' "
    "2>&1 | sort; done; true",
    # systemd timers, transient units (systemd-run) and enabled units.
    "systemctl list-timers --all --no-legend --no-pager 2>/dev/null; "
    "systemctl list-units --all --no-legend --no-pager 'run-*' 2>/dev/null; "
    "systemctl list-unit-files --state=enabled --no-legend --no-pager 2>/dev/null || echo 'no systemd'",
    "cut -d' ' -f1,3,5 /proc/modules 2>/dev/null | sort",
    "cat /proc/cmdline",
    "uname -a",
)
SNAPSHOT_V2 = tuple(_CLEAN_SH + shlex.quote(b) for b in _SNAPSHOT_V2_BODIES)
SNAPSHOT = {"v1": SNAPSHOT_V1, "v2": SNAPSHOT_V2}
ALL_SNAPSHOT_COMMANDS = frozenset(SNAPSHOT_V1) | frozenset(SNAPSHOT_V2)

#: Local (simulated SNP) attest: the report tool in the CVM's platform dir and a nonce.
_ATTEST_LOCAL = {
    "v1": re.compile(r"python3 (?P<tool>/\S+) (?P<nonce>[0-9a-f]{64})"),
    "v2": re.compile(rf"env -i PATH={CLEAN_PATH} python3 -I -S (?P<tool>/\S+) (?P<nonce>[0-9a-f]{{64}})"),
}
#: Real guests: `duet.cvm.guest.collect.collect_command` per TEE kind, nonce as {nonce}.
ATTEST_REMOTE_SHA256 = {
    "955f799ce7b536e89d8fcf76ddfcc7f101cc910fd1bed6413cdd49a91351873a": "v1 snp/tdx",
    "095aa865d2c9344009b83a507486511e0ec7b4e4b92dfb7e3e2dd9eeb10a0a16": "v1 azure-snp",
    "12dc2a30458664d50ab0d14decbcb96ad4b23c8aef5b159c75e0a576ed3353dd": "v2 snp/tdx",
    "9a58b47ebdc5cd18e2b154fb75a9810e6f5d94128b120681e7b656b791bae244": "v2 azure-snp",
    "416c3cc04074cde6e5983ffca8f0e483c24275b22c8508be66f0fd09e1d6c2ed": "v2 azure-tdx",
    # v3: configfs-tsm also sends the TD's CC event log (ACPI CCEL table) when present.
    "d23ca9df020e5c017a3b016a30c8405480289e928a8aa6ea45a80f6433cc2981": "v3 snp/tdx",
    # v3 azure: the vTPM's AK certificate (NV 0x01C101D0) and TCG event log when present.
    "e5b3a20a5772d14933f4f223bacecc00461ae39201cb809b646d7a7ac6af1ee3": "v3 azure-snp",
    "ca8b1524c5bc952054d0b6f1fafda841d188ec6e1b08ccc7853896951d4808f6": "v3 azure-tdx",
    # MAA kinds: the owner's MAA instance URL is a parameter too, as {maa_url}.
    "7f6eff734095166218e1c9bc26911e6305d6f54d889dc3b088834a29d306a154": "v2 azure-snp-maa",
    "58158bbc4e532c922ac46320853cc8464659040ab475a8b91554acaedc6888f2": "v2 azure-tdx-maa",
}
#: Where an MAA kind's command names the owner's MAA instance (`collect.MAA_URL` before
#: the endpoint path): replaced by {maa_url} before the digest is taken.
_MAA_URL_IN_ATTEST = re.compile(r"https://[a-z0-9](?:[a-z0-9.-]{0,250}[a-z0-9])?(?::[0-9]{1,5})?(?=/attest/)")
#: The lockdown gatherer sent to real guests (`duet.cvm.guest.lockdown_facts.guest_source`).
#: Each change to that file or to `duet.ledger.lockdown` is a new version: add its digest.
LOCKDOWN_GATHERER_SHA256: dict[str, str] = {
    "dfe101ea4807b98dbb3b69d52f20c7f00c586cd400c4ccbb6e8670cdb0634fb8": "v2",
}
_LOCKDOWN_V2_ARGV = ["sudo", "-n", "env", "-i", f"PATH={CLEAN_PATH}", "LANG=C", "python3", "-I", "-S", "-c"]


def _v1_remote_lockdown(user: str, akf: str) -> set[str]:
    """The lockdown commands of v1 (shell pipelines, judged on their raw output)."""
    q = shlex.quote
    units = ("walinuxagent waagent google-guest-agent google-osconfig-agent amazon-ssm-agent "
             "snap.amazon-ssm-agent.amazon-ssm-agent")
    sshd_t = f"sudo -n /usr/sbin/sshd -T -C user={q(user)},host=localhost,addr=127.0.0.1"
    other_keys = (
        "sudo -n sh -c 'for h in $(getent passwd | cut -d: -f6 | sort -u) /root; do "
        'for f in "$h"/.ssh/authorized_keys "$h"/.ssh/authorized_keys2; do '
        f'[ -e "$f" ] && [ "$f" != {akf} ] && echo "--- $f" && cat "$f"; done; done; true' + "'"
    )
    need_systemd = '[ -d /run/systemd/system ] || echo "cannot check: systemd is not running"; '
    return {
        sshd_t,
        f"{sshd_t}; echo '--- {akf}'; sudo -n cat {q(akf)}; {other_keys}",
        "sudo -n getent shadow | cut -d: -f1,2",
        need_systemd + f"for u in {units}; do s=$(systemctl is-enabled \"$u\" 2>/dev/null || true); "
        'case "$s" in enabled*|static|alias|indirect|generated) echo "enabled: $u ($s)";; esac; '
        'systemctl is-active --quiet "$u" 2>/dev/null && echo "running: $u"; done; true',
        need_systemd + "for t in ttyS0 ttyS1 hvc0 ttyAMA0; do s=$(systemctl is-enabled \"serial-getty@$t.service\" "
        '2>/dev/null || true); [ "$s" = enabled ] && echo "enabled: serial-getty@$t"; '
        "systemctl is-active --quiet \"serial-getty@$t.service\" 2>/dev/null "
        "&& echo \"running: serial-getty@$t\"; "
        "done; true",
    }


_AKF = "/etc/ssh/duet/authorized_keys"
#: `rotate_key` v1 (a controller handover, docs/continuity.md): argv before the key lines.
_ROTATE_KEY_V1_ARGV = ["sudo", "-n", "env", "-i", f"PATH={CLEAN_PATH}", "sh", "-c",
                       f'umask 022 && printf "%s\\n" "$@" > {_AKF}.new && mv -f {_AKF}.new {_AKF}', "rotate_key"]
_SSH_KEY_LINE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,3}")


def builtin_template(entry: dict[str, Any], *, user: str | None, report_tool: str | None) -> str | None:
    """The template a builtin command entry matches exactly, as ``<action> <version>``,
    or None. `user`: the CVM's SSH user (provisioned entry); `report_tool`: the local
    CVM's report tool path (provisioned launch), which the local attest must name."""
    action, command = entry.get("action"), entry.get("command")
    if not isinstance(command, str):
        return None
    if action == "snapshot":
        for version, commands in SNAPSHOT.items():
            if command in commands:
                return f"snapshot {version}"
        return None
    if action == "attest":
        for version, pattern in _ATTEST_LOCAL.items():
            m = pattern.fullmatch(command)
            if m and report_tool is not None and m.group("tool") == report_tool:
                return f"attest local {version}"
        nonces = re.findall(r"[0-9a-f]{64}", command)
        if nonces:
            text = command.replace(nonces[0], "{nonce}")
            url = _MAA_URL_IN_ATTEST.search(text)
            if url is not None:
                text = text.replace(url.group(0), "{maa_url}")
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in ATTEST_REMOTE_SHA256:
                return f"attest {ATTEST_REMOTE_SHA256[digest]}"
        return None
    if action == "rotate_key":
        try:
            argv = shlex.split(command)
        except ValueError:
            return None
        keys = argv[len(_ROTATE_KEY_V1_ARGV):]
        if argv[:len(_ROTATE_KEY_V1_ARGV)] == _ROTATE_KEY_V1_ARGV and 1 <= len(keys) <= 2 \
                and all(_SSH_KEY_LINE.fullmatch(k) for k in keys):
            return "rotate_key v1"
        return None
    if action == "lockdown":
        if user is not None and command in _v1_remote_lockdown(user, f"/home/{user}/.ssh/authorized_keys"):
            return "lockdown v1"
        try:
            argv = shlex.split(command)
        except ValueError:
            return None
        if len(argv) == 12 and argv[:10] == _LOCKDOWN_V2_ARGV:
            digest = hashlib.sha256(argv[10].encode()).hexdigest()
            try:
                params = json.loads(argv[11])
            except ValueError:
                return None
            if digest in LOCKDOWN_GATHERER_SHA256 and isinstance(params, dict) and params.get("user") == user:
                return f"lockdown {LOCKDOWN_GATHERER_SHA256[digest]}"
        return None
    return None
