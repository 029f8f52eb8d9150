"""The simulated TEE: real-format SGX DCAP quotes under a development root.

There is no SGX here, so the controller's quote is produced by a software quoting
"enclave" whose root CA lives in the data dir. Verification runs the very same dcap-qvl
code as for hardware; only the trust root differs, and a verifier accepts it only when
told to (`--trust-simulated`). Everything that rests on it is labelled SIMULATED.

MRENCLAVE is simulated as the SHA-256 over the duet package's source files, so it
changes whenever the controller's code does, as a real measurement would.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from duet.attestation.simulated import SimulatedSgx
from duet.tee.base import Quote

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

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._sgx = SimulatedSgx.load_or_create(directory)
        self._mrenclave = package_measurement()
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
