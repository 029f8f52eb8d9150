"""The `local` provider: each CVM is a real OpenSSH `sshd` on 127.0.0.1.

It stands in for a confidential VM in development and tests, so it mirrors what the
real providers must do: the "CVM" generates its own host key (the controller learns it
only by connecting), the only login is the controller's key, and every other door
(passwords, keyboard-interactive, PAM, forwarding, agent, X11, tunnels, user rc files)
is shut. The exact sshd configuration and the effective settings (`sshd -T`) go into
`Provisioned.launch`, so the log shows how the CVM was locked down.

Layout. The provider's own files for one CVM live in ``base_dir/<cvm_id>/`` (0700)::

    state.json                 what ensure_running/delete need (port, user, paths)
    sshd_config                generated; recorded verbatim in the log
    ssh_host_ed25519_key[.pub] the CVM's host key, made by ssh-keygen
    sshd.pid, sshd.log         written by sshd (-E)
    authorized_keys            (unprivileged mode) the controller's key only
    work/                      (unprivileged mode) the CVM's working directory

The CVM's working directory (commands start there) is ``base_dir/<cvm_id>/work`` when
unprivileged, and in root mode ``homes_dir/<cvm_id>`` (default
``/var/lib/duet-cvm-homes``). In root mode the controller's key is in
``homes_dir/<cvm_id>.platform/authorized_keys``: root-owned (0644), as is every directory
above it, and not under the home the CVM user owns (a user who owns a directory can move
any entry in it aside, ``~/.ssh`` included, and StrictModes accepts what they put there).
Root-mode homes live outside ``base_dir`` on purpose: the
controller's data dir (keys, sealed state) is 0700 and CVM users must not be able to
even traverse it — and could not reach a home below it.

Two modes:

* **root** (CI, this machine): each CVM gets its own unprivileged system user
  ``duet-<8 hex>`` whose home is its working directory and whose shell is /bin/sh (no
  rc files to slow each command). sshd runs as root, as it would in a VM. A
  ``useradd -r`` user has a locked password (``!``), and sshd without PAM then refuses
  even key logins, so the password field is set to ``*`` (no password can match, but
  the account is usable).
* **unprivileged**: sshd runs as the current user, who is also the CVM user. Its home
  is the real home, so a ``ForceCommand`` changes into ``work/`` first. sshd refuses
  `signal` requests for forced-command sessions; the SSH channel then kills a timed-out
  command through its ``DUET_RUN`` marker instead (see `duet.cvm.ssh`).

StrictModes stays on. sshd then checks the authorized_keys file and every directory
above it (up to the user's home, else up to ``/``): each must be owned by root or the
user and not group/world-writable. In root mode every one is root's. In unprivileged mode it lives in the CVM directory,
so ``base_dir`` must not sit below a world-writable directory such as /tmp (unless that
is inside your home); `create` checks this and says so.

sshd runs in its own session (``setsid``), detached from the controller, so a crash of
the controller (even ``kill -9``) leaves the CVM running; it is found again through its
pid file, and `ensure_running` restarts it from its config with the same host key and,
if still free, the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from duet.attestation.cvm_kinds import CvmKind, InstanceBinding, TeeOffer
from duet.attestation.simulated import SimulatedSnp
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.cvm.errors import CvmNotFound, ProvisioningFailed
from duet.cvm.guest import report_client as guest_tool
from duet.cvm.provider import CVM_MARKER_ENV, RUN_MARKER_ENV, Provisioned
from duet.cvm.psp import SimulatedPsp

_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin"
# sshd gets a minimal environment: nothing of the controller's (secrets, proxies, ...)
# leaks into the CVM's server or its sessions.
_SSHD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

_CVM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Paths go into sshd_config unquoted (and AuthorizedKeysFile expands %-tokens), so only
# characters with no meaning there are allowed.
_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9/_.+@,=-]*$")
_PUBKEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|"
    r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) ([A-Za-z0-9+/]+={0,3})$"
)
_STATE_VERSION = 1
#: The launch measurement of every local CVM: a stand-in for the digest of a CVM image
#: (there is no image; the value is fixed so users can pin it in their expectations).
LOCAL_MEASUREMENT = hashlib.sha384(b"duet local simulated CVM image v1").digest()
SNP_GUEST_POLICY = 0x30000  # SMT allowed, reserved bit 17 set; no debug, no migration agent
DEFAULT_HOMES_DIR = Path("/var/lib/duet-cvm-homes")
_START_TIMEOUT_S = 10.0
_PORT_ATTEMPTS = 8
# Settings from `sshd -T` that show which login paths are open; recorded at launch.
_AUDITED_SETTINGS = (
    "port",
    "listenaddress",
    "pubkeyauthentication",
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "hostbasedauthentication",
    "gssapiauthentication",
    "kerberosauthentication",
    "permitemptypasswords",
    "permitrootlogin",
    "usepam",
    "strictmodes",
    "authenticationmethods",
    "authorizedkeysfile",
    "authorizedkeyscommand",
    "authorizedprincipalsfile",
    "authorizedprincipalscommand",
    "trustedusercakeys",
    "allowusers",
    "forcecommand",
    "allowagentforwarding",
    "allowtcpforwarding",
    "allowstreamlocalforwarding",
    "x11forwarding",
    "permittunnel",
    "permittty",
    "permituserenvironment",
    "permituserrc",
    "subsystem",
    "hostkey",
)


def _which(name: str) -> str:
    found = shutil.which(name, path=_TOOL_PATH)
    if found is None:
        raise ProvisioningFailed(
            f"{name} not found (install openssh-server / openssh-client; "
            "`make sshd` does it on Debian/Ubuntu)"
        )
    return found


@dataclass
class _State:
    """What survives a controller restart, in ``state.json``."""

    version: int
    cvm_id: str
    instance_id: str
    privileged: bool
    user: str
    uid: int
    port: int
    workdir: str
    authorized_key: str
    spec: dict[str, object]
    created_at: float


class _PortInUse(Exception):
    pass


async def _tool(*argv: str, timeout_s: float = 30.0) -> tuple[int, str]:
    """Run a short-lived tool; return (exit status, stdout+stderr text)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_SSHD_ENV,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ProvisioningFailed(f"{argv[0]} timed out after {timeout_s:.0f}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace").strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_alive(pid: int, needle: bytes) -> bool:
    """Is `pid` a live (not zombie) process whose command line contains `needle`?

    Checking the command line guards against pid reuse after a reboot or crash; the
    zombie check matters where nothing reaps orphans (e.g. a container's pid 1).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): fall back to existence
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = stat.rsplit(b")", 1)[-1].split()[0]
    if state in (b"Z", b"X"):
        return False
    return needle in cmdline


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _children_of(ppid: int) -> list[int]:
    found = []
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == ppid and fields[0] not in (b"Z", b"X"):
            found.append(pid)
    return found


def _marked_or_owned(marker: bytes, uid: int | None) -> list[int]:
    """Live processes carrying `marker` in their environment, or owned by `uid`."""
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            if stat.rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
                continue
            if uid is not None and os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(pid)
                continue
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def _strict_modes_problem(path: Path, uid: int, home: Path | None) -> str | None:
    """Mirror sshd's StrictModes check of an authorized_keys path (auth_secure_path):
    every directory above it, up to the user's home or else `/`, must be owned by root
    or the user and not be group- or world-writable."""
    real = Path(os.path.realpath(path))
    home_real = Path(os.path.realpath(home)) if home is not None else None
    for d in real.parents:
        st = d.stat()
        if st.st_uid not in (0, uid) or st.st_mode & 0o022:
            why = "group/world-writable" if st.st_mode & 0o022 else "owned by another user"
            return f"{d} is {why}"
        if home_real is not None and d == home_real:
            break
    return None


class LocalProvider:
    """Local CVMs: one sshd per CVM on 127.0.0.1, state under ``base_dir/<cvm_id>/``."""

    name = "local"
    #: SIMULATED kinds only: the simulated platform sets HOST_DATA (SNP) or MRCONFIGID (TDX)
    #: per CVM.
    tees: ClassVar[Mapping[str, TeeOffer]] = {
        "simulated-snp": TeeOffer(CvmKind.SIMULATED_SNP, InstanceBinding.HOST_DATA),
        "simulated-tdx": TeeOffer(CvmKind.SIMULATED_TDX, InstanceBinding.MRCONFIGID),
    }

    def __init__(
        self, base_dir: Path, *, homes_dir: Path | None = None, platform: SimulatedSnp | None = None,
        tdx: SimulatedTdx | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        #: The simulated "hardware" (a PSP holding the dev VCEK, and the dev TDX attestation
        #: key); None: the local CVMs have no evidence at all.
        self.psp = None if platform is None else SimulatedPsp(platform, tdx)
        self.homes_dir = Path(homes_dir or DEFAULT_HOMES_DIR).absolute()
        self._locks: dict[str, asyncio.Lock] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._version_cache: str | None = None
        self._user_lock = asyncio.Lock()

    # ------------------------------------------------------------------ paths

    def cvm_dir(self, cvm_id: str) -> Path:
        """The directory holding everything of one CVM (for tests and diagnostics)."""
        if not _CVM_ID_RE.match(cvm_id):
            raise ProvisioningFailed(f"invalid CVM id {cvm_id!r}")
        return self.base_dir / cvm_id

    @staticmethod
    def _privileged() -> bool:
        return os.geteuid() == 0

    @staticmethod
    def user_for(cvm_id: str) -> str:
        """The system user of a CVM in root mode: ``duet-`` + 8 hex digits of the id."""
        head = cvm_id.replace("-", "")[:8].lower()
        if not re.fullmatch(r"[0-9a-f]{8}", head):
            head = hashlib.sha256(cvm_id.encode()).hexdigest()[:8]
        return f"duet-{head}"

    def _lock(self, cvm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cvm_id, asyncio.Lock())

    # ------------------------------------------------------------------ state

    def _load(self, cvm_id: str) -> _State:
        path = self.cvm_dir(cvm_id) / "state.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CvmNotFound(f"no local CVM {cvm_id!r} under {self.base_dir}") from None
        except (OSError, ValueError) as exc:
            raise ProvisioningFailed(f"unreadable state for CVM {cvm_id}: {exc}") from None
        if raw.get("version") != _STATE_VERSION:
            raise ProvisioningFailed(
                f"CVM {cvm_id}: unsupported state version {raw.get('version')}"
            )
        return _State(**raw)

    def _save(self, st: _State) -> None:
        d = self.cvm_dir(st.cvm_id)
        tmp = d / "state.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(st), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "state.json")

    @staticmethod
    def _workdir(st: _State) -> Path:
        return Path(st.workdir)

    def platform_dir(self, cvm_id: str) -> Path:
        """What the simulated hardware shows the guest: its VCEK bundle and the launch
        values (measurement, HOST_DATA). Outside the CVM user's home, owned by root in
        root mode, so the guest reads but does not rewrite its launch parameters."""
        if self._privileged():
            return self.homes_dir / f"{cvm_id}.platform"
        return self.cvm_dir(cvm_id) / "platform"

    def lockdown_context(self, cvm_id: str) -> dict[str, object]:
        """Paths and names the lockdown checks need for this CVM."""
        st = self._load(cvm_id)
        return {
            "privileged": st.privileged,
            "user": st.user,
            "uid": st.uid,
            "marker": f"{CVM_MARKER_ENV}={cvm_id}",
            "sshd": _which("sshd"),
            "sshd_config": str(self.cvm_dir(cvm_id) / "sshd_config"),
            "authorized_keys_file": str(self._authorized_keys_path(st)),
            "home": str(self._workdir(st)),
            "port": st.port,
            "forcecommand": None if st.privileged else self._force_command(st),
            "sshd_pid": self._running_pid(cvm_id),
        }

    def _install_platform(self, st: _State) -> dict[str, object] | None:
        """Lay out what the guest sees of its platform: the report tool, a copy of its
        host public key (as a guest reads /etc/ssh/*.pub) and the PSP's socket."""
        if self.psp is None:
            return None
        pdir = self._make_platform_dir(st)
        shutil.copyfile(Path(guest_tool.__file__), pdir / "report_client.py")
        shutil.copyfile(self.cvm_dir(st.cvm_id) / "ssh_host_ed25519_key.pub", pdir / "ssh_host_ed25519_key.pub")
        for f in ("report_client.py", "ssh_host_ed25519_key.pub"):
            os.chmod(pdir / f, 0o644)
        return {
            "kind": self._kind(st),
            "platform_dir": str(pdir),
            "report_tool": str(pdir / "report_client.py"),
            "measurement": LOCAL_MEASUREMENT.hex(),
            "host_data": self._host_data(st).hex(),
            "policy": SNP_GUEST_POLICY,
        }

    def _make_platform_dir(self, st: _State) -> Path:
        pdir = self.platform_dir(st.cvm_id)
        pdir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(pdir, 0o755)  # noqa: S103 - the guest reads it; only root writes it
        return pdir

    @staticmethod
    def _kind(st: _State) -> str:
        return str(st.spec.get("tee", "simulated-snp"))

    @staticmethod
    def _host_data(st: _State) -> bytes:
        raw = bytes.fromhex(str(st.spec.get("host_data", "00" * 32)))
        if len(raw) != 32:
            raise ProvisioningFailed("spec.host_data must be 32 bytes of hex")
        return raw

    async def _start_psp(self, st: _State) -> None:
        if self.psp is None:
            return
        await self.psp.serve(
            st.cvm_id,
            self.platform_dir(st.cvm_id) / "psp.sock",
            uid=st.uid,
            measurement=LOCAL_MEASUREMENT,
            host_data=self._host_data(st),
            policy=SNP_GUEST_POLICY,
            kind=self._kind(st),
        )

    def _authorized_keys_path(self, st: _State) -> Path:
        """Root mode: in the CVM's root-owned platform dir, never under the user's home
        (the user owns the home, so could swap any directory in it)."""
        if st.privileged:
            return self.platform_dir(st.cvm_id) / "authorized_keys"
        return self.cvm_dir(st.cvm_id) / "authorized_keys"

    def _force_command(self, st: _State) -> str:
        return f'cd {self._workdir(st)} && exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"'


    # ------------------------------------------------------------------ config

    def _config_text(self, st: _State) -> str:
        d = self.cvm_dir(st.cvm_id)
        self._workdir(st)
        lines = [
            f"# duet local CVM {st.cvm_id} ({st.instance_id}); generated by duet, do not edit",
            f"Port {st.port}",
            "ListenAddress 127.0.0.1",
            "AddressFamily inet",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            "HostKeyAlgorithms ssh-ed25519",
            f"PidFile {d / 'sshd.pid'}",
            "LogLevel INFO",
            # The only login: the controller's key, in a file holding nothing else.
            f"AllowUsers {st.user}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            f"AuthorizedKeysFile {self._authorized_keys_path(st)}",
            "AuthorizedKeysCommand none",
            "AuthorizedPrincipalsFile none",
            "TrustedUserCAKeys none",
            "StrictModes yes",
            # Every other door shut.
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "HostbasedAuthentication no",
            "GSSAPIAuthentication no",
            "KerberosAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            "DisableForwarding yes",
            "AllowAgentForwarding no",
            "AllowTcpForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PermitTTY no",
            "PermitUserEnvironment no",
            "PermitUserRC no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "Compression no",
            "LoginGraceTime 30",
            "ClientAliveInterval 30",
            "ClientAliveCountMax 4",
            # Room for the controller's concurrent commands on one connection.
            "MaxSessions 64",
            # Markers that let a timeout / delete find every process a command started.
            f"AcceptEnv {RUN_MARKER_ENV}",
            f"SetEnv {CVM_MARKER_ENV}={st.cvm_id}",
        ]
        if not st.privileged:
            # The CVM user's home is the real home: start commands in the CVM's workdir.
            lines.append(f"ForceCommand {self._force_command(st)}")
        return "\n".join(lines) + "\n"

    def _write_config(self, st: _State) -> str:
        text = self._config_text(st)
        path = self.cvm_dir(st.cvm_id) / "sshd_config"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return text

    async def _sshd_version(self) -> str:
        if self._version_cache is None:
            _, out = await _tool(_which("sshd"), "-V")
            # `sshd -V` prints the version (and a usage note on old versions) to stderr.
            self._version_cache = out.splitlines()[0] if out else "unknown"
        return self._version_cache

    async def _effective(self, st: _State) -> dict[str, list[str]]:
        """`sshd -T`: the settings sshd will actually use, for the log."""
        cfg = self.cvm_dir(st.cvm_id) / "sshd_config"
        rc, out = await _tool(_which("sshd"), "-T", "-f", str(cfg))
        if rc != 0:
            raise ProvisioningFailed(f"sshd -T rejected the configuration: {out[-2000:]}")
        eff: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key in _AUDITED_SETTINGS:
                eff.setdefault(key, []).append(value)
        return eff

    # ------------------------------------------------------------------ sshd process

    def _pid(self, cvm_id: str) -> int | None:
        try:
            return int((self.cvm_dir(cvm_id) / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _running_pid(self, cvm_id: str) -> int | None:
        pid = self._pid(cvm_id)
        cfg = str(self.cvm_dir(cvm_id) / "sshd_config").encode()
        if pid is not None and _proc_alive(pid, cfg):
            return pid
        return None

    async def _start_sshd(self, st: _State) -> None:
        """Start sshd detached (own session) and wait until it listens.

        `-D` keeps sshd from forking again, so the child we start *is* the listener and
        we see its exit status if it fails (its daemon mode forks before binding). sshd
        writes its pid file only after binding, which is our readiness signal.
        """
        d = self.cvm_dir(st.cvm_id)
        pidfile, logfile = d / "sshd.pid", d / "sshd.log"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        try:
            log_offset = logfile.stat().st_size
        except FileNotFoundError:
            log_offset = 0
        if st.privileged:
            # sshd's privilege-separation chroot; /run is a tmpfs, so recreate it.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        argv = [_which("sshd"), "-D", "-f", str(d / "sshd_config"), "-E", str(logfile)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_SSHD_ENV,
            cwd=d,
            start_new_session=True,
            close_fds=True,
        )
        self._children[st.cvm_id] = proc
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = self._log_tail(logfile, log_offset)
                if "Address already in use" in tail or "Cannot bind any address" in tail:
                    raise _PortInUse(tail)
                raise ProvisioningFailed(f"sshd exited with status {rc}: {tail or '(no log)'}")
            if self._pid(st.cvm_id) == proc.pid:
                return
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise ProvisioningFailed(
                    f"sshd did not start within {_START_TIMEOUT_S:.0f}s: "
                    f"{self._log_tail(logfile, log_offset)}"
                )
            await asyncio.sleep(0.005)

    @staticmethod
    def _log_tail(logfile: Path, offset: int) -> str:
        try:
            with open(logfile, "rb") as f:
                f.seek(offset)
                return f.read()[-4000:].decode(errors="replace").strip()
        except OSError:
            return ""

    async def _start_with_port_retry(self, st: _State) -> str:
        """Start sshd, moving to another free port if the current one was taken.
        Returns the config text in force."""
        text = self._write_config(st)
        for attempt in range(_PORT_ATTEMPTS):
            try:
                await self._start_sshd(st)
                return text
            except _PortInUse:
                if attempt == _PORT_ATTEMPTS - 1:
                    raise ProvisioningFailed(
                        f"sshd could not bind a port after {_PORT_ATTEMPTS} attempts"
                    ) from None
                st.port = _free_port()
                self._save(st)
                text = self._write_config(st)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _stop_sshd(self, cvm_id: str) -> None:
        """Stop the listener and its per-connection children (open SSH connections)."""
        pid = self._running_pid(cvm_id)
        cfg = str(self.cvm_dir(cvm_id) / "sshd_config").encode()
        if pid is not None:
            children = _children_of(pid)
            for p in [pid, *children]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGTERM)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and (
                _proc_alive(pid, cfg) or any(_proc_alive(c, b"sshd") for c in children)
            ):
                await asyncio.sleep(0.01)
            for p in [pid, *children]:
                if _proc_alive(p, b"sshd"):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(p, signal.SIGKILL)
        child = self._children.pop(cvm_id, None)
        if child is not None:
            if child.poll() is None and pid is None:
                child.kill()
            for _ in range(200):  # reap it (it is our child) without blocking the loop
                if child.poll() is not None:
                    break
                await asyncio.sleep(0.01)

    async def _kill_sessions(self, cvm_id: str, uid: int | None) -> None:
        """Kill what the CVM's sessions left running: processes of its own user (root
        mode) or carrying its ``DUET_CVM`` marker (both modes)."""
        marker = f"{CVM_MARKER_ENV}={cvm_id}".encode()
        for _ in range(50):
            pids = _marked_or_owned(marker, uid)
            if not pids:
                return
            for p in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ users (root mode)

    @staticmethod
    async def _user_tool(*argv: str) -> None:
        """useradd/userdel, retried while another process holds /etc/passwd's lock
        (parallel test workers create users at the same time)."""
        out = ""
        for attempt in range(20):
            rc, out = await _tool(*argv)
            if rc == 0:
                return
            if "lock" not in out.lower():
                break
            await asyncio.sleep(0.05 * (attempt + 1))
        raise ProvisioningFailed(f"{' '.join(argv[:2])} failed: {out}")

    async def _create_user(self, user: str, home: Path, cvm_id: str) -> int:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pass
        else:
            raise ProvisioningFailed(f"system user {user} already exists")
        async with self._user_lock:
            # -r: system account; -M: we make the home; -p '*': a useradd -r account is
            # locked ('!'), which sshd without PAM treats as "no login at all".
            await self._user_tool(
                _which("useradd"),
                "-r",
                "-M",
                "-U",
                "-s",
                "/bin/sh",
                "-d",
                str(home),
                "-p",
                "*",
                "-c",
                f"duet local CVM {cvm_id}",
                user,
            )
        return pwd.getpwnam(user).pw_uid

    async def _delete_user(self, user: str) -> None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return
        async with self._user_lock:
            # -f: zombies (where pid 1 does not reap) would otherwise keep it "busy".
            await self._user_tool(_which("userdel"), "-f", user)

    # ------------------------------------------------------------------ API

    def _provisioned(
        self, st: _State, config_text: str, effective: dict[str, list[str]] | None, version: str
    ) -> Provisioned:
        akf = self._authorized_keys_path(st)
        launch: dict[str, object] = {
            "provider": self.name,
            "instance_id": st.instance_id,
            "mode": "root" if st.privileged else "unprivileged",
            "user": st.user,
            "uid": st.uid,
            "host": "127.0.0.1",
            "port": st.port,
            "workdir": str(self._workdir(st)),
            "sshd": _which("sshd"),
            "sshd_version": version,
            "sshd_config": config_text,
            "authorized_keys_file": str(akf),
            "authorized_keys": f"{st.authorized_key}\n",
            "host_key": "ed25519, generated in the CVM directory by ssh-keygen; "
            "the controller learns it by connecting",
            "spec": dict(st.spec),
        }
        if st.privileged:
            launch["user_account"] = {"shell": "/bin/sh", "password_field": "*", "system": True}
        if effective is not None:
            launch["sshd_effective"] = effective
        return Provisioned(
            instance_id=st.instance_id, host="127.0.0.1", port=st.port, user=st.user, launch=launch
        )

    async def create(
        self, cvm_id: str, *, authorized_key: str, spec: Mapping[str, object]
    ) -> Provisioned:
        """Create the CVM's directory, host key, user (root mode) and config; start sshd."""
        d = self.cvm_dir(cvm_id)
        line = authorized_key.strip()
        fields = line.split()
        if (
            "\n" in line
            or "\r" in line
            or len(fields) < 2
            or not _PUBKEY_RE.match(f"{fields[0]} {fields[1]}")
        ):
            raise ProvisioningFailed("authorized_key must be one OpenSSH public key line")
        key_line = f"{fields[0]} {fields[1]}"  # no comment, no options: nothing else
        if not _SAFE_PATH_RE.match(str(self.base_dir)):
            raise ProvisioningFailed(
                f"base dir {self.base_dir} has characters sshd_config cannot take unquoted"
            )
        async with self._lock(cvm_id):
            privileged = self._privileged()
            self.base_dir.mkdir(parents=True, exist_ok=True)
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                raise ProvisioningFailed(
                    f"CVM {cvm_id} already exists in {self.base_dir}"
                ) from None
            st = _State(
                version=_STATE_VERSION,
                cvm_id=cvm_id,
                instance_id=f"local-{uuid.uuid4().hex}",
                privileged=privileged,
                user=self.user_for(cvm_id) if privileged else pwd.getpwuid(os.geteuid()).pw_name,
                # Root mode: -1 until useradd made the user, so a failed create never
                # deletes an account it did not make.
                uid=-1 if privileged else os.geteuid(),
                port=_free_port(),
                workdir="",  # set once created, so a failed create removes only its own
                authorized_key=key_line,
                spec={k: v for k, v in spec.items()},
                created_at=time.time(),
            )
            try:
                return await self._create(st, d)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await self._destroy(cvm_id, st)
                if isinstance(exc, ProvisioningFailed):
                    raise
                if isinstance(exc, Exception):
                    raise ProvisioningFailed(f"creating local CVM {cvm_id}: {exc}") from exc
                raise

    async def _create(self, st: _State, d: Path) -> Provisioned:
        if st.privileged:
            work = self.homes_dir / st.cvm_id
            if not _SAFE_PATH_RE.match(str(work)):
                raise ProvisioningFailed(f"homes dir {self.homes_dir} has unsafe characters")
            if not self.homes_dir.exists():
                self.homes_dir.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    # Traversable, not listable: users reach their home, not others' names.
                    os.chmod(self.homes_dir, 0o711)  # noqa: S103
            for parent in work.parents:
                if not parent.stat().st_mode & 0o001:
                    raise ProvisioningFailed(
                        f"{parent} is not searchable by others (o+x), so CVM users cannot "
                        f"reach their working directory under {self.homes_dir}"
                    )
        else:
            work = d / "work"
        self._save(st)
        rc, out = await _tool(
            _which("ssh-keygen"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "",
            "-f",
            str(d / "ssh_host_ed25519_key"),
        )
        if rc != 0:
            raise ProvisioningFailed(f"ssh-keygen failed: {out}")

        try:
            work.mkdir(mode=0o700)
        except FileExistsError:
            raise ProvisioningFailed(f"{work} already exists") from None
        st.workdir = str(work)
        self._save(st)
        if st.privileged:
            st.uid = await self._create_user(st.user, work, st.cvm_id)
            self._save(st)
            pw = pwd.getpwnam(st.user)
            os.chown(work, pw.pw_uid, pw.pw_gid)
            self._make_platform_dir(st)
        akf = self._authorized_keys_path(st)
        fd = os.open(akf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if st.privileged else 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(st.authorized_key + "\n")
        if not st.privileged:
            home = Path(pwd.getpwuid(st.uid).pw_dir)
            problem = _strict_modes_problem(akf, st.uid, home)
            if problem is not None:
                raise ProvisioningFailed(
                    f"sshd's StrictModes would refuse {akf}: {problem}. Unprivileged, put "
                    "the data directory inside your home or another path whose directories "
                    "are owned by you or root and not group/world-writable"
                )

        platform = self._install_platform(st)
        await self._start_psp(st)
        text = await self._start_with_port_retry(st)
        effective = await self._effective(st)
        prov = self._provisioned(st, text, effective, await self._sshd_version())
        if platform is not None:
            prov.launch["simulated_tdx" if platform["kind"] == "simulated-tdx" else "simulated_snp"] = platform
        return prov

    #: How `set_authorized_keys` installs a key (logged in `key_rotated` entries).
    key_rotation_how = "host-side: the local provider rewrites the CVM's authorized_keys file (root-owned in root mode)"

    async def set_authorized_keys(self, cvm_id: str, lines: list[str]) -> None:
        """Replace the controller's authorized key(s) of a CVM (a key rotation), host-side
        as at provisioning: the file is rewritten atomically with the same owner and mode."""
        clean = []
        for line in lines:
            fields = line.strip().split()
            if len(fields) < 2 or not _PUBKEY_RE.match(f"{fields[0]} {fields[1]}"):
                raise ProvisioningFailed("an authorized key must be one OpenSSH public key line")
            clean.append(f"{fields[0]} {fields[1]}")
        if not clean:
            raise ProvisioningFailed("at least one authorized key")
        async with self._lock(cvm_id):
            st = self._load(cvm_id)
            akf = self._authorized_keys_path(st)
            tmp = akf.with_name(akf.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if st.privileged else 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("".join(c + "\n" for c in clean))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, akf)
            st.authorized_key = clean[-1]
            self._save(st)

    async def ensure_running(self, cvm_id: str) -> Provisioned:
        """Restart sshd from the CVM's config if it is gone; same host key, and the same
        port unless another process took it (then `Provisioned.port` says the new one)."""
        async with self._lock(cvm_id):
            st = self._load(cvm_id)
            version = await self._sshd_version()
            if self.psp is not None and not self.psp.running(cvm_id):
                await self._start_psp(st)
            if self._running_pid(cvm_id) is not None:
                text = (self.cvm_dir(cvm_id) / "sshd_config").read_text()
                return self._provisioned(st, text, None, version)
            if st.privileged:
                try:
                    pw = pwd.getpwnam(st.user)
                except KeyError:
                    raise ProvisioningFailed(
                        f"CVM {cvm_id}: its system user {st.user} no longer exists"
                    ) from None
                if pw.pw_uid != st.uid:
                    raise ProvisioningFailed(
                        f"CVM {cvm_id}: user {st.user} now has uid {pw.pw_uid}, not {st.uid}"
                    )
            await self._stop_sshd(cvm_id)  # reap a dead child, if it was ours
            text = await self._start_with_port_retry(st)
            return self._provisioned(st, text, None, version)

    async def status(self, cvm_id: str) -> str:
        if not (self.cvm_dir(cvm_id) / "state.json").exists():
            return "missing"
        return "running" if self._running_pid(cvm_id) is not None else "stopped"

    async def delete(self, cvm_id: str) -> None:
        """Stop sshd and everything its sessions started, remove the user and the
        directory. Deleting a missing CVM is a no-op."""
        async with self._lock(cvm_id):
            d = self.cvm_dir(cvm_id)
            if not d.exists():
                return
            try:
                st: _State | None = self._load(cvm_id)
            except CvmNotFound:
                st = None
            await self._destroy(cvm_id, st)
        self._locks.pop(cvm_id, None)

    async def _destroy(self, cvm_id: str, st: _State | None) -> None:
        if self.psp is not None:
            await self.psp.stop(cvm_id)
        await self._stop_sshd(cvm_id)
        privileged = st.privileged if st is not None else self._privileged()
        uid: int | None = None
        if privileged and st is not None and st.uid > 0:
            with contextlib.suppress(KeyError):
                if pwd.getpwnam(st.user).pw_uid == st.uid:
                    uid = st.uid
        await self._kill_sessions(cvm_id, uid)
        if uid is not None and st is not None:
            await self._delete_user(st.user)
        if st is not None and st.workdir:
            shutil.rmtree(st.workdir, ignore_errors=True)
        shutil.rmtree(self.platform_dir(cvm_id), ignore_errors=True)
        d = self.cvm_dir(cvm_id)
        if d.exists():
            shutil.rmtree(d)
