"""Azure CVM HCL report (vTPM NV index 0x01400001): parse, and read the runtime claims.

Layout: a 32-byte header starting with ``HCLA`` (signature, version u32, report size u32,
request type u32, status u32, reserved); the 1184-byte hardware report (an SEV-SNP report,
or a 1024-byte TDREPORT padded); at 1216 the 20-byte IGVM request-data header (data size,
version, report type 2 = SNP / 4 = TDX, hash type 1 = SHA-256 / 2 = SHA-384 /
3 = SHA-512, variable data size); at 1236 the runtime-claims JSON ("variable data"), whose
hash is the first bytes of the hardware report's REPORT_DATA. The claims carry the vTPM
attestation key as the JWK ``HCLAkPub``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .._bytes import Reader
from ..errors import ParseError, UnsupportedVersion

HCL_MAGIC = b"HCLA"
HW_REPORT_OFFSET = 32
HW_REPORT_LEN = 1184
IGVM_OFFSET = 1216
VAR_DATA_OFFSET = 1236
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
TDREPORT_LEN = 1024
_HASHES = {1: hashlib.sha256, 2: hashlib.sha384, 3: hashlib.sha512}


@dataclass(frozen=True)
class HclReport:
    version: int
    report_type: int  # 2 SNP, 4 TDX
    hash_type: int
    hardware_report: bytes  # 1184 bytes (SNP report) or 1024 (TDREPORT)
    var_data: bytes  # the runtime-claims JSON, exactly as hashed
    claims: dict[str, Any]

    @property
    def kind(self) -> str:
        return "snp" if self.report_type == REPORT_TYPE_SNP else "tdx"

    def var_data_digest(self) -> bytes:
        return _HASHES[self.hash_type](self.var_data).digest()

    def ak_pub(self) -> rsa.RSAPublicKey:
        return jwk_rsa_public_key(self.claims, "HCLAkPub")

    @property
    def vm_id(self) -> str | None:
        cfg = self.claims.get("vm-configuration")
        if isinstance(cfg, dict) and isinstance(cfg.get("vmUniqueId"), str):
            return str(cfg["vmUniqueId"])
        return None

    @property
    def user_data(self) -> str | None:
        v = self.claims.get("user-data")
        return v.lower() if isinstance(v, str) else None


def b64url_decode(s: str) -> bytes:
    """Strict base64url (``-`` and ``_``), padding optional. Never silently drops chars."""
    t = s.strip()
    t += "=" * (-len(t) % 4)
    try:
        return base64.b64decode(t.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ParseError("not base64url") from None


def jwk_rsa_public_key(claims: dict[str, Any], kid: str) -> rsa.RSAPublicKey:
    keys = claims.get("keys")
    if not isinstance(keys, list):
        raise ParseError("runtime claims have no 'keys' list")
    for k in keys:
        if isinstance(k, dict) and k.get("kid") == kid:
            if k.get("kty") != "RSA" or not isinstance(k.get("n"), str):
                raise ParseError(f"{kid} is not an RSA JWK")
            n = int.from_bytes(b64url_decode(str(k["n"])), "big")
            e = int.from_bytes(b64url_decode(str(k.get("e", ""))), "big")
            if n.bit_length() < 2048 or e < 3 or e % 2 == 0:
                raise ParseError(f"{kid} has an unusable RSA key")
            return rsa.RSAPublicNumbers(e, n).public_key()
    raise ParseError(f"runtime claims have no {kid} key")


def parse_hcl_report(data: bytes) -> HclReport:
    r = Reader(data, "HCL report")
    magic = r.take(4, "signature")
    if magic != HCL_MAGIC:
        raise ParseError("not an HCL report (no 'HCLA' signature)")
    version = r.u32("version")
    r.take(HW_REPORT_OFFSET - 8, "header")
    hw = r.take(HW_REPORT_LEN, "hardware report")
    r.u32("igvm data size")
    r.u32("igvm version")
    report_type = r.u32("report type")
    hash_type = r.u32("report data hash type")
    var_size = r.u32("variable data size")
    var_data = r.take(var_size, "runtime claims")
    if report_type not in (REPORT_TYPE_SNP, REPORT_TYPE_TDX):
        raise UnsupportedVersion(f"HCL report type {report_type} is not SNP (2) or TDX (4)")
    if hash_type not in _HASHES:
        raise UnsupportedVersion(f"HCL report-data hash type {hash_type} is not known")
    try:
        claims = json.loads(var_data)
    except (UnicodeDecodeError, ValueError) as e:
        raise ParseError(f"HCL runtime claims are not JSON: {e}") from None
    if not isinstance(claims, dict):
        raise ParseError("HCL runtime claims are not a JSON object")
    if report_type == REPORT_TYPE_TDX:
        hw = hw[:TDREPORT_LEN]
    return HclReport(version, report_type, hash_type, hw, var_data, claims)


@dataclass(frozen=True)
class TdReport:
    """The parts of a TDREPORT_STRUCT that the TD quote must repeat."""

    report_data: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]


def parse_tdreport(data: bytes) -> TdReport:
    """TDREPORT_STRUCT: REPORTMACSTRUCT (256; report data at 128), TEE_TCB_INFO, TDINFO at 512."""
    if len(data) < TDREPORT_LEN:
        raise ParseError(f"TDREPORT: {len(data)} bytes, expected {TDREPORT_LEN}")
    t = 512
    return TdReport(
        report_data=data[128:192],
        td_attributes=data[t : t + 8],
        xfam=data[t + 8 : t + 16],
        mr_td=data[t + 16 : t + 64],
        mr_config_id=data[t + 64 : t + 112],
        mr_owner=data[t + 112 : t + 160],
        mr_owner_config=data[t + 160 : t + 208],
        rtmrs=(
            data[t + 208 : t + 256],
            data[t + 256 : t + 304],
            data[t + 304 : t + 352],
            data[t + 352 : t + 400],
        ),
    )
