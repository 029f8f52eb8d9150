"""Lockdown judges: pure functions from the facts a lockdown check gathered to a verdict.

The controller judges the facts it gathered from a CVM and logs them beside the verdict
(`lockdown` entry, ``facts``); `duet verify` runs the *same* functions on the logged facts
again, so a log judged by an older, weaker judge shows as failing today. The facts never
hold secrets: keys are public, shadow entries are reduced to locked / unlocked, and a line
that is not a key is recorded by its length and digest only.

The judges follow what sshd does, not what a reader might assume:

* authorized_keys lines are split on ``\\n`` only (sshd reads with getline); leading
  spaces and tabs are skipped; a line is blank or a comment only if nothing or ``#``
  follows. Every other line is either the controller's key, exactly, or a failure —
  including lines sshd would ignore (a stray line is a mistake or an attack either way).
* options (``command="..."``, ``environment=...``, ``cert-authority``, ...) end at the
  first space or tab outside double quotes, with ``\\"`` escaping a quote; no option is
  allowed on the controller's key: every one of them either restricts nothing duet needs
  restricted or reroutes the controller's commands (``command=``), changes their
  environment or marks a CA.
* `Match` blocks: the effective configuration sshd -T prints is for one synthetic
  connection, so a `Match` block can re-open a door for other clients. Any `Match` block
  that sets anything outside a short list of settings that can only restrict is refused.

Any setting whose value is not understood fails closed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Version of the facts format and of these judges. Logs without facts (older controllers,
#: judged by an older judge) cannot be re-judged and fail verification.
JUDGE_VERSION = 2

CHECKS = (
    "password_auth_off",
    "root_login_off",
    "only_controller_key",
    "sshd_access",
    "sshd_match_blocks",
    "listeners",
    "passwords_locked",
    "agents_disabled",
    "serial_console_off",
    "no_update_processes",
)
#: Judged and logged, but not a reason for the controller to refuse in-service: whether
#: processes an owner started may keep running is the user's call (their expectations
#: can require it: ``lockdown: [no_update_processes]``).
ADVISORY = ("no_update_processes",)

ROOT_LOGIN_OK = ("no",)
_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com", "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
)
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,3}")

#: Settings a `Match` block may hold, each with the values that only restrict.
_MATCH_HARMLESS: dict[str, tuple[str, ...] | None] = {
    "x11forwarding": ("no",),
    "allowagentforwarding": ("no",),
    "allowtcpforwarding": ("no",),
    "allowstreamlocalforwarding": ("no",),
    "permittunnel": ("no",),
    "permittty": ("no",),
    "disableforwarding": ("yes",),
    "banner": None,
    "loglevel": None,
    "clientaliveinterval": None,
    "clientalivecountmax": None,
    "maxsessions": None,
    "maxauthtries": None,
}


# --- authorized_keys -----------------------------------------------------------------

def split_lines(data: bytes) -> list[bytes]:
    """Lines as sshd reads them: split on LF only (no \\r, \\x0b, \\x0c, \\x1c-\\x1e, U+2028)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _split_options(text: str) -> tuple[str, str] | None:
    """sshd's option scan: the options end at the first space/tab outside quotes."""
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if not quoted and c in " \t":
            return text[:i], text[i:]
        if c == "\\" and text[i + 1:i + 2] == '"':  # sshd skips both, quoted or not
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        i += 1
    return None  # unterminated quote or no key after the options: sshd ignores the line


def _options(text: str) -> list[str]:
    out, cur, quoted, i = [], "", False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and text[i + 1:i + 2] == '"':
            cur += '\\"'
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    return out


def _key_at(text: str) -> tuple[str, str] | None:
    fields = text.lstrip(" \t").split(None, 2)
    if len(fields) >= 2 and fields[0] in _KEY_TYPES and _B64.fullmatch(fields[1]):
        return fields[0], fields[1]
    return None


