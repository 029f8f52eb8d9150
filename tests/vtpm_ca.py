"""A SIMULATED Azure vTPM PKI for tests: a root, a "Global Virtual TPM CA - 03" style
intermediate, and AK certificates with the TCG AIK key usage, as Azure's are shaped (the
test vectors hold no real Azure AK certificate or vTPM root)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from duet.attestation.azure.akcert import TCG_KP_AIK_CERTIFICATE


def _ca_name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SIMULATED (duet tests)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class SimulatedVtpmCa:
    """A SIMULATED vTPM PKI with Azure's shape: a self-signed root, an intermediate CA, and
    AK certificates (TCG AIK key usage) for the keys it is asked to certify."""

    def __init__(self, tag: str = "", *, now: datetime | None = None) -> None:
        """`now`: the middle of the certificates' validity (default: the wall clock)."""
        now = now or datetime.now(UTC)
        self.now = now
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        root_name = _ca_name(f"SIMULATED Azure Virtual TPM Root Certificate Authority{tag}")
        self.ca_name = _ca_name(f"SIMULATED Global Virtual TPM CA - 03{tag}")
        self.root = self._cert(root_name, self.root_key.public_key(), root_name, self.root_key, ca=True, now=now)
        self.ca = self._cert(self.ca_name, self.ca_key.public_key(), root_name, self.root_key, ca=True, now=now)

    @staticmethod
    def _cert(subject: x509.Name, public: rsa.RSAPublicKey, issuer: x509.Name, signer: rsa.RSAPrivateKey, *,
              ca: bool, now: datetime) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
             .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                          crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
        if not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([TCG_KP_AIK_CERTIFICATE]), critical=False)
        return b.sign(signer, hashes.SHA256())

    def ak_certificate(self, public: rsa.RSAPublicKey, vm_id: str) -> x509.Certificate:
        subject = _ca_name(f"{vm_id}.TrustedVM.SIMULATED")
        return self._cert(subject, public, self.ca_name, self.ca_key, ca=False, now=self.now)

    @property
    def pins(self) -> bytes:
        """What a user pins (`cvm.azure_ak_roots`): the root and the intermediate, PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.root, self.ca))
