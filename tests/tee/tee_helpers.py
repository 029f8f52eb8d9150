"""Test doubles for the Gramine side: a fake /dev/attestation, and an RA-TLS HTTPS server."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from duet.attestation import SimulatedSgx

MRENCLAVE = hashlib.sha256(b"duet test enclave").digest()
MRSIGNER = hashlib.sha256(b"duet test signer").digest()


class FakeAttestation:
    """A directory that behaves like Gramine's /dev/attestation pseudo-files.

    ``user_report_data`` and ``quote`` are FIFOs served by a thread: a writer's 64 bytes go
    in, and the next reader of ``quote`` gets a (simulated, real-format) DCAP quote over
    them — write-then-read, as under Gramine. ``tamper`` rewrites the report data before
    quoting (a broken or hostile quote source)."""

    def __init__(
        self,
        directory: Path,
        sgx: SimulatedSgx,
        *,
        attestation_type: str = "dcap",
        tamper: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.dir = directory
        self.sgx = sgx
        self.tamper = tamper
        self.quotes = 0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "attestation_type").write_text(attestation_type)
        (directory / "my_target_info").write_bytes(MRENCLAVE + bytes(512 - 32))
        os.mkfifo(directory / "user_report_data")
        os.mkfifo(directory / "quote")
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.dir / "user_report_data", "rb") as f:
                data = f.read()
            if self._stop:
                return
            quote = b""
            if len(data) == 64:
                rd = self.tamper(data) if self.tamper else data
                quote = self.sgx.quote(rd, mrenclave=MRENCLAVE, mrsigner=MRSIGNER)
                self.quotes += 1
            with open(self.dir / "quote", "wb") as f:
                f.write(quote)

    def close(self) -> None:
        import time

        self._stop = True
        deadline = time.monotonic() + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:  # wake the thread up from its blocking open() of the FIFO
                os.close(os.open(self.dir / "user_report_data", os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:  # ENXIO: the thread is not (yet) waiting on it
                if exc.errno != errno.ENXIO:
                    raise
            self._thread.join(timeout=0.05)


@contextmanager
def https_server(app: Any, certfile: Path, keyfile: Path, port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn over RA-TLS on 127.0.0.1 in a thread; yields the URL."""
    import time

    import uvicorn

    from duet.tee.ratls import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn_config(
        app, host="127.0.0.1", port=port, certfile=certfile, keyfile=keyfile, log_level="error", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
