"""A twin of Linux's configfs-tsm report interface (`/sys/kernel/config/tsm/report`), as a
FUSE filesystem, for the GCP SEV-SNP twin: `mkdir` makes a report entry, writing `inblob`
sets the 64-byte report data, reading `outblob` returns an SNP report over it signed by a
SIMULATED VCEK (dev ARK), `auxblob` the GHCB certificate table (VCEK, ASK, ARK), and
`provider` says `sev_guest`; `rmdir` removes the entry. With `tdx` (the GCP TDX twin)
`outblob` is a SIMULATED TD quote (v4, dev DCAP root) over `inblob`, `auxblob` is empty
and `provider` says `tdx_guest`, as a TD's kernel answers. The kernel's rules that matter to
a reader are kept: the report is made once per entry, from what `inblob` held.

Run as a process: `python tsm_twin.py MOUNTPOINT STATE_DIR [tdx]` (foreground; unmount to
stop). Needs /dev/fuse, libfuse3 and the `mfusepy` bindings; mounted as root with
`allow_other` so the guest's user can use it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

_FILES = ("inblob", "outblob", "auxblob", "provider", "generation")


def make_ops(snp: Any, tdx: Any = None) -> Any:
    import mfusepy as fuse

    from duet.cvm.guest.collect import build_cert_table

    class Tsm(fuse.Operations):  # type: ignore[misc]
        def __init__(self) -> None:
            self.entries: dict[str, dict[str, bytes]] = {}
            self.now = time.time()
            self.aux = b"" if tdx is not None else build_cert_table(
                {"vcek": snp.vcek_der, "ask": _der(snp.ask_pem), "ark": _der(snp.ark_pem)})

        def _split(self, path: str) -> tuple[str, str]:
            parts = [p for p in path.split("/") if p]
            padded = [*parts, "", ""]
            return padded[0], padded[1]

        def _content(self, entry: dict[str, bytes], name: str) -> bytes:
            if name == "outblob":
                if "outblob" not in entry:
                    if len(entry["inblob"]) != 64:
                        raise fuse.FuseOSError(errno.EINVAL)
                    entry["outblob"] = tdx.quote(entry["inblob"]) if tdx is not None else \
                        snp.report(entry["inblob"], measurement=bytes(48))
                return entry["outblob"]
            if name == "auxblob":
                return self.aux
            if name == "provider":
                return b"tdx_guest\n" if tdx is not None else b"sev_guest\n"
            if name == "generation":
                return b"1\n"
            return entry["inblob"]

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            base = {"st_atime": self.now, "st_mtime": self.now, "st_ctime": self.now, "st_uid": 0, "st_gid": 0}
            top, name = self._split(path)
            if not top or (top in self.entries and not name):
                if top and top not in self.entries:
                    raise fuse.FuseOSError(errno.ENOENT)
                return {**base, "st_mode": stat.S_IFDIR | 0o777, "st_nlink": 2}
            entry = self.entries.get(top)
            if entry is None or name not in _FILES:
                raise fuse.FuseOSError(errno.ENOENT)
            return {**base, "st_mode": stat.S_IFREG | 0o666, "st_nlink": 1,
                    "st_size": len(self._content(entry, name)) if name != "outblob" or len(entry["inblob"]) == 64
                    else 0}

        def readdir(self, path: str, fh: Any) -> list[str]:
            top, _ = self._split(path)
            return [".", "..", *(self.entries if not top else _FILES)]

        def mkdir(self, path: str, mode: int) -> int:
            top, name = self._split(path)
            if name or top in self.entries:
                raise fuse.FuseOSError(errno.EEXIST if top in self.entries else errno.EPERM)
            self.entries[top] = {"inblob": b""}
            return 0

        def rmdir(self, path: str) -> int:
            top, _ = self._split(path)
            if self.entries.pop(top, None) is None:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def open(self, path: str, flags: int) -> int:
            self.getattr(path)
            return 0

        def truncate(self, path: str, length: int, fh: Any = None) -> int:
            top, name = self._split(path)
            if name != "inblob" or top not in self.entries:
                raise fuse.FuseOSError(errno.EACCES)
            entry = self.entries[top]
            entry["inblob"] = entry["inblob"][:length]
            entry.pop("outblob", None)
            return 0

        def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
            top, name = self._split(path)
            if name != "inblob" or top not in self.entries:
                raise fuse.FuseOSError(errno.EACCES)
            entry = self.entries[top]
            entry["inblob"] = entry["inblob"][:offset].ljust(offset, b"\0") + data
            entry.pop("outblob", None)
            return len(data)

        def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
            top, name = self._split(path)
            entry = self.entries.get(top)
            if entry is None:
                raise fuse.FuseOSError(errno.ENOENT)
            return self._content(entry, name)[offset:offset + size]

    return Tsm()


def _der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def main(argv: list[str]) -> int:
    import mfusepy as fuse

    from duet.attestation.simulated.snp import SimulatedSnp
    from duet.attestation.simulated.tdx import SimulatedTdx

    mountpoint, state, *mode = argv
    if mode == ["tdx"]:
        ops = make_ops(None, SimulatedTdx.load_or_create(Path(state)))
    else:
        ops = make_ops(SimulatedSnp.load_or_create(Path(state)))
    fuse.FUSE(ops, mountpoint, foreground=True, allow_other=True, nothreads=True)
    return 0


def guest_dirs(prefix: str) -> Path:
    """A directory the local guest's user can read, holding `tsm` (the configfs-tsm
    mount point) and `etc` (the guest's readable /etc/ssh): outside pytest's tmp_path,
    whose parents that user cannot enter. The caller removes it."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    (base / "tsm").mkdir()
    (base / "etc").mkdir()
    os.chmod(base / "etc", 0o755)
    return base


def have_fuse() -> bool:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError):
        return False
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
