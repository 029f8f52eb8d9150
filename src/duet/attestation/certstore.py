"""Certificates by content, not by file name.

Users bring certificates as AMD's KDS, Intel's PCS, Azure and the cloud tools save them:
``vcek.der``, ``vlek.pem``, ``cert_chain``, ``ask_ark_milan.pem``, ``Genoa.pem``, a bundle
of everything, or files named after a hash. Nothing about a file's name says what is in
it, so this module reads every PEM or DER file it is handed (bundles included), decides
what each certificate *is* from its content, and builds the chain a report needs from
there. A verifier never guesses from names, and an error says what was found (file and
certificate) and what is missing.

Offline only: nothing is fetched. Roles:

* AMD: ``vcek`` / ``vlek`` (by their AMD extensions: hwID vs. csp_id), ``ask`` / ``asvk``
  (CA certificates ``SEV-<product>`` / ``SEV-VLEK-<product>``), ``ark`` (self-signed
  ``ARK-<product>``), each with its product (Milan, Genoa, Turin);
* Intel: ``pck`` (carries the SGX extension), ``pck-ca`` (platform / processor CA),
  ``sgx-tcb-signing``, ``sgx-root`` (self-signed SGX root CA);
* Azure: ``azure-vtpm-ak`` (a leaf with the TCG AIK certificate key usage: a vTPM
  attestation key certificate; its chain to pinned vTPM roots is judged by
  :func:`.azure.akcert.verify_ak_chain`), ``azure-vtpm-ca`` (a vTPM CA, listed);
* anything else: ``other`` (reported, never used).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from .azure.akcert import is_ak_certificate, verify_ak_chain
from .errors import AttestationError, ChainInvalid, MissingCertificate, ParseError, ProductMismatch
from .snp.abi import SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, AttestationReport
from .snp.certs import PRODUCTS, vek_info

if TYPE_CHECKING:
    from .azure.akcert import AkChain

SGX_EXT_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
AMD_PRODUCT_NAME_OID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
MAX_FILE_BYTES = 1 << 20  # certificate files are kilobytes; refuse to slurp anything huge

AMD_ROLES = ("vcek", "vlek", "ask", "asvk", "ark")


@dataclass(frozen=True)
class FoundCert:
    """One certificate, where it came from and what it is."""

    cert: x509.Certificate
    source: str  # "file.pem" or "bundle.pem#2" (1-based position in a bundle)
    role: str
    product: str | None = None

    @property
    def cn(self) -> str:
        attrs = self.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else self.cert.subject.rfc4514_string()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    def describe(self) -> str:
        prod = f" {self.product}" if self.product else ""
        return f"{self.source}: {self.role.upper()}{prod} (CN={self.cn})"


def _cn_of(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _has_ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return False
    return True


def _product_suffix(cn: str) -> str | None:
    tail = cn.rsplit("-", 1)[-1]
    return tail if tail in PRODUCTS else None


def classify(cert: x509.Certificate) -> tuple[str, str | None]:
    """(role, product) of one certificate, from its content alone."""
    subject, issuer = _cn_of(cert.subject), _cn_of(cert.issuer)
    self_signed = cert.subject == cert.issuer
    if _has_ext(cert, AMD_PRODUCT_NAME_OID):
        try:
            info = vek_info(cert)
        except (ChainInvalid, ParseError):
            return "other", None
        product = info.product if info.product in PRODUCTS else None
        return info.kind, product
    if _has_ext(cert, SGX_EXT_OID):
        return "pck", None
    if subject.startswith("ARK-") and self_signed:
        return "ark", _product_suffix(subject)
    if subject.startswith("SEV-VLEK-") and _is_ca(cert):
        return "asvk", _product_suffix(subject)
    if subject.startswith("SEV-") and _is_ca(cert) and issuer.startswith("ARK-"):
        return "ask", _product_suffix(subject) or _product_suffix(issuer)
    if "SGX" in subject and "Root CA" in subject and self_signed:
        return "sgx-root", None
    if "SGX" in subject and "PCK" in subject and _is_ca(cert):
        return "pck-ca", None
    if "SGX" in subject and "TCB Signing" in subject:
        return "sgx-tcb-signing", None
    if is_ak_certificate(cert):
        # By its key usage (TCG AIK certificate), not its name: whether Azure issued it is
        # for `verify_ak_chain` to show against the roots the verifier pins.
        return "azure-vtpm-ak", None
    if _is_ca(cert) and "Virtual TPM" in subject:
        return "azure-vtpm-ca", None  # listed; trusted only as a link verify_ak_chain checks
    return "other", None


def _load_all(data: bytes, source: str) -> list[tuple[str, x509.Certificate]]:
    """Every certificate in ``data`` (one DER, or any number of PEM blocks)."""
    with warnings.catch_warnings():
        # AMD issues VCEKs with serial 0; see snp.certs.load_cert.
        warnings.filterwarnings(
            "ignore", category=CryptographyDeprecationWarning, message=".*serial number.*"
        )
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = x509.load_pem_x509_certificates(data)
            names = [f"{source}#{i + 1}" if len(certs) > 1 else source for i in range(len(certs))]
            return list(zip(names, certs, strict=True))
        return [(source, x509.load_der_x509_certificate(data))]


def _load_crl(data: bytes) -> x509.CertificateRevocationList | None:
    try:
        if data.lstrip().startswith(b"-----BEGIN X509 CRL"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        _ = crl.issuer
    except Exception:  # not a CRL either: the caller lists the file as skipped
        return None
    return crl


def _parsed(cert: x509.Certificate) -> None:
    """cryptography parses lazily: touch what classification and chains use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _ = (cert.subject, cert.issuer, cert.extensions, cert.tbs_certificate_bytes)
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
        cert.public_key()


