"""RA-TLS, server side: an X.509 certificate for the controller's identity key that carries
the controller's SGX quote, so a client can attest the controller *in the TLS handshake*.

Convention: **Gramine's RA-TLS** (the legacy "SGX quote" extension that Gramine v1.0-v1.9
emit and verify), not the interoperable RA-TLS draft's CMW/TCG-DICE encoding:

* a self-signed X.509 v3 certificate for the TLS key;
* the raw SGX DCAP quote in a non-critical extension, OID ``1.2.840.113741.1337.6``,
  whose extnValue OCTET STRING holds the quote bytes;
* report data = SHA-256(DER SubjectPublicKeyInfo of the certificate's key) in bytes 0-31;
  duet also requires bytes 32-63 to be zero (Gramine writes them as zero).

Two duet choices on top of it:

* **The TLS key is the controller's Ed25519 identity key** (the key that signs
  checkpoints; its SHA-256 is the controller id). One key, one pin: a client that pins the
  certificate key has pinned the controller id. OpenSSL 1.1.1+/3.x and Python's ``ssl``
  serve and accept Ed25519 certificates; the server and the duet client allow **TLS 1.3
  only**, whose CertificateVerify signs a context-prefixed transcript hash (RFC 8446
  §4.4.3), so the TLS use of the key cannot produce a signature that means anything to the
  checkpoint (signed-note) use. Gramine's own mbedTLS verifier accepts only P-384 keys, so
  it cannot verify this certificate; the duet client can (:mod:`duet.client.ratls`).
* **Endorsements ride along** in a second non-critical extension, OID
  :data:`ENDORSEMENTS_OID` (a UUID OID, ITU-T X.667): JSON ``{"v":1, "tee":..,
  "collateral": <dcap-qvl QuoteCollateralV3 JSON>, "simulated_root_ca": <base64 DER or
  null>}``, so a client verifies offline, during the handshake, without a PCCS. The
  collateral is signed by Intel (checked against the client's own root); the simulated root
  is honoured only by a client told to ``trust_simulated``.

The domain separation from the quote endpoint is structural: ``/v1/controller/quote``
report data is a SHA-512 output (``duet.tee.base.controller_report_data``), which ends in
32 zero bytes only with probability 2^-256.

The quote is made once, when the certificate is made (at startup): RA-TLS proves *which
code holds the key*, not freshness; a client that wants a fresh quote still asks
``/v1/controller/quote`` with its own nonce, over this channel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from duet.tee.base import TeeBackend

if TYPE_CHECKING:
    import uvicorn

#: Gramine's RA-TLS "SGX quote" extension (NON_STANDARD_INTEL_SGX_QUOTE_OID).
QUOTE_OID = x509.ObjectIdentifier("1.2.840.113741.1337.6")
#: duet's endorsements extension (collateral, and the dev root of a simulated TEE).
ENDORSEMENTS_OID = x509.ObjectIdentifier("2.25.10214357168241375939949257289218269483")
ENDORSEMENTS_VERSION = 1


def spki_der(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def ratls_report_data(spki: bytes) -> bytes:
    """Gramine's RA-TLS binding: SHA-256 of the DER SubjectPublicKeyInfo, zero-padded to 64."""
    return hashlib.sha256(spki).digest() + bytes(32)


@dataclass(frozen=True)
class RaTlsCertificate:
    cert_der: bytes
    quote: bytes
    report_data: bytes
    key_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.cert_der).public_bytes(serialization.Encoding.PEM)


def make_certificate(
    key: Ed25519PrivateKey,
    tee: TeeBackend,
    *,
    now: datetime | None = None,
    validity: timedelta = timedelta(days=365),
) -> RaTlsCertificate:
    """Quote the key (``tee.quote``) and put the quote and its endorsements into a
    self-signed certificate. Raises whatever the TEE raises (e.g. collateral unavailable):
    the controller must not serve TLS without a verifiable quote."""
    pub = key.public_key()
    spki = spki_der(pub)
    report_data = ratls_report_data(spki)
    q = tee.quote(report_data)
    endorsements = {
        "v": ENDORSEMENTS_VERSION,
        "tee": tee.kind,
        "collateral": q.collateral,
        "simulated_root_ca": None if q.simulated_root_ca is None else base64.b64encode(q.simulated_root_ca).decode(),
    }
    controller_id = hashlib.sha256(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"duet controller {controller_id.hexdigest()[:32]}"),
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "duet RA-TLS (SIMULATED TEE)" if tee.simulated else "duet RA-TLS"
            ),
        ]
    )
    now = now or datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.UnrecognizedExtension(QUOTE_OID, q.quote), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                ENDORSEMENTS_OID, json.dumps(endorsements, sort_keys=True, separators=(",", ":")).encode()
            ),
            critical=False,
        )
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return RaTlsCertificate(
        cert_der=cert.public_bytes(serialization.Encoding.DER), quote=q.quote, report_data=report_data, key_pem=key_pem
    )


def write_files(directory: Path, cert: RaTlsCertificate) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (0600) into ``directory`` (0700) for the TLS
    server; returns (certfile, keyfile). Under Gramine put them in the sealed data dir
    (or a tmpfs): the key is the controller's identity key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    for path, data, mode in ((keyfile, cert.key_pem, 0o600), (certfile, cert.cert_pem, 0o644)):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return certfile, keyfile


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.3 only (see the module docstring), no client certificates."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return harden(ctx)


def uvicorn_config(app: Any, *, host: str, port: int, certfile: Path, keyfile: Path, **kw: Any) -> uvicorn.Config:
    """A loaded ``uvicorn.Config`` serving HTTPS with the RA-TLS certificate, TLS 1.3 only.

    ``uvicorn.Server(config).run()`` keeps the loaded config (it loads only when not loaded),
    so the hardened context is the one that serves."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), **kw)
    config.load()
    assert config.ssl is not None
    harden(config.ssl)
    return config


def prepare(directory: Path, key: Ed25519PrivateKey, tee: TeeBackend) -> tuple[Path, Path]:
    """Make a fresh RA-TLS certificate for ``key`` and write it; returns (certfile, keyfile)."""
    return write_files(directory, make_certificate(key, tee))


def start_refresher(
    ctx: ssl.SSLContext, directory: Path, key: Ed25519PrivateKey, tee: TeeBackend, *, every_s: float = 6 * 3600
) -> threading.Event:
    """Re-issue the certificate periodically, in place on the serving context.

    A real quote's collateral (TCB info, CRLs) expires after about 30 days, after which
    clients refuse the certificate; a fresh quote with fresh collateral keeps it
    verifiable. New handshakes use the new certificate; open connections are unaffected.
    A failure (e.g. the PCCS is unreachable) keeps the old certificate and is logged;
    set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            refresh(ctx, directory, key, tee)

    threading.Thread(target=loop, name="ratls-refresh", daemon=True).start()
    return stop


def refresh(ctx: ssl.SSLContext, directory: Path, key: Ed25519PrivateKey, tee: TeeBackend) -> bool:
    try:
        certfile, keyfile = prepare(directory, key, tee)
        ctx.load_cert_chain(str(certfile), str(keyfile))
    except Exception:  # a failed refresh must not take the server down
        logging.getLogger("duet.ratls").exception("RA-TLS certificate refresh failed; keeping the old one")
        return False
    return True
