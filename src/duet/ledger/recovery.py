"""Recovery shares of the state key K: the formats and the HPKE both sides use.

When the owner turns recovery on (`controller.recovery`, docs/continuity.md "Recovery from
shares"), the controller splits K M-of-N (controller/shamir.py) and encrypts share i to
holder i's X25519 key. A holder later decrypts its share and re-encrypts it to the
attested key of a recovering enclave. Both encryptions are HPKE (RFC 9180), the suite of
`ledger/credentials.py`, and their `info` names what the share is for, so a ciphertext
opens in no other context:

* to a holder: ``"duet recovery share v1\\n" controller-id "\\n" index "\\n" K-commitment``
  (a share of one controller's K of one generation, at one index);
* to a recovering enclave: ``"duet recovery transfer v1\\n" controller-id "\\n" index "\\n"
  SHA-256(enclave key)`` (for that enclave's key only), in HPKE's auth mode with the
  holder's own key as the sender's: the enclave's key is public, and only the holder named
  at that index in the logged policy can send the share for it.

The plaintext is ``b"duet-share-v1\\0" | x (1 byte) | y (32 bytes)``. The commitment to K
that the controller log records is ``SHA-256("duet-state-key-v1\\0" | K)``: K is 256
random bits, so the digest says nothing about it, and a recovering enclave checks the K
it reconstructed against it before it trusts anything (a wrong or tampered share gives
another K, and recovery stops with nothing changed).

This module is used by the controller, the owner's CLI and the holders' CLI; it needs no
controller dependency.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

# The HPKE suite is the credentials' (one suite for every sealing to an X25519 key).
from duet.ledger.credentials import ENC_LEN, _suite, raw_x25519
from duet.ledger.errors import LedgerError

SHARE_MAGIC = b"duet-share-v1\0"
SHARE_LEN = 32
SHARE_FILE_FORMAT = "duet-recovery-share-v1"
REQUEST_DOMAIN = b"duet-recovery-request-v1"
MAX_HOLDERS = 16
_COMMIT = b"duet-state-key-v1\0"


class RecoveryError(LedgerError):
    """A share, a holder key or a recovery exchange is malformed, does not open, or is not
    for this controller, index or enclave. Messages never quote a secret."""

    code = "invalid_share"


def state_key_commitment(k: bytes) -> str:
    return hashlib.sha256(_COMMIT + k).hexdigest()


def report_data(enclave_key: bytes, controller_id: str) -> bytes:
    """What a recovering enclave's quote binds: its fresh X25519 key, for one controller."""
    return hashlib.sha512(REQUEST_DOMAIN + enclave_key + controller_id.encode()).digest()


def holder_info(controller_id: str, index: int, commitment: str) -> bytes:
    return f"duet recovery share v1\n{controller_id}\n{index}\n{commitment}".encode()


def transfer_info(controller_id: str, index: int, enclave_key: bytes) -> bytes:
    return f"duet recovery transfer v1\n{controller_id}\n{index}\n{hashlib.sha256(enclave_key).hexdigest()}".encode()


def encode_share(x: int, y: bytes) -> bytes:
    if not 1 <= x <= 255 or len(y) != SHARE_LEN:
        raise RecoveryError("a share is an index in 1..255 and 32 bytes")
    return SHARE_MAGIC + bytes([x]) + y


def decode_share(blob: bytes, index: int) -> bytes:
    """y of a share, which must be the share at `index`."""
    if len(blob) != len(SHARE_MAGIC) + 1 + SHARE_LEN or not blob.startswith(SHARE_MAGIC):
        raise RecoveryError("the decrypted share is not a duet share")
    if blob[len(SHARE_MAGIC)] != index:
        raise RecoveryError(f"the decrypted share is not share {index}")
    return blob[len(SHARE_MAGIC) + 1:]


def seal(pub: X25519PublicKey, plaintext: bytes, info: bytes, *, sender: X25519PrivateKey | None = None) -> bytes:
    """HPKE base mode, or with `sender` auth mode (RFC 9180 5.1.3): only the holder of
    that key can make a ciphertext that opens with `sender`'s public key."""
    from pyhpke import KEMKey

    sks = KEMKey.from_pyca_cryptography_key(sender) if sender is not None else None
    enc, ctx = _suite().create_sender_context(KEMKey.from_pyca_cryptography_key(pub), info=info, sks=sks)
    return bytes(enc) + bytes(ctx.seal(plaintext))