@dataclass
class CertStore:
    """Every certificate found, classified; plus what was read but is not a certificate."""

    certs: list[FoundCert] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    crls: list[tuple[str, bytes, x509.Name]] = field(default_factory=list)

    # -- loading ---------------------------------------------------------------------------

    def add(self, data: bytes, source: str, *, strict: bool = False) -> list[FoundCert]:
        """Add every certificate in ``data``. Not certificates: ``skipped`` (or, with
        ``strict``, a :class:`ParseError` naming ``source``)."""
        try:
            found = _load_all(data, source)
            for _, c in found:
                _parsed(c)
        except Exception as e:  # ValueError, UnsupportedAlgorithm, DuplicateExtension, ...
            if strict:
                raise ParseError(f"{source}: not a certificate ({type(e).__name__})") from None
            crl = _load_crl(data)
            if crl is not None:
                self.crls.append((source, crl.public_bytes(Encoding.DER), crl.issuer))
            else:
                self.skipped.append((source, "not a certificate"))
            return []
        added = []
        seen = {c.der for c in self.certs}
        for name, cert in found:
            role, product = classify(cert)
            fc = FoundCert(cert, name, role, product)
            if fc.der in seen:
                continue  # the same certificate twice (a bundle and a single file) is one
            seen.add(fc.der)
            self.certs.append(fc)
            added.append(fc)
        return added

    @classmethod
    def from_blobs(cls, blobs: Iterable[tuple[str, bytes]], *, strict: bool = True) -> CertStore:
        store = cls()
        for source, data in blobs:
            store.add(data, source, strict=strict)
        return store

    @classmethod
    def from_dir(cls, directory: Path) -> CertStore:
        """Read every regular file in ``directory`` (not recursively, hidden files too).

        Files that hold no certificate (JSON state, CRLs, notes) are listed in
        ``skipped``, not refused: a directory the user saves everything into is normal.
        """
        store = cls()
        try:
            entries = sorted(p for p in Path(directory).iterdir() if p.is_file())
        except OSError as e:
            raise ParseError(f"cannot read certificate directory {directory}: {e}") from None
        for p in entries:
            try:
                if p.stat().st_size > MAX_FILE_BYTES:
                    store.skipped.append((p.name, "larger than 1 MiB"))
                    continue
                data = p.read_bytes()
            except OSError as e:
                store.skipped.append((p.name, f"unreadable ({e.strerror})"))
                continue
            store.add(data, p.name)
        return store

    # -- queries ---------------------------------------------------------------------------

    def crl_issued_by_cn(self, cn: str) -> tuple[str, bytes] | None:
        for source, der, issuer in self.crls:
            if _cn_of(issuer) == cn:
                return source, der
        return None

    def of(self, *roles: str, product: str | None = None) -> list[FoundCert]:
        return [
            c for c in self.certs if c.role in roles and (product is None or c.product == product)
        ]

    def summary(self, roles: Sequence[str] | None = None) -> str:
        shown = [c for c in self.certs if roles is None or c.role in roles]
        if not shown:
            return "no certificates"
        return "; ".join(c.describe() for c in shown)

    # -- SEV-SNP ---------------------------------------------------------------------------

    def snp_chain(self, report: AttestationReport) -> SnpChain:
        """The endorsement key the report's SIGNING_KEY names, and its chain.

        The VCEK / VLEK is chosen by kind, then (when there are several) by the one whose
        key verifies the report, else whose hwID is the report's CHIP_ID. The ASK (VCEK)
        or ASVK (VLEK) is the one that issued it; the ARK the one that issued that. A
        directory with no AMD CA certificates at all leaves ``ask``/``ark`` empty, so the
        verifier uses AMD's embedded ASK for the VCEK's product; a directory whose CA
        certificates are for another product is refused, naming both.
        """
        from .snp.verify import verify_report_signature

        kinds = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}
        want = kinds.get(report.signing_key)
        if want is None:
            raise MissingCertificate(
                f"the report's SIGNING_KEY is {report.signing_key} (neither VCEK nor VLEK): "
                "no endorsement key can verify it"
            )
        amd_found = self.summary(AMD_ROLES)
        veks = self.of(want)
        if not veks:
            other = self.of("vlek" if want == "vcek" else "vcek")
            hint = (
                f"; the {other[0].role.upper()} in {other[0].source} cannot sign this report"
                if other
                else ""
            )
            raise MissingCertificate(
                f"the report is signed by a {want.upper()}, but none was found{hint} "
                f"(found: {amd_found})"
            )
        vek = veks[0]
        if len(veks) > 1:
            for cand in veks:
                try:
                    verify_report_signature(report, cand.cert)
                except AttestationError:  # a candidate that does not verify is skipped
                    continue
                vek = cand
                break
            else:
                chip = report.chip_id
                for cand in veks:
                    hwid = vek_info(cand.cert).hwid
                    if hwid and chip[: len(hwid)] == hwid:
                        vek = cand
                        break
        mid_role = "ask" if want == "vcek" else "asvk"
        issuer_cn = _cn_of(vek.cert.issuer)
        mids = [c for c in self.of(mid_role) if c.cert.subject == vek.cert.issuer]
        ask = mids[0] if mids else None
        if ask is None:
            given = self.of(mid_role)
            other_product = [c for c in given if c.product and c.product != vek.product]
            if given and len(other_product) == len(given):
                raise ProductMismatch(
                    f"the {want.upper()} in {vek.source} is a {vek.product or '?'} key issued "
                    f"by {issuer_cn!r}, but the {mid_role.upper()} found is for another "
                    f"product: {'; '.join(c.describe() for c in given)}"
                )
            if given:
                raise ChainInvalid(
                    f"the {want.upper()} in {vek.source} is issued by {issuer_cn!r}, and no "
                    f"{mid_role.upper()} found issued it: "
                    f"{'; '.join(c.describe() for c in given)}"
                )
            if want == "vlek":
                raise MissingCertificate(
                    f"the VLEK in {vek.source} needs its {vek.product or ''} ASVK "
                    f"(CN={issuer_cn}) and ARK; found: {amd_found}"
                )
            # A VCEK alone: the verifier uses AMD's embedded ASK for its product.
        ark = None
        if ask is not None:
            arks = self.of("ark")
            issuers = [c for c in arks if c.cert.subject == ask.cert.issuer]
            if issuers:
                ark = issuers[0]
            elif arks:
                error = (
                    ProductMismatch
                    if all(c.product and c.product != ask.product for c in arks)
                    else ChainInvalid
                )
                raise error(
                    f"{ask.describe()} is issued by {_cn_of(ask.cert.issuer)!r}, but the ARK "
                    f"found is another: {'; '.join(c.describe() for c in arks)}"
                )
        return SnpChain(vek=vek, ask=ask, ark=ark)

    # -- Azure vTPM ------------------------------------------------------------------------

    def azure_ak(self, *, roots: Sequence[bytes], now: datetime, ak_public_key: Any = None) -> AkChain:
        """The vTPM AK certificate (by content) and its chain to one of ``roots`` (DER),
        through whatever CA certificates were found: see :func:`verify_ak_chain`."""
        try:
            pinned = [x509.load_der_x509_certificate(r) for r in roots]
        except (ValueError, x509.InvalidVersion):
            raise ParseError("a pinned vTPM root is not a DER certificate") from None
        try:
            return verify_ak_chain([c.cert for c in self.certs], roots=pinned, now=now, ak_public_key=ak_public_key)
        except MissingCertificate as exc:
            raise MissingCertificate(f"{exc} (found: {self.summary()})") from None

    # -- Intel -----------------------------------------------------------------------------

    def sgx_roots(self) -> list[FoundCert]:
        return self.of("sgx-root")


@dataclass(frozen=True)
class SnpChain:
    """The certificates picked for one SNP report (``ask``/``ark`` may be AMD's embedded)."""

    vek: FoundCert
    ask: FoundCert | None
    ark: FoundCert | None

    def describe(self) -> str:
        parts = [self.vek.describe()]
        parts.append(self.ask.describe() if self.ask else "ASK: AMD's embedded")
        parts.append(self.ark.describe() if self.ark else "ARK: a trusted root")
        return "; ".join(parts)
