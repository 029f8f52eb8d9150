"""Roots someone pins in place of a vendor's (AMD's ARKs for SEV-SNP, Intel's DCAP root
for TDX): a twin's development root, or a private root.

One rule for both, checked when the pin is made (a provider setting, a user's
expectations), so that a pin that can never anchor a chain is a clear error then, not an
"untrusted root" on every report later: each entry is exactly one certificate (PEM or
DER), a CA, self-signed, and its signature verifies under its own key with the vendor's
scheme (the caller's `verify_self`). Evidence that verifies only under such a root is
SIMULATED in every report of it (the verifiers say so whenever the root is not the
vendor's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509

from .errors import ParseError
from .snp.certs import cert_der, common_name, load_pem_chain


def load_pinned_roots(
    blobs: Sequence[bytes], what: str, verify_self: Callable[[x509.Certificate], None],
) -> list[bytes]:
    """The pinned roots as DER, each checked (module docstring); `verify_self` raises an
    AttestationError when the certificate's signature does not verify under its own key."""
    out: list[bytes] = []
    for blob in blobs:
        text = blob.strip()
        if text.startswith(b"-----BEGIN") and (
                text.count(b"-----BEGIN ") != text.count(b"-----BEGIN CERTIFICATE-----")
                or not text.startswith(b"-----BEGIN CERTIFICATE-----")
                or not text.endswith(b"-----END CERTIFICATE-----")):
            # Certificates and nothing else: a pin in a provider's settings stands in the
            # public controller log, and a private key pasted beside it must not.
            raise ParseError(f"{what}: each entry must be a PEM certificate and nothing else "
                             "(no key, CRL or text beside it)")
        certs = load_pem_chain(blob, what)
        if len(certs) != 1:
            raise ParseError(f"{what}: each entry must hold exactly one certificate, not {len(certs)}")
        cert = certs[0]
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise ParseError(f"{what}: {common_name(cert)!r} is not a CA certificate")
        if cert.issuer != cert.subject:
            raise ParseError(f"{what}: {common_name(cert)!r} is not self-signed (a root, not an intermediate)")
        verify_self(cert)
        out.append(cert_der(cert))
    return out


#: The settings / expectation fields that pin roots, each the vendor's roots it replaces.
FIELDS = ("snp_arks", "tdx_roots")


def load_pinned(field: str, blobs: Sequence[bytes]) -> list[bytes]:
    """The roots pinned under `field` (`snp_arks`: SEV-SNP ARKs, RSASSA-PSS; `tdx_roots`:
    DCAP roots, ECDSA), each checked with its vendor's scheme, as DER."""
    if field == "snp_arks":
        from .snp.verify import load_pinned_arks as load
    elif field == "tdx_roots":
        from .dcap.verify import load_pinned_dcap_roots as load
    else:
        raise ValueError(f"{field} pins no roots (one of {', '.join(FIELDS)})")
    return load(blobs, field)
