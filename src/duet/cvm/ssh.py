"""The controller's SSH channel to a CVM: one pinned, persistent connection per CVM.

Why it is built this way:

* **Pinned host key.** The first connection captures the server's host key and returns
  it; the controller logs it and binds it to attestation evidence (invariant 3). From
  then on every (re)connection trusts that key only — a different key aborts the key
  exchange (`HostKeyMismatch`) before the client authenticates or sends anything.
* **The client key never leaves the controller.** It is passed in as an object; this
  module never logs, prints or writes it (`export_private` exists only so the controller
  can put it in sealed storage). No agent, no `~/.ssh` files, no config files are read,
  so nothing on the controller's host can add keys or change options.
* **Bounded memory, exact accounting.** Output is streamed: at most `cap` bytes of each
  stream are kept, while the SHA-256 and byte count cover the *full* stream, so the log
  can commit to output it does not store.
* **A timeout really stops the command.** Closing a channel does not kill a non-PTY
  command in OpenSSH; we send a `signal KILL` channel request (sshd kills the session's
  process group) and, where the server refuses it (forced-command sessions), kill the
  processes carrying this run's marker environment variable over a second channel.
* **Latency.** A command costs one channel open, one exec request (plus the marker
  `env` request, ~0.1 ms) and the process itself over the persistent connection: ≈3 ms
  for `true` locally, the same as a plain asyncssh `conn.run`. asyncssh (and asyncio)
  set TCP_NODELAY on the client socket. sshd sets it only for interactive (PTY/X11)
  sessions, but it writes exit-status/EOF/close together, so no ~40 ms Nagle/delayed-ACK
  stalls show up (measured: p90 within ~1.5x of p50).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from duet.cvm.errors import AuthenticationFailed, CvmUnreachable, HostKeyMismatch
from duet.cvm.provider import RUN_MARKER_ENV

log = logging.getLogger(__name__)

DEFAULT_CAP = 1 << 20
"""Bytes kept per output stream unless the caller asks otherwise (1 MiB)."""

#: Called with ("stdout" | "stderr", bytes) for output within the cap, as it arrives.
OnData = Callable[[str, bytes], None]

_KILL_GRACE_S = 0.5
"""How long to wait for the server to report a killed command before escalating."""


# --------------------------------------------------------------------------- keys


_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com")


def generate_client_key() -> asyncssh.SSHKey:
    """A fresh Ed25519 key for one CVM: generated inside the controller (invariant 2)."""
    return asyncssh.generate_private_key("ssh-ed25519")


def export_private(key: asyncssh.SSHKey) -> bytes:
    """The key in OpenSSH private format, unencrypted: for sealed storage only."""
    return bytes(key.export_private_key("openssh"))


def import_private(data: bytes) -> asyncssh.SSHKey:
    """Inverse of `export_private`."""
    return asyncssh.import_private_key(data)


def _key_line(key: asyncssh.SSHKey) -> str:
    """`<algorithm> <base64>` without a comment: the canonical form we log and pin."""
    fields = bytes(key.export_public_key("openssh")).decode("ascii").split()
    return f"{fields[0]} {fields[1]}"


def public_line(key: asyncssh.SSHKey) -> str:
    """The public half as one OpenSSH line (for authorized_keys and the log)."""
    return _key_line(key)


def parse_public_line(line: str) -> asyncssh.SSHKey:
    """Parse an OpenSSH public key line (a trailing comment is ignored)."""
    fields = line.strip().split()
    if len(fields) < 2:
        raise ValueError("not an OpenSSH public key line")
    return asyncssh.import_public_key(f"{fields[0]} {fields[1]}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RunResult:
    """What a command did. Byte counts and hashes cover the full streams; `stdout` and
    `stderr` hold at most `cap` bytes each (`*_truncated` says whether more was sent).

    A timed-out command has `timed_out=True` and `exit_status=None`; `signal` is the
    signal the server reported (e.g. "KILL"), if it reported one.
    """

    exit_status: int | None
    signal: str | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    stdout_sha256: str
    stderr_sha256: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float


class _CappedStream:
    """Keeps the first `cap` bytes of a stream; hashes and counts all of it."""

    __slots__ = ("_cap", "_chunks", "_hash", "_kept", "total")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0
        self._hash = hashlib.sha256()
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        """Count and hash `data`; keep and return the part within the cap (b"" past it)."""
        self.total += len(data)
        self._hash.update(data)
        room = self._cap - self._kept
        if room > 0:
            piece = data if len(data) <= room else data[:room]
            self._chunks.append(piece)
            self._kept += len(piece)
            return piece
        return b""

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def truncated(self) -> bool:
        return self.total > self._kept

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _Collector(asyncssh.SSHClientSession[bytes]):
    """Session callbacks for one command: streams output into capped buffers.

    `opened` tells the caller whether the channel was opened: asyncssh sends the exec
    request only after `connection_made`, so a failure before it means the command was
    certainly not sent and may be retried on a fresh connection.
    """

    def __init__(self, cap: int, on_data: OnData | None = None) -> None:
        self.stdout = _CappedStream(cap)
        self.stderr = _CappedStream(cap)
        self._on_data = on_data
        self.opened = False
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.opened = True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        name = "stderr" if datatype == asyncssh.EXTENDED_DATA_STDERR else "stdout"
        kept = (self.stderr if name == "stderr" else self.stdout).feed(data)
        if kept and self._on_data is not None:
            self._on_data(name, kept)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def _wait_closed(collector: _Collector, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the channel to close; True if it did."""
    if timeout > 0 and not collector.closed.done():
        # asyncio.wait neither cancels the future on timeout nor spawns a task.
        await asyncio.wait((collector.closed,), timeout=timeout)
    return collector.closed.done()


