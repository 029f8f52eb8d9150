"""AMD certificates: loading (VCEK serial 0 quietly), RSASSA-PSS checks, VCEK extensions."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from .. import _der as der
from ..errors import CertificateExpired, ChainInvalid, ParseError

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_MGF1 = "1.2.840.113549.1.1.8"

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{AMD_OID}.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_BL_SPL = f"{AMD_OID}.3.1"
OID_TEE_SPL = f"{AMD_OID}.3.2"
OID_SNP_SPL = f"{AMD_OID}.3.3"
OID_UCODE_SPL = f"{AMD_OID}.3.8"
OID_FMC_SPL = f"{AMD_OID}.3.9"
OID_HWID = f"{AMD_OID}.4"
OID_CSP_ID = f"{AMD_OID}.5"

PRODUCTS = ("Milan", "Genoa", "Turin")


def load_cert(data: bytes, what: str) -> x509.Certificate:
    """Load one certificate, PEM or DER.

    AMD issues VCEKs with serial number 0, which RFC 5280 forbids and cryptography warns
    about; the serial plays no part in VCEK verification (the ASK never revokes VCEKs by
    serial), so that one warning is silenced here and nothing else.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
            )
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion) as e:
        raise ParseError(f"{what}: not a certificate ({e})") from None
    return _touch(cert, what)


def _touch(cert: x509.Certificate, what: str) -> x509.Certificate:
    """cryptography parses lazily: parse every part we use now, so malformed input is a
    typed error here rather than an exception from deep inside verification."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _ = (cert.subject, cert.issuer, cert.extensions, cert.signature_algorithm_oid)
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.tbs_certificate_bytes)
            cert.public_key()
    except Exception as e:  # DuplicateExtension, UnsupportedAlgorithm, ValueError, ...
        raise ParseError(f"{what}: malformed certificate ({type(e).__name__}: {e})") from None
    return cert


def load_pem_chain(data: bytes, what: str) -> list[x509.Certificate]:
    if not data.lstrip().startswith(b"-----BEGIN"):
        return [load_cert(data, what)]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
            )
            certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion) as e:
        raise ParseError(f"{what}: not PEM certificates ({e})") from None
    return [_touch(c, what) for c in certs]


@lru_cache(maxsize=1)
def amd_roots() -> dict[str, tuple[x509.Certificate, x509.Certificate]]:
    """AMD's ARK and ASK (VCEK chain) for Milan, Genoa and Turin, embedded."""
    base = resources.files("duet.attestation") / "roots"
    out = {}
    for product in PRODUCTS:
        ark = load_cert((base / f"{product.lower()}_ark.pem").read_bytes(), f"{product} ARK")
        ask = load_cert((base / f"{product.lower()}_ask.pem").read_bytes(), f"{product} ASK")
        out[product] = (ark, ask)
    return out


def _alg_id(data: bytes) -> tuple[str, bytes | None]:
    items = der.children(der.read_single(data, der.TAG_SEQUENCE))
    if not items or items[0][0] != der.TAG_OID:
        raise ParseError("AlgorithmIdentifier without OID")
    params = der.tlv(items[1][0], items[1][1]) if len(items) > 1 else None
    return der.decode_oid(items[0][1]), params


def pss_parameters(signed_der: bytes) -> tuple[str, str, int]:
    """(hash OID, MGF1 hash OID, salt length) of a PSS-signed certificate or CRL."""
    outer = der.children(der.read_single(signed_der, der.TAG_SEQUENCE))
    if len(outer) != 3:
        raise ParseError("signed object is not SEQUENCE {tbs, alg, sig}")
    alg_oid, params = _alg_id(der.tlv(outer[1][0], outer[1][1]))
    if alg_oid != OID_RSASSA_PSS or params is None:
        raise ChainInvalid(f"signature algorithm {alg_oid} is not RSASSA-PSS with parameters")
    hash_oid, mgf_hash, salt = "1.3.14.3.2.26", "1.3.14.3.2.26", 20  # RFC 4055 defaults
    for tag, value in der.children(der.read_single(params, der.TAG_SEQUENCE)):
        if tag == 0xA0:
            hash_oid = _alg_id(value)[0]
        elif tag == 0xA1:
            mgf_oid, mgf_params = _alg_id(value)
            if mgf_oid != OID_MGF1 or mgf_params is None:
                raise ChainInvalid("PSS mask generation function is not MGF1")
            mgf_hash = _alg_id(mgf_params)[0]
        elif tag == 0xA2:
            salt = der.decode_integer(der.read_single(value, der.TAG_INTEGER))
    return hash_oid, mgf_hash, salt


