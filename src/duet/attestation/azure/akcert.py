"""Azure vTPM attestation key (AK) certificates, judged by content and chain, never by name.

An Azure VM's vTPM holds a platform AK (persistent handle 0x81000003) and a certificate
for it (NV index 0x01C101D0), issued by one of Microsoft's vTPM intermediate CAs under a
vTPM root. A certificate's *name* (``CN=<vm-id>.TrustedVM.Azure.windows.net``, issuer
``Global Virtual TPM CA - 03``) proves nothing: anyone can write those names. What makes
a certificate an AK certificate here:

1. it is a leaf (not a CA) whose extended key usage names the TCG AIK certificate
   purpose (``tcg-kp-AIKCertificate``, 2.23.133.8.3), so it was issued *for* an
   attestation key (:func:`is_ak_certificate`; ``certstore`` classifies by this);
2. its key is the attestation key the evidence was signed with, when the caller knows it
   (for a CVM: ``HCLAkPub`` from the HCL report's runtime claims);
3. it chains, by issuer name *and* authority key id *and* signature, through CA
   certificates (basic constraints CA, keyCertSign) valid at ``now``, to one of the
   roots the verifier pins. A certificate with the right names under another key or
   issuer is refused, naming where the chain broke.

Pure: certificates in, verdict out; nothing is fetched (Azure's AIA URLs are not followed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import CertificateExpired, ChainInvalid, MissingCertificate, ParseError, UntrustedRoot

TCG_KP_AIK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")
MAX_DEPTH = 6
#: Where an Azure vTPM keeps the AK certificate: DER, zero-padded to the index's size.
AK_CERT_NV_INDEX = 0x01C101D0
#: An NV index is at most a few kilobytes; a guest cannot make the verifier read more.
MAX_NV_CERT_BYTES = 16 * 1024


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def is_ak_certificate(cert: x509.Certificate) -> bool:
    """A leaf issued for a TPM attestation key (the TCG AIK certificate EKU)."""
    return not _is_ca(cert) and TCG_KP_AIK_CERTIFICATE in _eku(cert)


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _spki(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Why ``issuer`` did not issue ``cert`` (None: it did): name, key id, signature."""
    if cert.issuer != issuer.subject:
        return f"its issuer is {_cn(cert.issuer)!r}, not {_cn(issuer.subject)!r}"
    aki, ski = _aki(cert), _ski(issuer)
    if aki is not None and ski is not None and aki != ski:
        return f"its authority key id {aki.hex()} is not the key id {ski.hex()} of {_cn(issuer.subject)!r}"
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return f"its signature does not verify with the key of {_cn(issuer.subject)!r}"
    return None