def _marker_kill_command(token: str) -> str:
    """Kill every process whose environment carries this run's marker.

    The marker (`DUET_RUN=<random token>`) is inherited by everything the command starts,
    including processes that left its process group; the killing shell, grep and sed do
    not carry it. Linux-only (/proc); elsewhere it finds nothing and does no harm.
    """
    return (
        f"p=$(grep -lzx '{RUN_MARKER_ENV}={token}' /proc/[0-9]*/environ 2>/dev/null"
        " | sed -n 's,^/proc/\\([0-9]*\\)/environ$,\\1,p');"
        ' [ -z "$p" ] || kill -KILL $p 2>/dev/null; true'
    )


# --------------------------------------------------------------------------- connection


def _host_key_algs(pinned: asyncssh.SSHKey | None) -> list[str] | tuple[()]:
    """Host key algorithms to offer: the pinned key's first, then every other one.

    The server picks the first offered algorithm it has a key for, so it shows the pinned
    key whenever it still has one. Offering the others too means a server that lost that
    key type presents another key — which fails verification (`HostKeyMismatch`) instead
    of failing the negotiation with a bare connection reset.
    """
    if pinned is None:
        return ()
    first = [alg.decode() for alg in pinned.sig_algorithms]
    rest = [alg.decode() for alg in get_default_public_key_algs()]
    return first + [alg for alg in rest if alg not in first]


