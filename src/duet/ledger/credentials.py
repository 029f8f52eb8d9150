"""Cloud credentials sealed to the controller: HPKE (RFC 9180) to an X25519 key that the
controller's attested Ed25519 identity key endorses.

Why this shape:
- The controller's identity key is what its quote binds (`tee/base.py`); endorsing a
  separate X25519 key with it leaves the quote formula unchanged, and an owner who has
  attested the controller knows the endorsement came from inside the enclave.
- The ciphertext travels beside the signed intent, which carries only its SHA-256: the
  intent is logged publicly, and a public ciphertext would be readable by whoever later
  learns the recipient key. The controller logs a keyed MAC of the plaintext (never a
  plain hash, which would let anyone test guesses of a weak secret).
- The HPKE `info` names the controller and the provider, so a ciphertext made for one
  controller or one provider opens nowhere else.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode, through the
`pyhpke` library (which builds on `cryptography`). Wire form of a sealed blob: the 32-byte
encapsulated key, then the AEAD ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from duet.ledger.errors import LedgerError

KEM = "DHKEM(X25519, HKDF-SHA256)"
SUITE = f"{KEM}, HKDF-SHA256, ChaCha20-Poly1305"
ENC_LEN = 32
#: Largest credentials file accepted (a Google service-account key is about 2.3 KB).
MAX_PLAINTEXT = 64 * 1024
_ENDORSE = b"duet credentials key v1\n"
_INFO = b"duet credentials v1\n"


class CredentialsError(LedgerError):
    """A sealed credential is malformed, was sealed to another key, controller or
    provider, or its endorsement does not verify. Messages never quote the secret."""

    code = "invalid_credentials"


def _suite() -> Any:
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId

    return CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


def raw_x25519(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def recipient_key_id(pub: X25519PublicKey) -> str:
    return hashlib.sha256(raw_x25519(pub)).hexdigest()


def endorsement_message(controller_id: str, pub: X25519PublicKey) -> bytes:
    return _ENDORSE + controller_id.encode() + b"\n" + raw_x25519(pub)


def endorse(identity: Ed25519PrivateKey, controller_id: str, pub: X25519PublicKey) -> dict[str, str]:
    """What `/v1/controller` publishes as `credentials_key`."""
    return {
        "kem": KEM,
        "suite": SUITE,
        "public_key": base64.b64encode(raw_x25519(pub)).decode(),
        "key_id": recipient_key_id(pub),
        "signature": base64.b64encode(identity.sign(endorsement_message(controller_id, pub))).decode(),
    }


def check_endorsement(published: object, *, controller_id: str, controller_key: Ed25519PublicKey) -> X25519PublicKey:
    """The recipient key, once the attested identity key is shown to have endorsed it for
    this controller."""
    if not isinstance(published, dict):
        raise CredentialsError("the controller publishes no credentials key (too old a controller?)")
    try:
        raw = base64.b64decode(str(published["public_key"]), validate=True)
        sig = base64.b64decode(str(published["signature"]), validate=True)
        pub = X25519PublicKey.from_public_bytes(raw)
    except (KeyError, ValueError):
        raise CredentialsError("the controller's credentials key is malformed") from None
    try:
        controller_key.verify(sig, endorsement_message(controller_id, pub))
    except InvalidSignature:
        raise CredentialsError("the credentials key is not endorsed by the controller's attested key") from None
    return pub


def _info(controller_id: str, provider: str) -> bytes:
    return _INFO + controller_id.encode() + b"\n" + provider.encode()


def seal(pub: X25519PublicKey, plaintext: bytes, *, controller_id: str, provider: str) -> bytes:
    from pyhpke import KEMKey

    if len(plaintext) > MAX_PLAINTEXT:
        raise CredentialsError(f"a credentials file is at most {MAX_PLAINTEXT} bytes")
    enc, ctx = _suite().create_sender_context(KEMKey.from_pyca_cryptography_key(pub),
                                              info=_info(controller_id, provider))
    return bytes(enc) + bytes(ctx.seal(plaintext))


def open_sealed(key: X25519PrivateKey, sealed: bytes, *, controller_id: str, provider: str) -> bytes:
    from pyhpke import KEMKey, PyHPKEError

    if len(sealed) <= ENC_LEN + 16:
        raise CredentialsError("the sealed credentials are too short")
    try:
        ctx = _suite().create_recipient_context(sealed[:ENC_LEN], KEMKey.from_pyca_cryptography_key(key),
                                                info=_info(controller_id, provider))
        plaintext = bytes(ctx.open(sealed[ENC_LEN:]))
    except (PyHPKEError, ValueError):
        raise CredentialsError(
            "the sealed credentials do not open with this controller's key for this provider "
            "(sealed to another controller, key or provider, or altered)") from None
    if len(plaintext) > MAX_PLAINTEXT:
        raise CredentialsError(f"a credentials file is at most {MAX_PLAINTEXT} bytes")
    return plaintext


def mac(mac_key: bytes, provider: str, plaintext: bytes) -> str:
    """HMAC-SHA256 under a sealed controller key: equal credentials give equal MACs,
    and nobody without the key can test a guess."""
    return hmac.new(mac_key, provider.encode() + b"\n" + plaintext, hashlib.sha256).hexdigest()
