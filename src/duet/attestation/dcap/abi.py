"""Intel DCAP quotes (v3, v4, v5): bytes to structures. No trust decisions here.

Layout (Intel SGX ECDSA Quote Library reference; TDX DCAP quote generation library):

* header, 48 bytes: version u16, attestation key type u16, TEE type u32, QE SVN u16,
  PCE SVN u16, QE vendor id [16], user data [20];
* v3 / v4: the report body follows directly (SGX report 384 bytes, or TDREPORT 1.0 584 bytes);
  v5: body type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5), body size u32, then the body;
* signature data length u32, then the signature data: ECDSA signature [64] and attestation
  key [64]; then (v3) QE report [384], QE report signature [64], QE auth data (u16 length),
  certification data (u16 type, u32 size); (v4/v5) certification data of type 6 that holds
  the same QE report / signature / auth data / inner certification data.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._bytes import Reader
from ..errors import ParseError, UnsupportedVersion, WrongKind

HEADER_LEN = 48
SGX_REPORT_LEN = 384
TD10_REPORT_LEN = 584
TD15_REPORT_LEN = 648
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ATT_KEY_ECDSA_P256 = 2
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6

SGX_FLAG_DEBUG = 1 << 1
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class SgxReportBody:
    """An SGX REPORT body (the ISV enclave report, or the QE report)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_FLAG_DEBUG)