class CvmConnection:
    """One persistent, host-key-pinned SSH connection to one CVM.

    Safe for concurrent `run` calls (each uses its own channel). The connection is opened
    lazily and re-opened — still pinned — when it was lost.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        client_key: asyncssh.SSHKey,
        pinned_host_key: str | None,
        connect_timeout_s: float = 10.0,
        keepalive_s: float = 15.0,
    ) -> None:
        self._host = host
        self._port = port
        self._user = user
        self._client_key = client_key
        self._pinned: asyncssh.SSHKey | None = (
            parse_public_line(pinned_host_key) if pinned_host_key is not None else None
        )
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._conn: asyncssh.SSHClientConnection | None = None
        self._host_key: str | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never show the key
        pin = self._host_key or (_key_line(self._pinned) if self._pinned else None)
        return f"CvmConnection({self._user}@{self._host}:{self._port}, host_key={pin!r})"

    @property
    def host_key(self) -> str | None:
        """The host key verified on a connection made by this object (None before the
        first successful `connect`). Once set, it is the pin for every reconnection."""
        return self._host_key

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> str:
        """Connect (if not connected) and return the server's host key line.

        Without a pin this is the trust-on-first-use step: the key is captured and
        pinned for every later connection, and the caller must bind it to evidence.
        Raises `HostKeyMismatch` if a pin exists and the server shows another key.
        """
        async with self._lock:
            await self._connect_locked()
        assert self._host_key is not None
        return self._host_key

    async def _ensure(self) -> asyncssh.SSHClientConnection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._lock:
            return await self._connect_locked()

    async def _connect_locked(self) -> asyncssh.SSHClientConnection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        pinned = self._pinned
        try:
            conn = await asyncssh.connect(
                self._host,
                self._port,
                username=self._user,
                client_keys=[self._client_key],
                # Trust exactly the pinned key; None only before anything is pinned.
                known_hosts=([pinned], [], []) if pinned is not None else None,
                server_host_key_algs=_host_key_algs(pinned),
                x509_trusted_certs=None,
                config=None,
                agent_path=None,
                agent_forwarding=False,
                password=None,
                preferred_auth="publickey",
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                gss_auth=False,
                gss_kex=False,
                connect_timeout=self._connect_timeout_s,
                login_timeout=self._connect_timeout_s,
                keepalive_interval=self._keepalive_s,
                keepalive_count_max=3,
                # AES-GCM runs in OpenSSL (AES-NI) in one call per packet; asyncssh's
                # default, chacha20-poly1305, computes Poly1305 in Python. Both are AEAD.
                encryption_algs=_CIPHERS,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyMismatch(
                self._mismatch_message(f"server key not trusted: {exc.reason}")
            ) from None
        except asyncssh.KeyExchangeFailed as exc:
            if pinned is not None and "host key" in exc.reason.lower():
                raise HostKeyMismatch(
                    self._mismatch_message(f"server offers no {pinned.algorithm.decode()} host key")
                ) from None
            raise CvmUnreachable(f"{self._where()}: key exchange failed: {exc.reason}") from None
        except asyncssh.PermissionDenied as exc:
            raise AuthenticationFailed(
                f"{self._where()}: the server refused the controller's key: {exc.reason}"
            ) from None
        except asyncssh.Error as exc:
            raise CvmUnreachable(f"{self._where()}: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise CvmUnreachable(f"{self._where()}: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            # asyncssh validates options locally; e.g. it needs a local user name
            # (USER/LOGNAME or a passwd entry), which a minimal enclave may lack.
            raise CvmUnreachable(f"{self._where()}: cannot set up the client: {exc}") from None

        server_key = conn.get_server_host_key()
        if server_key is None:  # pragma: no cover - asyncssh always has one after kex
            conn.abort()
            raise CvmUnreachable(f"{self._where()}: no server host key after key exchange")
        if pinned is not None and server_key.public_data != pinned.public_data:
            # Defence in depth: asyncssh already enforced this during key exchange.
            conn.abort()
            raise HostKeyMismatch(self._mismatch_message("server key differs"))
        line = _key_line(server_key)
        self._pinned = server_key
        self._host_key = line
        self._conn = conn
        return conn

    def _where(self) -> str:
        return f"ssh {self._user}@{self._host}:{self._port}"

    def _mismatch_message(self, detail: str) -> str:
        assert self._pinned is not None
        return (
            f"{self._where()}: host key mismatch ({detail}); pinned "
            f"{_key_line(self._pinned)}; the connection was refused and nothing was sent"
        )

    async def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 1.0)

    async def run(
        self, command: str, *, timeout_s: float = 60.0, cap: int = DEFAULT_CAP,
        stdin: bytes = b"", on_data: OnData | None = None,
    ) -> RunResult:
        """Run `command` with the login shell, `stdin` then EOF on its input, and return
        its result. `on_data` sees each piece of output kept (within `cap`) as it arrives.

        A non-zero exit is a result, not an error. Errors: `HostKeyMismatch`;
        `CvmUnreachable` when the CVM cannot be reached (the command was not sent) or the
        connection broke after sending it (`may_have_run=True`; never retried).
        """
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if cap < 0:
            raise ValueError("cap must be >= 0")
        start = time.perf_counter()
        deadline = start + timeout_s
        token = secrets.token_hex(16)
        for attempt in (1, 2):
            conn = await self._ensure()
            collector = _Collector(cap, on_data)
            try:
                async with asyncio.timeout(max(deadline - time.perf_counter(), 0.001)):
                    chan, _ = await conn.create_session(
                        lambda c=collector: c,  # type: ignore[misc]
                        command,
                        env={RUN_MARKER_ENV: token},
                        request_pty=False,
                        encoding=None,
                    )
                break
            except TimeoutError:
                # A hung server: give up on this connection. If the channel was open the
                # exec request may have been delivered.
                await self._drop(conn)
                raise CvmUnreachable(
                    f"{self._where()}: no session within {timeout_s:g}s",
                    may_have_run=collector.opened,
                ) from None
            except (asyncssh.Error, OSError) as exc:
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                lost = conn.is_closed()
                if lost:
                    await self._drop(conn)
                if collector.opened:
                    # The exec request may have reached the server.
                    raise CvmUnreachable(
                        f"{self._where()}: {'connection lost' if lost else 'refused'} "
                        f"while starting the command: {reason}",
                        may_have_run=lost,
                    ) from None
                if lost and attempt == 1:
                    log.info("%s: connection lost; reconnecting", self._where())
                    continue
                raise CvmUnreachable(f"{self._where()}: cannot open a session: {reason}") from None

        timed_out = False
        try:
            if stdin:
                chan.write(stdin)
            chan.write_eof()
            if not await _wait_closed(collector, deadline - time.perf_counter()):
                timed_out = True
                await self._kill(conn, chan, collector, token)
        except asyncio.CancelledError:
            # The caller gave up (e.g. controller shutdown): do not leave it running.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kill(conn, chan, collector, token), 3.0)
            chan.close()
            raise

        lost_exc = collector.closed.result() if collector.closed.done() else None
        if (
            lost_exc is not None
            and not timed_out
            and collector.exit_status is None
            and collector.exit_signal is None
        ):
            await self._drop(conn)
            raise CvmUnreachable(
                f"{self._where()}: connection lost while the command was running: {lost_exc}",
                may_have_run=True,
            )
        duration_ms = (time.perf_counter() - start) * 1000.0
        out, err = collector.stdout, collector.stderr
        return RunResult(
            exit_status=None if timed_out else collector.exit_status,
            signal=collector.exit_signal,
            timed_out=timed_out,
            stdout=out.data,
            stderr=err.data,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            stdout_sha256=out.sha256,
            stderr_sha256=err.sha256,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_ms=duration_ms,
        )

    async def _kill(
        self,
        conn: asyncssh.SSHClientConnection,
        chan: asyncssh.SSHClientChannel[bytes],
        collector: _Collector,
        token: str,
    ) -> None:
        """Stop a timed-out command: signal first, then the run marker, then close."""
        with contextlib.suppress(OSError):
            chan.send_signal("KILL")
        if await _wait_closed(collector, _KILL_GRACE_S):
            return
        # The server refused or could not deliver the signal (e.g. a forced-command
        # session), or a process outside the group holds the output open.
        if not conn.is_closed():
            killer = _Collector(0)
            with contextlib.suppress(asyncssh.Error, OSError):
                kchan, _ = await conn.create_session(
                    lambda c=killer: c,  # type: ignore[misc]
                    _marker_kill_command(token),
                    request_pty=False,
                    encoding=None,
                )
                kchan.write_eof()
                if not await _wait_closed(killer, 5.0):
                    kchan.close()
        if await _wait_closed(collector, _KILL_GRACE_S):
            return
        chan.close()
        await _wait_closed(collector, _KILL_GRACE_S)

    async def close(self) -> None:
        """Close the connection; a later `run` reconnects (pinned)."""
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2.0)


async def connect_after_boot(conn: CvmConnection, *, boot_timeout_s: float, interval_s: float = 3.0) -> str:
    """The first connection to a cloud CVM: a cloud API reports the VM created once it
    runs, while its guest is still booting (and cloud-init still writing the one key), so
    an unreachable sshd is retried until `boot_timeout_s` has passed. Only unreachability
    is retried: a refused key or a host-key problem is an answer, and fails at once."""
    deadline = time.monotonic() + boot_timeout_s
    while True:
        try:
            return await conn.connect()
        except AuthenticationFailed:
            raise
        except CvmUnreachable:
            if time.monotonic() + interval_s >= deadline:
                raise
            await asyncio.sleep(interval_s)