def _can_issue(ca: x509.Certificate) -> bool:
    if not _is_ca(ca):
        return False
    try:
        return bool(ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return True


def _valid(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{what} {_cn(cert.subject)!r} is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not at {now:%Y-%m-%d %H:%M}Z"
        )


@dataclass(frozen=True)
class AkChain:
    ak: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    root: x509.Certificate

    def describe(self) -> str:
        return " <- ".join(_cn(c.subject) for c in (self.ak, *self.intermediates, self.root))


def verify_ak_chain(
    certs: Sequence[x509.Certificate],
    *,
    roots: Sequence[x509.Certificate],
    now: datetime,
    ak_public_key: rsa.RSAPublicKey | None = None,
) -> AkChain:
    """The AK certificate among ``certs`` (for ``ak_public_key`` when given) and its chain
    to one of ``roots`` (pinned by the caller). Raises naming what was found and where
    the chain broke. ``certs`` may hold anything: roles come from content (module doc)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not roots:
        raise UntrustedRoot("no vTPM root is pinned: an AK certificate cannot be judged")
    aks = [c for c in certs if is_ak_certificate(c)]
    if not aks:
        named = [c for c in certs if not _is_ca(c) and "TrustedVM" in _cn(c.subject)]
        hint = (f"; {', '.join(repr(_cn(c.subject)) for c in named)} has a vTPM name but not the TCG AIK "
                "certificate key usage (2.23.133.8.3)") if named else ""
        raise MissingCertificate(f"no AK certificate among {len(certs)} certificates{hint}")
    if ak_public_key is not None:
        want = _spki(ak_public_key)
        mine = [c for c in aks if isinstance(c.public_key(), rsa.RSAPublicKey) and _spki(c.public_key()) == want]
        if not mine:
            raise ChainInvalid(
                "no AK certificate certifies the evidence's attestation key (found: "
                + ", ".join(repr(_cn(c.subject)) for c in aks) + ")"
            )
        aks = mine
    failures: list[ChainInvalid] = []
    for ak in aks:
        try:
            return _chain(ak, certs, roots, now)
        except ChainInvalid as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise ChainInvalid("; ".join(str(f) for f in failures))


def _chain(ak: x509.Certificate, certs: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
           now: datetime) -> AkChain:
    _valid(ak, now, "the AK certificate")
    path: list[x509.Certificate] = []
    current = ak
    for _ in range(MAX_DEPTH):
        reasons = []
        for root in roots:
            why = _issued_by(current, root)
            if why is None:
                _valid(root, now, "the pinned root")
                return AkChain(ak, tuple(path), root)
            reasons.append(why)
        candidates = [c for c in certs if c is not current and c not in path and _can_issue(c)
                      and c.subject == current.issuer]
        nxt = None
        for cand in candidates:
            why = _issued_by(current, cand)
            if why is None:
                nxt = cand
                break
            reasons.append(why)
        if nxt is None:
            detail = "; ".join(dict.fromkeys(reasons)) or "no certificate found is its issuer"
            raise ChainInvalid(
                f"{_cn(current.subject)!r} (issued by {_cn(current.issuer)!r}) does not chain to a pinned "
                f"vTPM root: {detail}"
            )
        _valid(nxt, now, "the vTPM CA certificate")
        path.append(nxt)
        current = nxt
    raise ChainInvalid(f"the AK certificate's chain is longer than {MAX_DEPTH}")


def parse_nv_certificate(raw: bytes) -> x509.Certificate:
    """The certificate an NV index holds: one DER certificate, then only padding (the index
    is larger than the certificate; Azure pads with zeros). Anything else is refused."""
    data = bytes(raw)
    if not data or len(data) > MAX_NV_CERT_BYTES:
        raise ParseError(f"the AK certificate (NV index {AK_CERT_NV_INDEX:#010x}) is {len(data)} bytes")
    if len(data) < 2 or data[0] != 0x30:
        raise ParseError("the AK certificate is not DER (no SEQUENCE)")
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or len(data) < 2 + n:
            raise ParseError("the AK certificate's DER length is malformed")
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    if end > len(data):
        raise ParseError("the AK certificate is truncated")
    rest = data[end:]
    if rest and (rest[:1] not in (b"\0", b"\xff") or rest.strip(rest[:1])):
        raise ParseError("the AK certificate's NV index holds more than one DER certificate and padding")
    try:
        return x509.load_der_x509_certificate(data[:end])
    except (ValueError, x509.InvalidVersion) as exc:
        raise ParseError(f"the AK certificate does not parse: {exc}") from None


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def load_pins(blobs: Sequence[bytes]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """(roots, intermediates) from the certificates a user pins (PEM, several per blob, or
    DER): the self-signed CA certificates are the roots; the others are intermediates a
    chain may use, each still checked up to a pinned root. Raises :class:`ParseError` when
    a blob holds no certificate or there is no self-signed root among them."""
    certs: list[x509.Certificate] = []
    for blob in blobs:
        try:
            if blob.lstrip().startswith(b"-----BEGIN"):
                found = x509.load_pem_x509_certificates(blob)
            else:
                found = [x509.load_der_x509_certificate(blob)]
        except (ValueError, x509.InvalidVersion) as exc:
            raise ParseError(f"a pinned vTPM certificate does not parse: {exc}") from None
        certs.extend(found)
    roots = [c for c in certs if _is_ca(c) and _self_signed(c)]
    if not roots:
        raise ParseError("the pinned vTPM certificates hold no self-signed root CA")
    return roots, [c for c in certs if c not in roots]


def name_of(name: x509.Name) -> str:
    """A certificate name as people read it (RFC 4514)."""
    return name.rfc4514_string()
