"""The simulated TEE: real-format SGX DCAP quotes under a development root.

There is no SGX here, so the controller's quote is produced by a software quoting
"enclave" whose root CA lives in the data dir. Verification runs the very same dcap-qvl
code as for hardware; only the trust root differs, and a verifier accepts it only when
told to (`--trust-simulated`). Everything that rests on it is labelled SIMULATED.

MRENCLAVE is simulated as the SHA-256 over the duet package's source files, so it
changes whenever the controller's code does, as a real measurement would;
``--simulated-mrenclave HEX`` stands for another build of the same code (tests of upgrades).

Sealing (tee/seal.py) mimics EGETKEY with the MRENCLAVE key policy: the sealing key is
derived from a per-platform secret (the simulated CPU's fuse key, ``seal_fuse`` in the TEE
directory), this build's MRENCLAVE and the platform's CPUSVN (``--simulated-cpusvn N``).
A microcode update (another CPUSVN) or another build therefore cannot open the seal, as on
hardware. The CPUSVN only changes the sealing key: the quote keeps the development
platform's fixed CPUSVN (its TCB info knows no other).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from duet.attestation.simulated import SimulatedSgx
from duet.tee.base import Quote
from duet.tee.seal import seal_with, unseal_with

#: The CPUSVN a simulated platform has unless told otherwise (`--simulated-cpusvn`).
DEFAULT_CPUSVN = 1

MRSIGNER = hashlib.sha256(b"duet simulated enclave signer").digest()


def package_measurement() -> bytes:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(b"duet-simulated-mrenclave-v1\n")
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.digest()


class SimulatedTee:
    kind = "simulated"
    simulated = True

    def __init__(self, directory: Path, *, mrenclave: bytes | None = None, cpusvn: int = DEFAULT_CPUSVN) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if mrenclave is not None and len(mrenclave) != 32:
            raise ValueError("a simulated MRENCLAVE is 32 bytes")
        if not 0 <= cpusvn < 1 << 16:
            raise ValueError("a simulated CPUSVN is 0..65535")
        self._sgx = SimulatedSgx.load_or_create(directory)
        self._mrenclave = mrenclave if mrenclave is not None else package_measurement()
        self.cpusvn = cpusvn
        self._fuse = _fuse_key(directory / "seal_fuse")
        self._collateral = self._sgx.collateral()
        self._lock = threading.Lock()

    def quote(self, report_data: bytes) -> Quote:
        with self._lock:
            quote = self._sgx.quote(report_data, mrenclave=self._mrenclave, mrsigner=MRSIGNER)
        return Quote(
            quote=quote, collateral=self._collateral, simulated_root_ca=self._sgx.root_ca_der
        )

    def measurement(self) -> dict[str, str]:
        return {"mrenclave": self._mrenclave.hex(), "mrsigner": MRSIGNER.hex()}

    def _sealing_key(self) -> bytes:
        """EGETKEY(SEAL, MRENCLAVE policy) at this platform's CPUSVN, SIMULATED."""
        info = b"duet-simulated-egetkey-v1" + self._mrenclave + self.cpusvn.to_bytes(2, "big")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._fuse)

    def seal(self, plaintext: bytes) -> bytes:
        return seal_with(self._sealing_key(), plaintext, mrenclave=self._mrenclave, cpusvn=self.cpusvn)

    def unseal(self, blob: bytes) -> bytes:
        return unseal_with(self._sealing_key(), blob, mrenclave=self._mrenclave, cpusvn=self.cpusvn)


def _fuse_key(path: Path) -> bytes:
    """The simulated CPU's fuse secret: made once per simulated platform, never leaves it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _fuse_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    if len(raw) != 32:
        raise ValueError(f"{path} is not a simulated fuse key (32 bytes)")
    return raw
