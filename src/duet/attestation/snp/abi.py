"""AMD SEV-SNP ATTESTATION_REPORT (ABI report versions 2, 3 and 5): bytes to structure.

0x4A0 = 1184 bytes; the signature (ECDSA P-384 / SHA-384, r and s as 72-byte little-endian
fields) covers bytes [0, 0x2A0). Version 3 adds CPUID family / model / stepping at 0x188;
version 5 adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200). TCB_VERSION is
laid out per CPU generation: Milan / Genoa ``[BL, TEE, 0, 0, 0, 0, SNP, UCODE]``, Turin and
later ``[FMC, BL, TEE, SNP, 0, 0, 0, UCODE]``. No trust decisions are made here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._bytes import le
from ..errors import ParseError, UnsupportedVersion

REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384 = 1

# Guest policy bits.
POLICY_SMT = 1 << 16
POLICY_RESERVED_1 = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

FAMILY_TURIN = 0x1A


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION value. ``fmc`` is only present on Turin and later."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    @classmethod
    def build(
        cls, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int | None = None
    ) -> TcbVersion:
        if fmc is None:
            b = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
        else:
            b = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        return cls(int.from_bytes(b, "little"), bootloader, tee, snp, microcode, fmc)

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp}
        out["microcode"] = self.microcode
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def at_least(self, other: TcbVersion) -> bool:
        """Every component of ``self`` is >= the same component of ``other``."""
        mine, theirs = self.components(), other.components()
        return all(mine.get(k, 0) >= v for k, v in theirs.items())

    def __str__(self) -> str:
        parts = " ".join(f"{k}={v}" for k, v in self.components().items())
        return f"{self.hex()} ({parts})"

    def hex(self) -> str:
        """The eight bytes as they sit in the report (how AMD tools print a TCB)."""
        return self.raw.to_bytes(8, "little").hex()


@dataclass(frozen=True)
class AttestationReport:
    """Every field of an SNP ATTESTATION_REPORT, raw."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    flags: int  # AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 4:2
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    signed_bytes: bytes
    turin_layout: bool

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 2)

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 7

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & POLICY_SMT)

    @property
    def abi_major(self) -> int:
        return (self.policy >> 8) & 0xFF

    @property
    def abi_minor(self) -> int:
        return self.policy & 0xFF


def _turin_like(version: int, data: bytes) -> bool:
    if version >= 3:
        return data[0x188] >= FAMILY_TURIN
    # v2 has no CPUID fields; Turin chip ids use only the first 8 bytes.
    chip = data[0x1A0:0x1E0]
    return any(chip[:8]) and not any(chip[8:])


def looks_like_snp_report(data: bytes) -> bool:
    return len(data) == REPORT_LEN and le(data, 0, 4) in (2, 3, 4, 5) and le(data, 0x34, 4) == 1


def parse_report(data: bytes, *, turin: bool | None = None) -> AttestationReport:
    """Parse a 1184-byte report. ``turin`` forces the TCB layout (else inferred)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError("an SNP report is bytes")
    data = bytes(data)
    if len(data) < 4:
        raise ParseError(f"SNP report: {len(data)} bytes, expected {REPORT_LEN}")
    version = le(data, 0, 4)
    if len(data) != REPORT_LEN:
        raise ParseError(f"SNP report: {len(data)} bytes, expected {REPORT_LEN}")
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"SNP report version {version} is not supported (known: 2, 3, 5)")
    t = _turin_like(version, data) if turin is None else turin

    def tcb(off: int) -> TcbVersion:
        return TcbVersion.decode(le(data, off, 8), turin=t)

    v3 = version >= 3
    v5 = version >= 5
    return AttestationReport(
        version=version,
        guest_svn=le(data, 0x04, 4),
        policy=le(data, 0x08, 8),
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=le(data, 0x30, 4),
        signature_algo=le(data, 0x34, 4),
        current_tcb=tcb(0x38),
        platform_info=le(data, 0x40, 8),
        flags=le(data, 0x48, 4),
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_fam_id=data[0x188] if v3 else None,
        cpuid_mod_id=data[0x189] if v3 else None,
        cpuid_step=data[0x18A] if v3 else None,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0),
        current_build=data[0x1E8],
        current_minor=data[0x1E9],
        current_major=data[0x1EA],
        committed_build=data[0x1EC],
        committed_minor=data[0x1ED],
        committed_major=data[0x1EE],
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=le(data, 0x1F8, 8) if v5 else None,
        current_mit_vector=le(data, 0x200, 8) if v5 else None,
        signature_r=le(data, 0x2A0, 72),
        signature_s=le(data, 0x2E8, 72),
        signed_bytes=data[:SIGNED_LEN],
        turin_layout=t,
    )


@dataclass(frozen=True)
class ReportFields:
    """Values to lay out a report (used by the simulated generator)."""

    version: int = 3
    guest_svn: int = 0
    policy: int = 0x30000
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    current_tcb: int = 0
    platform_info: int = 1
    flags: int = 0
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: int = 0
    cpuid: tuple[int, int, int] = (0x19, 0x01, 0x01)
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_version: tuple[int, int, int] = (1, 55, 0)  # major, minor, build
    launch_tcb: int = 0
    mit_vectors: tuple[int, int] = (0, 0)


def encode_report_body(f: ReportFields) -> bytes:
    """The signed part, bytes [0, 0x2A0), of a report with these fields."""
    out = bytearray(SIGNED_LEN)

    def put(off: int, value: bytes) -> None:
        out[off : off + len(value)] = value

    def u(off: int, n: int, value: int) -> None:
        put(off, value.to_bytes(n, "little"))

    u(0x00, 4, f.version)
    u(0x04, 4, f.guest_svn)
    u(0x08, 8, f.policy)
    put(0x10, f.family_id)
    put(0x20, f.image_id)
    u(0x30, 4, f.vmpl)
    u(0x34, 4, SIG_ALGO_ECDSA_P384_SHA384)
    u(0x38, 8, f.current_tcb)
    u(0x40, 8, f.platform_info)
    u(0x48, 4, f.flags)
    put(0x50, f.report_data)
    put(0x90, f.measurement)
    put(0xC0, f.host_data)
    put(0xE0, f.id_key_digest)
    put(0x110, f.author_key_digest)
    put(0x140, f.report_id)
    put(0x160, f.report_id_ma)
    u(0x180, 8, f.reported_tcb)
    if f.version >= 3:
        put(0x188, bytes(f.cpuid))
    put(0x1A0, f.chip_id)
    u(0x1E0, 8, f.committed_tcb)
    major, minor, build = f.current_version
    put(0x1E8, bytes([build, minor, major]))
    put(0x1EC, bytes([build, minor, major]))
    u(0x1F0, 8, f.launch_tcb)
    if f.version >= 5:
        u(0x1F8, 8, f.mit_vectors[0])
        u(0x200, 8, f.mit_vectors[1])
    return bytes(out)


def encode_signature(r: int, s: int) -> bytes:
    """The 0x200-byte signature field: r and s as 72-byte little-endian, then zeros."""
    return (r.to_bytes(72, "little") + s.to_bytes(72, "little")).ljust(0x200, b"\0")
