"""Gather the lockdown facts of one CVM, as root, without following anything a user controls.

Standard library only: the same file runs in-process on the host for `local` CVMs and,
sent as the text of a logged command, in the guest for real CVMs
(``sudo -n env -i PATH=... python3 -I -S -c <this file> <params>``).

Every file is opened with ``openat`` one path component at a time from a directory fd,
each with ``O_NOFOLLOW``: a symbolic link anywhere on the path is refused, never followed.
Owner, mode and link count are checked on the open fd *before* a byte is read, and a file
that must be root's but is not is refused unread. For local CVMs nothing in the CVM
user's home is read at all (its presence is the fact), so a user who plants a link to a
secret of the controller gets only "a symbolic link (not followed)" into the log.

The output is facts, not file dumps: each authorized key line with its options, the
effective sshd settings and every `Match` block, the listening sockets, and accounts as
locked / unlocked. `duet.ledger.lockdown` judges them (and `duet verify` judges them again).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from typing import Any

JUDGE_VERSION = 2
_MAX_FILE = 1 << 16
_CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
AGENTS = ("waagent", "walinuxagent", "google_guest_agent", "google_osconfig_agent", "amazon-ssm-agent")
AGENT_UNITS = ("walinuxagent", "waagent", "google-guest-agent", "google-osconfig-agent",
               "amazon-ssm-agent", "snap.amazon-ssm-agent.amazon-ssm-agent")
SERIAL_TTYS = ("ttyS0", "ttyS1", "hvc0", "ttyAMA0")
#: Effective settings worth recording (the judges read these; the rest is noise).
SSHD_SETTINGS = (
    "port", "listenaddress", "pubkeyauthentication", "passwordauthentication",
    "kbdinteractiveauthentication", "challengeresponseauthentication", "hostbasedauthentication",
    "gssapiauthentication", "kerberosauthentication", "permitemptypasswords", "permitrootlogin",
    "usepam", "strictmodes", "authenticationmethods", "authorizedkeysfile", "authorizedkeyscommand",
    "authorizedkeyscommanduser", "authorizedprincipalsfile", "authorizedprincipalscommand",
    "trustedusercakeys", "allowusers", "denyusers", "allowgroups", "denygroups", "forcecommand",
    "permituserenvironment", "permituserrc", "exposeauthinfo", "acceptenv", "setenv",
    "allowagentforwarding", "allowtcpforwarding", "allowstreamlocalforwarding", "x11forwarding",
    "permittunnel", "permittty", "subsystem", "chrootdirectory",
)

try:  # the pure parser, when running inside duet; a copy of it when sent to a guest
    from duet.ledger.lockdown import parse_authorized_keys, shadow_state
except ImportError:  # pragma: no cover - guest side
    pass


class Refused(Exception):
    """A path that is not read: a symbolic link, not a regular file, not root's, ..."""


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)