def check_pss_sha384(signed_der: bytes, what: str) -> None:
    """AMD signs with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48: insist on exactly that."""
    try:
        h, m, salt = pss_parameters(signed_der)
    except ParseError as e:
        raise ChainInvalid(f"{what}: unreadable signature algorithm ({e})") from None
    if (h, m, salt) != (OID_SHA384, OID_SHA384, 48):
        raise ChainInvalid(
            f"{what}: PSS parameters hash={h} mgf1={m} salt={salt}, "
            "expected SHA-384 / MGF1-SHA-384 / 48"
        )


def verify_pss_signed(signature: bytes, tbs: bytes, issuer: x509.Certificate, what: str) -> None:
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ChainInvalid(f"{what}: issuer key is not RSA")
    try:
        key.verify(
            signature,
            tbs,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise ChainInvalid(f"{what}: signature by {_cn(issuer)} is invalid") from None


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    if cert.issuer != issuer.subject:
        raise ChainInvalid(
            f"{what}: issued by {cert.issuer.rfc4514_string()}, "
            f"not by {issuer.subject.rfc4514_string()}"
        )
    check_pss_sha384(cert_der(cert), what)
    verify_pss_signed(cert.signature, cert.tbs_certificate_bytes, issuer, what)


def cert_der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateExpired(f"{what} is not valid before {cert.not_valid_before_utc}")
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(f"{what} expired at {cert.not_valid_after_utc}")


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()


def common_name(cert: x509.Certificate) -> str:
    return _cn(cert)


@dataclass(frozen=True)
class VekInfo:
    """What a VCEK / VLEK certificate says about itself (AMD's extensions)."""

    kind: str  # "vcek" or "vlek"
    product_name: str
    product: str  # Milan / Genoa / Turin / other
    tcb: dict[str, int]
    hwid: bytes | None
    csp_id: str | None


def _ext_value(cert: x509.Certificate, oid: str) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return None


def _int_ext(cert: x509.Certificate, oid: str) -> int | None:
    raw = _ext_value(cert, oid)
    if raw is None:
        return None
    return der.decode_integer(der.read_single(raw, der.TAG_INTEGER))


def vek_info(cert: x509.Certificate) -> VekInfo:
    """Read the AMD extensions of a VCEK / VLEK."""
    try:
        raw_name = _ext_value(cert, OID_PRODUCT_NAME)
        if raw_name is None:
            raise ChainInvalid("the VCEK/VLEK has no AMD productName extension")
        tag, value, end = der.read_tlv(raw_name)
        name = (value if end == len(raw_name) and tag in (0x16, 0x0C, 0x13) else raw_name).decode(
            "ascii", "replace"
        )
        tcb: dict[str, int] = {}
        for key, oid in (
            ("bootloader", OID_BL_SPL),
            ("tee", OID_TEE_SPL),
            ("snp", OID_SNP_SPL),
            ("microcode", OID_UCODE_SPL),
            ("fmc", OID_FMC_SPL),
        ):
            v = _int_ext(cert, oid)
            if v is not None:
                tcb[key] = v
        for key in ("bootloader", "tee", "snp", "microcode"):
            if key not in tcb:
                raise ChainInvalid(f"the VCEK/VLEK lacks the {key} SPL extension")
        hwid_raw = _ext_value(cert, OID_HWID)
        hwid = None
        if hwid_raw is not None:
            hwid = hwid_raw
            if len(hwid_raw) not in (8, 64):
                # Some issuers wrap hwID in an OCTET STRING.
                hwid = der.read_single(hwid_raw, der.TAG_OCTET_STRING)
        csp_raw = _ext_value(cert, OID_CSP_ID)
        csp = None
        if csp_raw is not None:
            _tag, csp_value, csp_end = der.read_tlv(csp_raw)
            csp = (csp_value if csp_end == len(csp_raw) else csp_raw).decode("utf-8", "replace")
    except ParseError as e:
        raise ChainInvalid(f"the VCEK/VLEK extensions are malformed: {e}") from None
    product = name.split("-", 1)[0]
    kind = "vlek" if hwid is None and csp is not None else "vcek"
    if hwid is None and csp is None:
        raise ChainInvalid("the certificate has neither a hwID (VCEK) nor a csp_id (VLEK)")
    return VekInfo(kind, name, product, tcb, hwid, csp)
