"""Verify an SEV-SNP report: signature, VCEK/VLEK → ASK/ASVK → ARK chain, TCB, CRL.

Checks, in order:

1. the report parses and its version is one we know (2, 3, 5), signature algorithm 1;
2. the endorsement key certificate (VCEK, or VLEK when the report says SIGNING_KEY=1) is
   issued by the ASK (ASVK for a VLEK), which is issued by the ARK, which is self-signed —
   every signature RSASSA-PSS with SHA-384 / MGF1-SHA-384 / salt 48, every certificate
   valid at ``now``, the ASK/ARK CA certificates;
3. the ARK is one the caller trusts: AMD's Milan / Genoa / Turin ARKs (embedded) unless
   ``trusted_arks`` is given; anything else raises :class:`UntrustedRoot`;
4. with ``crl_der`` (AMD KDS CRL, issued by the ARK): its signature, validity and that the
   ASK/ASVK is not revoked;
5. the report's ECDSA P-384 / SHA-384 signature over bytes [0, 0x2A0) with the VCEK/VLEK;
6. the VCEK's TCB extensions equal the report's REPORTED_TCB, the VCEK's hwID equals
   CHIP_ID (unless the guest masked the chip id), and the product matches the ARK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # certstore imports this module's package; the type is all we need
    from ..certstore import CertStore

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import (
    AttestationError,
    CertificateExpired,
    CertificateRevoked,
    ChainInvalid,
    ExpectationFailed,
    ParseError,
    SignatureInvalid,
    TcbError,
    UnsupportedVersion,
    UntrustedRoot,
)
from .abi import (
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    AttestationReport,
    parse_report,
)
from .certs import (
    amd_roots,
    cert_der,
    check_pss_sha384,
    check_validity,
    common_name,
    load_cert,
    load_pem_chain,
    vek_info,
    verify_issued_by,
    verify_pss_signed,
)


@dataclass(frozen=True)
class SnpReport:
    """A verified SNP report: every parsed field, plus what the chain established.

    Digests are lowercase hex; ``report_data`` is bytes. ``simulated`` is True when the
    chain ends at an ARK that is not one of AMD's (a development root the caller trusted).
    """

    version: int
    guest_svn: int
    policy: int
    family_id: str
    image_id: str
    vmpl: int
    signature_algo: int
    current_tcb: dict[str, int]
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str
    report_data: bytes
    measurement: str
    host_data: str
    id_key_digest: str
    author_key_digest: str
    report_id: str
    report_id_ma: str
    reported_tcb: dict[str, int]
    reported_tcb_raw: str
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: str
    committed_tcb: dict[str, int]
    current_version: str
    committed_version: str
    launch_tcb: dict[str, int]
    launch_mit_vector: int | None
    current_mit_vector: int | None
    debug: bool
    migrate_ma: bool
    smt_allowed: bool
    product: str
    product_name: str
    simulated: bool
    collateral_issued: str = ""  # the CRL's thisUpdate, when a CRL was checked
    kind: str = field(default="snp")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_data"] = self.report_data.hex()
        return d


def snp_report_claims(
    r: AttestationReport, *, product: str, product_name: str, simulated: bool
) -> SnpReport:
    return SnpReport(
        version=r.version,
        guest_svn=r.guest_svn,
        policy=r.policy,
        family_id=r.family_id.hex(),
        image_id=r.image_id.hex(),
        vmpl=r.vmpl,
        signature_algo=r.signature_algo,
        current_tcb=r.current_tcb.components(),
        platform_info=r.platform_info,
        author_key_en=r.author_key_en,
        mask_chip_key=r.mask_chip_key,
        signing_key={0: "vcek", 1: "vlek", 7: "none"}.get(r.signing_key, str(r.signing_key)),
        report_data=r.report_data,
        measurement=r.measurement.hex(),
        host_data=r.host_data.hex(),
        id_key_digest=r.id_key_digest.hex(),
        author_key_digest=r.author_key_digest.hex(),
        report_id=r.report_id.hex(),
        report_id_ma=r.report_id_ma.hex(),
        reported_tcb=r.reported_tcb.components(),
        reported_tcb_raw=r.reported_tcb.hex(),
        cpuid_fam_id=r.cpuid_fam_id,
        cpuid_mod_id=r.cpuid_mod_id,
        cpuid_step=r.cpuid_step,
        chip_id=r.chip_id.hex(),
        committed_tcb=r.committed_tcb.components(),
        current_version=f"{r.current_major}.{r.current_minor}.{r.current_build}",
        committed_version=f"{r.committed_major}.{r.committed_minor}.{r.committed_build}",
        launch_tcb=r.launch_tcb.components(),
        launch_mit_vector=r.launch_mit_vector,
        current_mit_vector=r.current_mit_vector,
        debug=r.debug,
        migrate_ma=r.migrate_ma,
        smt_allowed=r.smt_allowed,
        product=product,
        product_name=product_name,
        simulated=simulated,
    )


def verify_report_signature(r: AttestationReport, vek: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over bytes [0, 0x2A0), r and s little-endian."""
    if r.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise UnsupportedVersion(f"SNP signature algorithm {r.signature_algo} is not 1 (P-384)")
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ChainInvalid("the VCEK/VLEK key is not an EC P-384 key")
    if not (0 < r.signature_r < 1 << 384 and 0 < r.signature_s < 1 << 384):
        raise SignatureInvalid("SNP report signature r/s out of range")
    try:
        key.verify(
            encode_dss_signature(r.signature_r, r.signature_s),
            r.signed_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        raise SignatureInvalid("SNP report signature does not verify with the VCEK/VLEK") from None


def _pem_or_der_one(data: bytes, what: str) -> x509.Certificate:
    certs = load_pem_chain(data, what)
    if not certs:
        raise ParseError(f"{what}: no certificate")
    return certs[0]


def load_pinned_arks(blobs: Sequence[bytes], what: str) -> list[bytes]:
    """SEV-SNP roots someone pins in place of AMD's ARKs (`..pinned_roots`), each signed
    with AMD's ARK signature scheme (RSASSA-PSS, SHA-384)."""
    from ..pinned_roots import load_pinned_roots

    return load_pinned_roots(blobs, what, lambda cert: verify_issued_by(cert, cert, what))


def _split_chain(
    ask_pem: bytes | None, ark_pem: bytes | None
) -> tuple[x509.Certificate | None, x509.Certificate | None]:
    """``ask_pem`` may be an AMD KDS ``cert_chain`` bundle (ASK then ARK)."""
    ask = ark = None
    if ask_pem is not None:
        certs = load_pem_chain(ask_pem, "ASK")
        if not certs:
            raise ParseError("ASK: no certificate")
        ask = certs[0]
        if len(certs) > 1:
            ark = certs[1]
    if ark_pem is not None:
        ark = _pem_or_der_one(ark_pem, "ARK")
    return ask, ark


def _check_crl(
    crl_der: bytes, ark: x509.Certificate, ask: x509.Certificate, now: datetime
) -> datetime:
    """Check the ARK's CRL and that it does not revoke the ASK; return its thisUpdate."""
    try:
        if crl_der.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(crl_der)
        else:
            crl = x509.load_der_x509_crl(crl_der)
        _ = (crl.issuer, crl.signature, crl.tbs_certlist_bytes, crl.last_update_utc)
        _ = (crl.next_update_utc, [c.serial_number for c in crl])
    except Exception as e:  # cryptography parses lazily; anything malformed is a ParseError
        raise ParseError(f"CRL: not a usable CRL ({type(e).__name__}: {e})") from None
    if crl.issuer != ark.subject:
        raise ChainInvalid("the CRL is not issued by the ARK")
    from cryptography.hazmat.primitives.serialization import Encoding

    check_pss_sha384(crl.public_bytes(Encoding.DER), "CRL")
    verify_pss_signed(crl.signature, crl.tbs_certlist_bytes, ark, "CRL")
    if now < crl.last_update_utc:
        raise CertificateExpired(f"the CRL is not valid before {crl.last_update_utc}")
    nxt = crl.next_update_utc
    if nxt is not None and now > nxt:
        raise CertificateExpired(f"the CRL expired at {nxt}")
    if crl.get_revoked_certificate_by_serial_number(ask.serial_number) is not None:
        raise CertificateRevoked(f"{common_name(ask)} (serial {ask.serial_number:x}) is revoked")
    return crl.last_update_utc


def verify_snp_report(
    report: bytes,
    *,
    vcek_der: bytes,
    ask_pem: bytes | None = None,
    ark_pem: bytes | None = None,
    now: datetime,
    trusted_arks: Sequence[bytes] | None = None,
    crl_der: bytes | None = None,
) -> SnpReport:
    """Verify an SNP report with its VCEK (or VLEK); see the module docstring for the checks.

    ``vcek_der`` may be DER or PEM. ``ask_pem`` may be the ASK alone or AMD's ``cert_chain``
    (ASK + ARK); when absent, AMD's embedded ASK for the VCEK's product is used (a VLEK
    needs its ASVK passed). ``trusted_arks`` (PEM or DER each) replaces AMD's ARKs as the set
    of trusted roots: pass a development ARK there to accept simulated reports.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    r = parse_report(report)
    vek = load_cert(vcek_der, "VCEK")
    info = vek_info(vek)
    if info.product == "Turin" and not r.turin_layout:
        r = parse_report(report, turin=True)
    expected_kind = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}.get(r.signing_key)
    if expected_kind is None:
        raise UnsupportedVersion(f"SNP report SIGNING_KEY {r.signing_key} is not VCEK or VLEK")
    if info.kind != expected_kind:
        raise ChainInvalid(
            f"the report is signed by a {expected_kind}, the certificate is a {info.kind}"
        )

    # Trust anchors.
    builtin = amd_roots()
    if trusted_arks is None:
        anchors = [ark for ark, _ in builtin.values()]
    else:
        anchors = [_pem_or_der_one(a, "trusted ARK") for a in trusted_arks]
    anchor_ders = {cert_der(a) for a in anchors}
    amd_ark_ders = {cert_der(ark) for ark, _ in builtin.values()}

    ask, ark = _split_chain(ask_pem, ark_pem)
    if ask is None:
        if info.kind == "vlek":
            raise ChainInvalid("a VLEK needs its ASVK: pass ask_pem")
        pair = builtin.get(info.product)
        if pair is None:
            raise ChainInvalid(f"no embedded ASK for product {info.product_name!r}: pass ask_pem")
        ask = pair[1]
        if vek.issuer != ask.subject:
            raise UntrustedRoot(
                f"the {info.kind.upper()} is not issued by AMD's {info.product} ASK "
                "(pass ask_pem / trusted_arks for another chain)"
            )
    if ark is None:
        for candidate in anchors:
            if candidate.subject == ask.issuer:
                ark = candidate
                break
        else:
            raise UntrustedRoot(f"no trusted ARK issued {common_name(ask)}")

    # Chain: VEK <- ASK <- ARK (self-signed), all RSASSA-PSS SHA-384.
    verify_issued_by(vek, ask, info.kind.upper())
    verify_issued_by(ask, ark, "ASK")
    verify_issued_by(ark, ark, "ARK")
    ark_der = cert_der(ark)
    if ark_der not in anchor_ders:
        raise UntrustedRoot(f"the ARK {common_name(ark)!r} is not a trusted root")
    for cert, what in ((ark, "ARK"), (ask, "ASK"), (vek, info.kind.upper())):
        check_validity(cert, now, what)
    for cert, what in ((ark, "ARK"), (ask, "ASK")):
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise ChainInvalid(f"the {what} has no basicConstraints") from None
        if not bc.ca:
            raise ChainInvalid(f"the {what} is not a CA certificate")
    ark_cn = common_name(ark)
    if ark_cn.startswith("ARK-") and ark_cn[4:] != info.product:
        raise ChainInvalid(f"the {info.product_name} VCEK chains to {ark_cn}")
    crl_issued = ""
    if crl_der is not None:
        crl_issued = _check_crl(crl_der, ark, ask, now).isoformat().replace("+00:00", "Z")

    verify_report_signature(r, vek)

    # TCB in the certificate == REPORTED_TCB; hwID == CHIP_ID.
    reported = r.reported_tcb.components()
    for key, value in info.tcb.items():
        if key == "fmc" and "fmc" not in reported:
            continue
        if reported.get(key) != value:
            raise TcbError(
                f"REPORTED_TCB {key} is {reported.get(key)}, the {info.kind.upper()} "
                f"certifies {value} (reported_tcb {r.reported_tcb})"
            )
    if info.kind == "vcek" and info.hwid is not None:
        if r.mask_chip_key or not any(r.chip_id):
            pass  # the guest masked its chip id: nothing to compare
        elif r.chip_id[: len(info.hwid)] != info.hwid or any(r.chip_id[len(info.hwid) :]):
            raise ChainInvalid("the VCEK's hwID is not the report's CHIP_ID")
    claims = snp_report_claims(
        r,
        product=info.product,
        product_name=info.product_name,
        simulated=ark_der not in amd_ark_ders,
    )
    return replace(claims, collateral_issued=crl_issued) if crl_issued else claims


def verify_snp_report_with_certs(
    report: bytes,
    certs: CertStore,
    *,
    now: datetime,
    trusted_arks: Sequence[bytes] | None = None,
    crl_der: bytes | None = None,
) -> SnpReport:
    """Verify ``report`` with certificates picked by content from ``certs``.

    The endorsement key is the one the report's SIGNING_KEY names (see
    :meth:`CertStore.snp_chain`); a failure names the certificates (and their files) used.
    """
    chain = certs.snp_chain(parse_report(report))
    if crl_der is None and chain.vek.product:
        # AMD's KDS CRL is issued by the ARK of the VEK's product.
        found = certs.crl_issued_by_cn(f"ARK-{chain.vek.product}")
        crl_der = found[1] if found else None
    try:
        return verify_snp_report(
            report,
            vcek_der=chain.vek.der,
            ask_pem=chain.ask.der if chain.ask else None,
            ark_pem=chain.ark.der if chain.ark else None,
            now=now,
            trusted_arks=trusted_arks,
            crl_der=crl_der,
        )
    except AttestationError as e:
        if isinstance(e, ExpectationFailed):
            raise
        raise type(e)(f"{e.message} [certificates: {chain.describe()}]") from None