def _root_link(dfd: int, name: str) -> str | None:
    """The target of `name` in the directory `dfd`, if it is a link only root could have
    made or changed: owned by root, in a root-owned directory no one else may write
    (merged-/usr's ``/bin -> usr/bin``). Any other link is not followed."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return None
    d = os.fstat(dfd)
    if not stat.S_ISLNK(st.st_mode) or st.st_uid != 0 or d.st_uid != 0 or _mode(d) & 0o022:
        return None
    return os.readlink(name, dir_fd=dfd)


def open_no_follow(path: str, *, require_root: bool, read: bool = True) -> tuple[bytes, dict[str, Any]]:
    """Read `path` by walking it with openat/O_NOFOLLOW from `/`; refuse links (but those
    only root controls, in directories above the file), non-regular files, hard-linked
    files and (with `require_root`) anything not owned by root — all checked before
    reading. Returns the bytes and the facts of the file and its parents."""
    if not path.startswith("/") or "/../" in path + "/" or "/./" in path + "/":
        raise Refused("not a plain absolute path")
    parts = [p for p in path.split("/") if p]
    parents: list[dict[str, Any]] = []
    dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    hops = 0
    try:
        cur = ""
        while len(parts) > 1:
            name = parts.pop(0)
            st = os.fstat(dfd)
            parents.append({"path": cur or "/", "owner_uid": st.st_uid, "mode": _mode(st)})
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as exc:
                target = _root_link(dfd, name)
                if target is None or hops >= 8 or ".." in target.split("/"):
                    raise Refused(_why(exc, f"{cur}/{name}")) from None
                hops += 1
                parts = [p for p in target.split("/") if p and p != "."] + parts
                if target.startswith("/"):
                    os.close(dfd)
                    dfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    cur = ""
                continue
            os.close(dfd)
            dfd = nfd
            cur += "/" + name
        st = os.fstat(dfd)
        parents.append({"path": cur or "/", "owner_uid": st.st_uid, "mode": _mode(st)})
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
        except OSError as exc:
            raise Refused(_why(exc, path)) from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file (not read)")
        if require_root and st.st_uid != 0:
            raise Refused(f"owned by uid {st.st_uid}, not root (not read)")
        if st.st_nlink != 1:
            raise Refused(f"has {st.st_nlink} hard links (not read)")
        data = os.read(fd, _MAX_FILE + 1) if read else b""
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise Refused("larger than 64 KiB (not judged)")
    return data, {"path": path, "owner_uid": st.st_uid, "mode": _mode(st), "parents": parents}


def _why(exc: OSError, path: str) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return f"{path} is a symbolic link (not followed)"
    if exc.errno == errno.ENOTDIR:
        return f"{path} is not a directory (a link or a file; not followed)"
    if exc.errno == errno.ENOENT:
        return f"{path} does not exist"
    return f"{path}: {exc.strerror}"


def present(path: str) -> str | None:
    """What is at `path` (lstat of the last component, parents walked without following),
    or None if nothing is."""
    try:
        open_no_follow(path, require_root=False, read=False)
        return "a regular file"
    except Refused as exc:
        text = str(exc)
        return None if text.endswith("does not exist") else text
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def key_file(path: str, *, require_root: bool) -> dict[str, Any]:
    try:
        data, facts = open_no_follow(path, require_root=require_root)
    except Refused as exc:
        return {"path": path, "refused": str(exc)}
    facts["lines"] = parse_authorized_keys(data)
    return facts


def user_key_files(home: str, *, read: bool, skip: str) -> list[dict[str, Any]]:
    """authorized_keys files in a home. `read` False (host-side): present files are facts
    but never read, whatever they are."""
    out = []
    for name in ("authorized_keys", "authorized_keys2"):
        path = f"{home.rstrip('/')}/.ssh/{name}"
        if path == skip:
            continue
        if not read:
            what = present(path)
            if what is not None:
                out.append({"path": path, "refused": what if "link" in what or "not a" in what
                            else f"{what} in the CVM user's home (not read)"})
            continue
        f = key_file(path, require_root=False)
        if not str(f.get("refused", "")).endswith("does not exist"):
            out.append(f)
    return out


# --- sshd ---------------------------------------------------------------------------

def sshd_effective(sshd: str, config: str | None, user: str) -> dict[str, list[str]]:
    argv = [sshd, "-T"] + (["-f", config] if config else []) + ["-C", f"user={user},host=localhost,addr=127.0.0.1"]
    proc = subprocess.run(argv, capture_output=True, env=_CLEAN_ENV, stdin=subprocess.DEVNULL, timeout=30,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError("sshd -T failed: " + proc.stderr.decode("utf-8", "replace").strip()[-300:])
    eff: dict[str, list[str]] = {}
    for line in proc.stdout.decode("utf-8", "replace").split("\n"):
        key, _, value = line.partition(" ")
        if key in SSHD_SETTINGS:
            eff.setdefault(key, []).append(value)
    return eff


def sshd_config_blocks(path: str, *, require_root: bool) -> dict[str, Any]:
    """Every `Match` block of sshd_config and its Includes, with its settings."""
    blocks: list[dict[str, Any]] = []
    problems: list[str] = []
    files: list[str] = []

    def read(p: str, depth: int, block: dict[str, Any] | None) -> dict[str, Any] | None:
        if depth > 16:
            problems.append(f"{p}: Include nested too deeply")
            return block
        try:
            data, _ = open_no_follow(p, require_root=require_root)
        except (Refused, OSError) as exc:
            problems.append(f"{p}: {exc}")
            return block
        files.append(p)
        for raw in data.decode("utf-8", "replace").split("\n"):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = re.match(r"([A-Za-z0-9]+)\s*(?:=\s*|\s+)(.*)$", line) or re.match(r"([A-Za-z0-9]+)()$", line)
            if m is None:
                problems.append(f"{p}: a line sshd_config does not allow")
                continue
            key, value = m.group(1).lower(), m.group(2).strip()
            if key == "include":
                for pattern in value.split():
                    full = pattern if pattern.startswith("/") else "/etc/ssh/" + pattern
                    for inc in sorted(glob.glob(full)):
                        block = read(inc, depth + 1, block)
            elif key == "match":
                block = None if value.lower() == "all" else {"file": p, "criteria": value, "settings": []}
                if block is not None:
                    blocks.append(block)
            elif block is not None:
                block["settings"].append([key, value])
        return block

    read(path, 0, None)
    return {"files": files, "match_blocks": blocks, "config_problems": problems}


# --- sockets and processes -----------------------------------------------------------

def _hex_addr(text: str) -> tuple[str, int]:
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = ".".join(str(b) for b in raw[::-1])
    else:
        words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
        b = b"".join(words)
        ip = ":".join(b[i:i + 2].hex() for i in range(0, 16, 2))
    return ip, int(port, 16)


def _socket_owners() -> dict[str, int]:
    owners: dict[str, int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owners.setdefault(target[8:-1], int(pid))
        except OSError:
            continue
    return owners


def _proc_text(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read(4096).decode("utf-8", "replace")
    except OSError:
        return ""


def _proc_uid(pid: int) -> int | None:
    for line in _proc_text(pid, "status").split("\n"):
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def _has_env(pid: int, marker: bytes, *, prefix: bool = False) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read(1 << 20).split(b"\0")
    except OSError:
        return False
    if prefix:
        return any(v.startswith(marker + b"=") for v in env)
    return marker in env


def listeners(*, cvm_uid: int | None = None, marker: str | None = None, only_cvm: bool = False) -> list[dict[str, Any]]:
    owners = _socket_owners()
    out = []
    for proto in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{proto}") as f:
                rows = f.read().split("\n")[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "0A":
                continue
            ip, port = _hex_addr(cols[1])
            pid = owners.get(cols[9])
            loopback = ip.startswith("127.") or ip == "0000:0000:0000:0000:0000:0000:0000:0001"
            item: dict[str, Any] = {"proto": proto, "addr": ip, "port": port, "pid": pid, "loopback": loopback}
            if pid is not None:
                item["comm"] = _proc_text(pid, "comm").strip()
                item["uid"] = _proc_uid(pid)
                owned = (cvm_uid is not None and item["uid"] == cvm_uid) or (
                    marker is not None and _has_env(pid, marker.encode()))
                item["cvm_owned"] = owned
            if only_cvm and not item.get("cvm_owned"):
                continue
            out.append(item)
    return out


def _stat_fields(pid: int) -> list[str]:
    return _proc_text(pid, "stat").rsplit(")", 1)[-1].split()


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f.read().split("\n"):
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def session_processes(*, cvm_uid: int | None, marker: str | None, sshd_exe: str,
                      sshd_pid: int | None = None) -> list[dict[str, Any]]:
    """Live processes that a controller session started (local: the CVM's marker in their
    environment or the CVM's uid; remote: the ``DUET_RUN`` marker of a controller command,
    or a login-session cgroup of the controller's user). sshd itself (the controller's own
    connection) and this gatherer with its ancestors are not counted. Detached processes
    (nohup, setsid) keep both their environment and their session's cgroup."""
    import datetime

    own: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in own:
        own.add(pid)
        fields = _stat_fields(pid)
        pid = int(fields[1]) if len(fields) > 1 else 0
    boot = _boot_time()
    ticks = os.sysconf("SC_CLK_TCK")
    uid_slice = f"/user-{cvm_uid}.slice/session-" if cvm_uid is not None else None
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in own:
            continue
        p = int(name)
        fields = _stat_fields(p)
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            continue
        uid = _proc_uid(p)
        cgroup = _proc_text(p, "cgroup").split("\n")[0].split(":")[-1]
        by_marker = marker is not None and _has_env(p, marker.encode())
        by_uid = sshd_pid is not None and cvm_uid is not None and uid == cvm_uid  # local root mode
        in_session = uid_slice is not None and uid_slice in cgroup  # whatever uid (sudo)
        by_run = marker is None and _has_env(p, b"DUET_RUN", prefix=True)
        if not (by_marker or by_uid or in_session or by_run):
            continue
        if os.path.basename(_exe(p)) in ("sshd", "sshd-session", "sshd-auth") and (
                sshd_pid is None or _descends(p, sshd_pid)):
            continue  # the controller's own connection
        try:
            user = pwd.getpwuid(uid).pw_name if uid is not None else "?"
        except KeyError:
            user = str(uid)
        started = datetime.datetime.fromtimestamp(boot + int(fields[19]) / ticks, datetime.timezone.utc)  # noqa: UP017 - guests may run 3.10
        out.append({"pid": p, "ppid": int(fields[1]), "sid": int(fields[3]), "user": user,
                    "command": _proc_text(p, "cmdline").replace("\0", " ").strip()[:200],
                    "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "cgroup": cgroup[:120]})
    return sorted(out, key=lambda x: x["pid"])


def _descends(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        fields = _stat_fields(pid)
        pid = int(fields[1]) if len(fields) > 1 else 0
        seen += 1
    return pid == ancestor


# --- accounts, agents, consoles ------------------------------------------------------

def accounts(users: list[str] | None) -> list[dict[str, Any]]:
    data, _ = open_no_follow("/etc/shadow", require_root=True)
    out = []
    for line in data.decode("utf-8", "replace").split("\n"):
        fields = line.split(":")
        if len(fields) < 2 or not fields[0]:
            continue
        if users is None or fields[0] in users:
            out.append({"user": fields[0], "password": shadow_state(fields[1])})
    return out


def agents_local() -> list[str]:
    found = [f"installed: {p}" for a in AGENTS if (p := shutil.which(a, path=_CLEAN_ENV["PATH"]))]
    found += [f"enabled: {u}" for u in AGENT_UNITS
              if os.path.lexists(f"/etc/systemd/system/multi-user.target.wants/{u}.service")]
    return found


def serial_local() -> list[str]:
    found = [f"enabled: serial-getty@{t}" for t in SERIAL_TTYS
             if os.path.lexists(f"/etc/systemd/system/getty.target.wants/serial-getty@{t}.service")]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            args = _proc_text(int(pid), "cmdline").split("\0")
            if args and "getty" in os.path.basename(args[0]) and any(
                    re.search(r"ttyS|hvc|ttyAMA", a) for a in args[1:]):
                found.append(f"running: {' '.join(args).strip()}")
    return found


def _systemctl(*args: str) -> tuple[int, str]:
    proc = subprocess.run(["systemctl", *args], capture_output=True, env=_CLEAN_ENV, timeout=30, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace").strip()


def _units(units: list[str]) -> list[str]:
    if not os.path.isdir("/run/systemd/system"):
        return ["cannot check: systemd is not running"]
    found = []
    for u in units:
        _, state = _systemctl("is-enabled", u)
        if state.split("\n")[0] in ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated"):
            found.append(f"enabled: {u} ({state})")
        if _systemctl("is-active", "--quiet", u)[0] == 0:
            found.append(f"running: {u}")
    return found


# --- the whole set ------------------------------------------------------------------

def gather(params: dict[str, Any]) -> dict[str, Any]:
    """params: where (local | remote), user, authorized_keys_file, sshd, sshd_config
    (local), cvm_uid / marker (local), homes (local: the CVM user's home), plus the
    `expected` values the judges compare with (recorded as given)."""
    where = params["where"]
    user = str(params["user"])
    akf = str(params["authorized_keys_file"])
    facts: dict[str, Any] = {"judge_version": JUDGE_VERSION, "where": where,
                             "expected": params.get("expected", {})}
    require_root = bool(params.get("require_root", True))
    try:
        cfg = params.get("sshd_config") or "/etc/ssh/sshd_config"
        sshd: dict[str, Any] = {"effective": sshd_effective(str(params.get("sshd", "/usr/sbin/sshd")),
                                                           params.get("sshd_config"), user)}
        sshd.update(sshd_config_blocks(str(cfg), require_root=require_root))
        facts["sshd"] = sshd
        facts["key_file"] = key_file(akf, require_root=require_root)
        if where == "local":
            home = str(params["home"])
            facts["other_key_files"] = user_key_files(home, read=False, skip=akf)
            facts["listeners"] = listeners(cvm_uid=params.get("cvm_uid"), marker=params.get("marker"),
                                           only_cvm=True)
            facts["accounts"] = accounts([user]) if params.get("privileged") else [
                {"user": user, "password": "locked",
                 "note": "unprivileged local CVM: the developer's own account; sshd takes keys only"}]
            facts["agents"] = agents_local()
            facts["serial_consoles"] = serial_local()
            facts["update_processes"] = session_processes(
                cvm_uid=params.get("cvm_uid"), marker=params.get("marker"), sshd_exe=str(params["sshd"]),
                sshd_pid=params.get("sshd_pid"))
        else:
            homes = sorted({p.pw_dir for p in pwd.getpwall() if p.pw_dir.startswith("/")} | {"/root"})
            facts["other_key_files"] = [f for h in homes for f in user_key_files(h, read=True, skip=akf)]
            facts["listeners"] = listeners()
            facts["accounts"] = accounts(None)
            facts["agents"] = _units(list(AGENT_UNITS))
            facts["serial_consoles"] = _units([f"serial-getty@{t}.service" for t in SERIAL_TTYS])
            try:
                duet_uid: int | None = pwd.getpwnam(user).pw_uid
            except KeyError:  # no such user: no session of it to find (DUET_RUN still is)
                duet_uid = None
            facts["update_processes"] = session_processes(cvm_uid=duet_uid, marker=None,
                                                          sshd_exe=os.path.realpath("/usr/sbin/sshd"))
        facts["present_paths"] = [p for p in params.get("must_be_absent", []) if present(p) is not None]
    except Exception as exc:  # any gap fails every check that needs it, never passes
        facts["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return facts


def main() -> None:  # pragma: no cover - runs in the guest
    params = json.loads(sys.argv[1])
    sys.stdout.write(json.dumps(gather(params), sort_keys=True) + "\n")


def guest_source() -> str:
    """This file plus the pure parser it needs, as one standalone script for the guest."""
    here = os.path.dirname(os.path.abspath(__file__))
    parser = os.path.join(here, "..", "..", "ledger", "lockdown.py")
    with open(parser) as f:
        judge_src = f.read()
    with open(os.path.abspath(__file__)) as f:
        own = f.read()
    # One `from __future__` import, first; `python3 -c` runs the script as __main__.
    own = own.replace("from __future__ import annotations\n", "", 1)
    return judge_src + "\n" + own


def source_digest() -> str:
    return hashlib.sha256(guest_source().encode()).hexdigest()


if __name__ == "__main__":  # pragma: no cover
    main()