def open_sealed(key: X25519PrivateKey, sealed: bytes, info: bytes, what: str, *,
                sender: X25519PublicKey | None = None) -> bytes:
    from pyhpke import KEMKey, PyHPKEError

    if len(sealed) <= ENC_LEN + 16 or len(sealed) > 4096:
        raise RecoveryError(f"{what}: not an HPKE ciphertext of a share")
    try:
        pks = KEMKey.from_pyca_cryptography_key(sender) if sender is not None else None
        ctx = _suite().create_recipient_context(sealed[:ENC_LEN], KEMKey.from_pyca_cryptography_key(key), info=info,
                                                pks=pks)
        return bytes(ctx.open(sealed[ENC_LEN:]))
    except (PyHPKEError, ValueError):
        raise RecoveryError(f"{what} does not open with this key (made for another key, controller, index or "
                            "generation of the state key, or altered)") from None


# ------------------------------------------------------------------------- holder keys


def public_b64(pub: X25519PublicKey) -> str:
    return base64.b64encode(raw_x25519(pub)).decode()


def public_from_b64(text: str) -> X25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        if len(raw) != 32:
            raise ValueError
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise RecoveryError("a recovery-key holder's key is the base64 of a raw 32-byte X25519 key") from None


def private_pem(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private(pem: bytes, source: str) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise RecoveryError(f"{source} is not a PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise RecoveryError(f"{source} is not an X25519 recovery key (duet controller recovery keygen)")
    return key


# ------------------------------------------------------------------------- share files


@dataclass(frozen=True)
class ShareFile:
    """One holder's encrypted share, as the owner hands it over (a JSON file)."""

    controller_id: str
    controller_key: str
    owner_keys: tuple[str, ...]
    index: int
    threshold: int
    holder_key: str
    state_key_sha256: str
    sealed: bytes

    def to_json(self) -> str:
        return json.dumps({"format": SHARE_FILE_FORMAT, "controller_id": self.controller_id,
                           "controller_key": self.controller_key, "owner_keys": list(self.owner_keys),
                           "index": self.index, "threshold": self.threshold, "holder_key": self.holder_key,
                           "state_key_sha256": self.state_key_sha256,
                           "sealed": base64.b64encode(self.sealed).decode()}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> ShareFile:
        try:
            d = json.loads(text)
            if d.get("format") != SHARE_FILE_FORMAT:
                raise ValueError("format")
            out = cls(controller_id=str(d["controller_id"]), controller_key=str(d["controller_key"]),
                      owner_keys=tuple(str(k) for k in d["owner_keys"]), index=int(d["index"]),
                      threshold=int(d["threshold"]), holder_key=str(d["holder_key"]),
                      state_key_sha256=str(d["state_key_sha256"]),
                      sealed=base64.b64decode(str(d["sealed"]), validate=True))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RecoveryError(f"{source} is not a duet recovery share file") from None
        if not 1 <= out.index <= MAX_HOLDERS:
            raise RecoveryError(f"{source}: share index out of range")
        return out


# ------------------------------------------------------------ the owner's fetch of shares

PROOF_DOMAIN = b"duet-recovery-shares-v1\n"
PROOF_WINDOW_S = 300


def _proof_message(controller_id: str, ts: int) -> bytes:
    return PROOF_DOMAIN + f"{controller_id}\n{ts}".encode()


def shares_proof(key: Any, controller_id: str, ts: int) -> str:
    """`Duet-Owner-Proof` header: an owner key's signature over this controller and the
    time, so that only an owner fetches the encrypted shares (never served to anyone else,
    never logged: a ciphertext kept by a stranger opens the day a holder key leaks)."""
    from duet.ledger import keys

    sig = key.sign(_proof_message(controller_id, ts))
    return f"{keys.key_id(key.public_key())}.{ts}.{base64.b64encode(sig).decode()}"


def check_shares_proof(header: str, controller_id: str, owner_keys: dict[str, Any], now: int) -> str:
    """The owner key id the header proves, or a typed refusal."""
    from cryptography.exceptions import InvalidSignature

    from duet.ledger.intent import BadSignature, StaleIntent, UnknownKey

    try:
        kid, ts_text, sig_b64 = header.split(".")
        ts = int(ts_text)
        sig = base64.b64decode(sig_b64, validate=True)
    except ValueError:
        raise BadSignature("Duet-Owner-Proof must be KEYID.UNIXTIME.SIGNATURE") from None
    pub = owner_keys.get(kid)
    if pub is None:
        raise UnknownKey("Duet-Owner-Proof names no owner key in force")
    if abs(now - ts) > PROOF_WINDOW_S:
        raise StaleIntent(f"Duet-Owner-Proof is more than {PROOF_WINDOW_S} s from the controller's time")
    try:
        pub.verify(sig, _proof_message(controller_id, ts))
    except InvalidSignature:
        raise BadSignature("Duet-Owner-Proof does not verify") from None
    return kid