def parse_authorized_keys(data: bytes) -> list[dict[str, Any]]:
    """Each line that is neither blank nor a comment, as facts: its number, options and
    key, or (when it is not a key line) only its length and SHA-256, never its text."""
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(split_lines(data), 1):
        body = raw.lstrip(b" \t")
        if not body or body.startswith(b"#"):
            continue
        item: dict[str, Any] = {"line": n}
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            text = None
        parsed: tuple[list[str], tuple[str, str]] | None = None
        if text is not None and text.isprintable():
            key = _key_at(text)
            if key is not None:
                parsed = ([], key)
            else:
                split = _split_options(text)
                if split is not None:
                    key = _key_at(split[1])
                    if key is not None:
                        parsed = (_options(split[0]), key)
        if parsed is None:
            item.update(unparsed_bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        else:
            item.update(options=parsed[0], type=parsed[1][0], key=parsed[1][1])
        out.append(item)
    return out


# --- helpers ----------------------------------------------------------------------------

def _first(settings: Mapping[str, Sequence[str]], name: str, default: str = "") -> str:
    values = settings.get(name) or []
    return str(values[0]).lower() if values else default


def _sshd(facts: Mapping[str, Any]) -> Mapping[str, Sequence[str]] | None:
    sshd = facts.get("sshd")
    if not isinstance(sshd, Mapping) or not isinstance(sshd.get("effective"), Mapping):
        return None
    eff = sshd["effective"]
    return eff if "passwordauthentication" in eff else None


Verdict = tuple[bool, str]


def judge_password_auth(facts: Mapping[str, Any]) -> Verdict:
    s = _sshd(facts)
    if s is None:
        return False, "no effective sshd configuration was read"
    bad = [f"{k} {_first(s, k, '(unset)')}" for k in (
        "passwordauthentication", "kbdinteractiveauthentication", "permitemptypasswords",
        "hostbasedauthentication", "gssapiauthentication", "kerberosauthentication")
        if _first(s, k, "(unset)") != "no"]
    if "challengeresponseauthentication" in s and _first(s, "challengeresponseauthentication") != "no":
        bad.append("challengeresponseauthentication " + _first(s, "challengeresponseauthentication"))
    methods = [m for v in s.get("authenticationmethods", ["any"]) for m in str(v).split()]
    if any(m not in ("any", "publickey") for m in methods):
        bad.append("authenticationmethods " + " ".join(methods))
    if _first(s, "pubkeyauthentication") != "yes":
        bad.append("pubkeyauthentication " + _first(s, "pubkeyauthentication", "(unset)"))
    if bad:
        return False, "sshd allows: " + ", ".join(bad)
    return True, "sshd allows public-key login only"


def judge_root_login(facts: Mapping[str, Any]) -> Verdict:
    s = _sshd(facts)
    if s is None:
        return False, "no effective sshd configuration was read"
    value = _first(s, "permitrootlogin")
    if value in ROOT_LOGIN_OK:
        return True, f"permitrootlogin {value}"
    return False, f"permitrootlogin is {value or 'unknown'}; want no"


def _file_problems(f: Mapping[str, Any], *, want_root: bool) -> list[str]:
    path = f.get("path", "?")
    if f.get("refused"):
        return [f"{path}: {f['refused']}"]
    problems = []
    if want_root and f.get("owner_uid") != 0:
        problems.append(f"{path} is not owned by root")
    mode = f.get("mode")
    if not isinstance(mode, int) or mode & 0o022:
        problems.append(f"{path} is group- or world-writable")
    for d in f.get("parents") or []:
        if want_root and d.get("owner_uid") != 0:
            problems.append(f"{d.get('path')} (above {path}) is not owned by root")
        if not isinstance(d.get("mode"), int) or d["mode"] & 0o022:
            problems.append(f"{d.get('path')} (above {path}) is group- or world-writable")
    if want_root and not f.get("parents"):
        problems.append(f"the directories above {path} were not examined")
    return problems


def judge_only_controller_key(facts: Mapping[str, Any]) -> Verdict:
    s = _sshd(facts)
    if s is None:
        return False, "no effective sshd configuration was read"
    expected = facts.get("expected") or {}
    akf = str(expected.get("authorized_keys_file", ""))
    want = str(expected.get("controller_key", "")).split()[:2]
    problems = []
    for name in ("authorizedkeyscommand", "authorizedprincipalscommand"):
        if _first(s, name, "none") != "none":
            problems.append(f"{name} is set")
    files = [p for v in s.get("authorizedkeysfile", []) for p in str(v).split()]
    if files != [akf]:
        problems.append(f"authorizedkeysfile is {' '.join(files) or 'unset'}, want only {akf}")
    key_file = facts.get("key_file")
    if not isinstance(key_file, Mapping) or key_file.get("path") != akf:
        problems.append(f"{akf} was not read")
    else:
        problems += _file_problems(key_file, want_root=bool(expected.get("root_owned_key_file", True)))
        lines = key_file.get("lines")
        if not isinstance(lines, list):
            lines = []
        keys = [ln for ln in lines if "key" in ln]
        stray = [ln for ln in lines if "key" not in ln]
        if stray:
            problems.append(f"{akf} has lines that are not keys (lines "
                            + ", ".join(str(ln.get("line")) for ln in stray[:5]) + ")")
        if len(keys) != 1 or [keys[0].get("type"), keys[0].get("key")] != want:
            problems.append(f"{akf} holds {len(keys)} keys, want exactly the controller's")
        for ln in keys:
            if ln.get("options"):
                problems.append(f"{akf} line {ln.get('line')} has options "
                                + ",".join(str(o).split("=", 1)[0] for o in ln["options"]))
    for other in facts.get("other_key_files") or []:
        path = other.get("path")
        if other.get("refused"):
            problems.append(f"{path} exists ({other['refused']})")
        elif any("key" in ln or "sha256" in ln for ln in other.get("lines") or []):
            problems.append(f"{path} holds authorized keys")
    for gone in expected.get("must_be_absent") or []:
        if gone in (facts.get("present_paths") or []):
            problems.append(f"{gone} still exists")
    if problems:
        return False, "; ".join(problems)
    return True, "the controller's key, in a root-owned file, is the only way to log in"


def judge_sshd_access(facts: Mapping[str, Any]) -> Verdict:
    s = _sshd(facts)
    if s is None:
        return False, "no effective sshd configuration was read"
    expected = facts.get("expected") or {}
    user = str(expected.get("user", ""))
    problems = []
    allow = [u for v in s.get("allowusers", []) for u in str(v).split()]
    if allow != [user]:
        problems.append(f"allowusers is {' '.join(allow) or 'unset'}, want only {user}")
    force = [str(v) for v in s.get("forcecommand", [])]
    want_force = expected.get("forcecommand")
    if want_force is None:
        if force and force != ["none"]:
            problems.append("forcecommand is set")
    elif force != [want_force]:
        problems.append("forcecommand is not exactly the one the provider sets")
    for name, ok in (("permituserenvironment", "no"), ("authorizedprincipalsfile", "none"),
                     ("trustedusercakeys", "none"), ("exposeauthinfo", "no"), ("permituserrc", "no")):
        value = _first(s, name, "(unset)")
        if value != ok:
            problems.append(f"{name} is {value}, want {ok}")
    if problems:
        return False, "; ".join(problems)
    return True, f"only {user} may log in; no forced command, user environment, principals or CA"


def judge_match_blocks(facts: Mapping[str, Any]) -> Verdict:
    sshd = facts.get("sshd")
    if not isinstance(sshd, Mapping) or not isinstance(sshd.get("match_blocks"), list):
        return False, "the sshd configuration files were not read"
    if sshd.get("config_problems"):
        return False, "; ".join(str(p) for p in sshd["config_problems"][:5])
    problems = []
    for block in sshd["match_blocks"]:
        for key, value in block.get("settings") or []:
            allowed = _MATCH_HARMLESS.get(str(key).lower(), ())
            if allowed is not None and str(value).lower() not in allowed:
                problems.append(f"Match {block.get('criteria')} ({block.get('file')}) sets {key} {value}")
    if problems:
        return False, "a Match block changes how clients authenticate or what they get: " + "; ".join(problems[:5])
    n = len(sshd["match_blocks"])
    return True, f"{n} Match blocks, none changing an authentication-relevant setting"


def judge_listeners(facts: Mapping[str, Any]) -> Verdict:
    """local: the CVM's own sshd on its port, and nothing listening that the CVM user or
    its sessions started. remote (Ubuntu/Debian guests): sshd (or systemd, for the
    socket-activated ssh.socket) on port 22 only; no other TCP listener on a non-loopback
    address."""
    s = _sshd(facts)
    listeners = facts.get("listeners")
    if s is None or not isinstance(listeners, list):
        return False, "the listening sockets were not read"
    expected = facts.get("expected") or {}
    rule = expected.get("listener_rule")
    port = str(expected.get("port", ""))
    problems = []
    ports = [str(p) for p in s.get("port", [])]
    if ports != [port]:
        problems.append(f"sshd listens on ports {' '.join(ports)}, want only {port}")
    if rule == "local":
        addrs = [str(a) for a in s.get("listenaddress", [])]
        if addrs != [f"127.0.0.1:{port}"]:
            problems.append(f"sshd listenaddress is {' '.join(addrs)}, want 127.0.0.1:{port}")
        for sock in listeners:
            if sock.get("cvm_owned"):
                problems.append(f"{sock.get('comm')} (pid {sock.get('pid')}) of this CVM listens on "
                                f"{sock.get('addr')}:{sock.get('port')}")
    elif rule == "remote":
        for sock in listeners:
            comm, p = str(sock.get("comm")), str(sock.get("port"))
            if comm in ("sshd", "systemd") or sock.get("pid") == 1:
                if p != port:
                    problems.append(f"{comm} listens on {sock.get('addr')}:{p}, want only port {port}")
            elif not sock.get("loopback"):
                problems.append(f"{comm} (pid {sock.get('pid')}) listens on {sock.get('addr')}:{p}")
    else:
        problems.append(f"no listener rule {rule!r}")
    if problems:
        return False, "; ".join(problems[:6])
    return True, f"sshd on port {port} is the only way in from the network"


def judge_passwords_locked(facts: Mapping[str, Any]) -> Verdict:
    accounts = facts.get("accounts")
    if not isinstance(accounts, list) or not accounts:
        return False, "no account was read"
    usable = [f"{a.get('user')} ({a.get('password')})" for a in accounts
              if a.get("password") != "locked"]
    if usable:
        return False, "accounts with a usable password: " + ", ".join(usable[:8])
    return True, f"{len(accounts)} accounts, none with a usable password"


def judge_update_processes(facts: Mapping[str, Any]) -> Verdict:
    procs = facts.get("update_processes")
    if not isinstance(procs, list):
        return False, "the processes were not examined"
    if procs:
        shown = "; ".join(f"pid {p.get('pid')} ({p.get('user')}, since {p.get('started')}) {p.get('command')!r}"
                          for p in procs[:5])
        return False, f"{len(procs)} processes started by controller sessions left running: {shown}"
    return True, "no process started by a controller session is left running"


def _judge_absent(facts: Mapping[str, Any], key: str, what: str) -> Verdict:
    found = facts.get(key)
    if not isinstance(found, list):
        return False, f"{what}: not examined"
    if found:
        return False, f"{what} present: " + "; ".join(str(f) for f in found[:5])
    return True, f"no {what}"


_JUDGES: dict[str, Callable[[Mapping[str, Any]], Verdict]] = {
    "password_auth_off": judge_password_auth,
    "root_login_off": judge_root_login,
    "only_controller_key": judge_only_controller_key,
    "sshd_access": judge_sshd_access,
    "sshd_match_blocks": judge_match_blocks,
    "listeners": judge_listeners,
    "passwords_locked": judge_passwords_locked,
    "agents_disabled": lambda f: _judge_absent(f, "agents", "cloud agent that can inject keys or run commands"),
    "serial_console_off": lambda f: _judge_absent(f, "serial_consoles", "serial console login"),
    "no_update_processes": judge_update_processes,
}


def judge(name: str, facts: Mapping[str, Any]) -> Verdict:
    fn = _JUDGES.get(name)
    if fn is None:
        return False, f"unknown check {name}"
    if facts.get("judge_version") != JUDGE_VERSION:
        return False, "facts in an older format (judged by an older, weaker judge): cannot be judged again"
    if facts.get("error"):
        return False, f"facts could not be gathered: {facts['error']}"
    try:
        return fn(facts)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        return False, f"malformed facts: {type(exc).__name__}"


def judge_all(facts: Mapping[str, Any]) -> list[tuple[str, bool, str]]:
    return [(name, *judge(name, facts)) for name in CHECKS]


def shadow_state(field: str) -> str:
    """A shadow password field reduced to what the judge needs (never the hash)."""
    if field == "":
        return "empty"
    if field in ("*", "!", "!!") or field.startswith(("!", "*")):
        return "locked"
    return "unlocked"