@dataclass(frozen=True)
class TdReportBody:
    """A TD quote body: TDREPORT 1.0, or 1.5 with TEE_TCB_SVN2 and MRSERVICETD."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.attributes_value & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body: SgxReportBody | TdReportBody
    body_type: int  # 1 SGX, 2 TD 1.0, 3 TD 1.5 (v3/v4 quotes get the implied value)
    signed_length: int  # bytes [0, signed_length) are covered by the attestation key signature
    signature: bytes  # r || s, 32 bytes each, big-endian
    attestation_key: bytes  # x || y
    qe_report_raw: bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes
    trailing: int  # bytes after the signature data (tolerated, reported)

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReportBody)

    @property
    def pck_chain_pem(self) -> bytes | None:
        return self.cert_data if self.cert_data_type == CERT_PCK_CHAIN else None


def parse_sgx_report_body(raw: bytes) -> SgxReportBody:
    r = Reader(raw, "SGX report body")
    cpu_svn = r.take(16, "cpu_svn")
    misc_select = r.u32("misc_select")
    r.take(12, "reserved1")
    isv_ext_prod_id = r.take(16, "isv_ext_prod_id")
    attributes = r.take(16, "attributes")
    mr_enclave = r.take(32, "mr_enclave")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "mr_signer")
    r.take(32, "reserved3")
    config_id = r.take(64, "config_id")
    isv_prod_id = r.u16("isv_prod_id")
    isv_svn = r.u16("isv_svn")
    config_svn = r.u16("config_svn")
    r.take(42, "reserved4")
    isv_family_id = r.take(16, "isv_family_id")
    report_data = r.take(64, "report_data")
    return SgxReportBody(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        isv_ext_prod_id=isv_ext_prod_id,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        config_id=config_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=isv_family_id,
        report_data=report_data,
    )


def parse_td_report_body(raw: bytes) -> TdReportBody:
    """Parse a TD quote body of 584 (TDREPORT 1.0) or 648 (1.5) bytes."""
    r = Reader(raw, "TD report body")
    tee_tcb_svn = r.take(16, "tee_tcb_svn")
    mr_seam = r.take(48, "mr_seam")
    mr_signer_seam = r.take(48, "mr_signer_seam")
    seam_attributes = r.take(8, "seam_attributes")
    td_attributes = r.take(8, "td_attributes")
    xfam = r.take(8, "xfam")
    mr_td = r.take(48, "mr_td")
    mr_config_id = r.take(48, "mr_config_id")
    mr_owner = r.take(48, "mr_owner")
    mr_owner_config = r.take(48, "mr_owner_config")
    rtmrs = (r.take(48, "rtmr0"), r.take(48, "rtmr1"), r.take(48, "rtmr2"), r.take(48, "rtmr3"))
    report_data = r.take(64, "report_data")
    svn2 = service = None
    if len(raw) >= TD15_REPORT_LEN:
        svn2 = r.take(16, "tee_tcb_svn2")
        service = r.take(48, "mr_service_td")
    return TdReportBody(
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mr_td=mr_td,
        mr_config_id=mr_config_id,
        mr_owner=mr_owner,
        mr_owner_config=mr_owner_config,
        rtmrs=rtmrs,
        report_data=report_data,
        tee_tcb_svn2=svn2,
        mr_service_td=service,
    )


def parse_header(data: bytes) -> QuoteHeader:
    r = Reader(data, "DCAP quote")
    return QuoteHeader(
        version=r.u16("version"),
        attestation_key_type=r.u16("attestation_key_type"),
        tee_type=r.u32("tee_type"),
        qe_svn=r.u16("qe_svn"),
        pce_svn=r.u16("pce_svn"),
        qe_vendor_id=r.take(16, "qe_vendor_id"),
        user_data=r.take(20, "user_data"),
    )


def looks_like_quote(data: bytes) -> bool:
    """Cheap sniff for kind detection: a DCAP header with a known version and TEE type."""
    if len(data) < HEADER_LEN + SGX_REPORT_LEN:
        return False
    version = int.from_bytes(data[0:2], "little")
    tee = int.from_bytes(data[4:8], "little")
    return version in (3, 4, 5) and tee in (TEE_SGX, TEE_TDX)


def parse_quote(data: bytes) -> Quote:
    """Parse a DCAP quote v3/v4/v5 (SGX or TDX). Raises ParseError / UnsupportedVersion."""
    header = parse_header(data)
    if header.version not in (3, 4, 5):
        raise UnsupportedVersion(f"DCAP quote version {header.version} is not supported (3, 4, 5)")
    if header.tee_type not in (TEE_SGX, TEE_TDX):
        raise UnsupportedVersion(f"DCAP quote TEE type {header.tee_type:#x} is not SGX or TDX")
    if header.attestation_key_type != ATT_KEY_ECDSA_P256:
        raise UnsupportedVersion(
            f"DCAP attestation key type {header.attestation_key_type} is not ECDSA P-256"
        )
    r = Reader(data, "DCAP quote", HEADER_LEN)
    if header.version == 5:
        body_type = r.u16("body_type")
        body_size = r.u32("body_size")
        expected = {1: SGX_REPORT_LEN, 2: TD10_REPORT_LEN, 3: TD15_REPORT_LEN}.get(body_type)
        if expected is None:
            raise UnsupportedVersion(f"DCAP quote v5 body type {body_type} is not supported")
        if body_size != expected:
            raise ParseError(f"DCAP quote v5 body type {body_type} has size {body_size}")
    elif header.tee_type == TEE_TDX:
        body_type = 2
    else:
        body_type = 1
    if (body_type == 1) != (header.tee_type == TEE_SGX):
        raise ParseError("DCAP quote body type does not match its TEE type")
    raw_body = r.take(
        {1: SGX_REPORT_LEN, 2: TD10_REPORT_LEN}.get(body_type, TD15_REPORT_LEN), "report body"
    )
    body: SgxReportBody | TdReportBody
    body = parse_sgx_report_body(raw_body) if body_type == 1 else parse_td_report_body(raw_body)
    signed_length = r.pos
    sig_len = r.u32("signature_data_length")
    sig_data = r.take(sig_len, "signature_data")
    trailing = r.remaining()

    s = Reader(sig_data, "DCAP quote signature data")
    signature = s.take(64, "ecdsa_signature")
    attestation_key = s.take(64, "attestation_key")
    if header.version == 3:
        qe = s
    else:
        outer_type = s.u16("certification_data_type")
        outer_size = s.u32("certification_data_size")
        if outer_type != CERT_QE_REPORT:
            raise UnsupportedVersion(
                f"DCAP quote v{header.version} certification data type {outer_type} "
                "is not 6 (QE report certification data)"
            )
        qe = Reader(s.take(outer_size, "qe_report_certification_data"), "QE report cert data")
    qe_report_raw = qe.take(SGX_REPORT_LEN, "qe_report")
    qe_report_signature = qe.take(64, "qe_report_signature")
    auth_len = qe.u16("qe_auth_data_size")
    qe_auth_data = qe.take(auth_len, "qe_auth_data")
    cert_type = qe.u16("cert_data_type")
    cert_size = qe.u32("cert_data_size")
    cert_data = qe.take(cert_size, "cert_data")
    return Quote(
        header=header,
        body=body,
        body_type=body_type,
        signed_length=signed_length,
        signature=signature,
        attestation_key=attestation_key,
        qe_report_raw=qe_report_raw,
        qe_report=parse_sgx_report_body(qe_report_raw),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        cert_data_type=cert_type,
        cert_data=cert_data,
        trailing=trailing,
    )


def parse_sgx_quote(data: bytes) -> Quote:
    q = parse_quote(data)
    if q.is_tdx:
        raise WrongKind("this is a TDX quote, not an SGX quote")
    return q


def parse_tdx_quote(data: bytes) -> Quote:
    q = parse_quote(data)
    if not q.is_tdx:
        raise WrongKind("this is an SGX quote, not a TDX quote")
    return q
