"""C2SP tlog-cosignature `cosignature/v1` (Ed25519, signature type 0x04): what a witness
signs, and how anyone checks it.

A cosignature is an ordinary signed-note signature line on a checkpoint, but its key ID
uses type byte 0x04 and its signature covers a different message: the two lines
``cosignature/v1`` and ``time <unix seconds>`` followed by the checkpoint body. The line's
payload is the 8-byte big-endian timestamp followed by the 64-byte Ed25519 signature. The
distinct type byte keeps a witness key from ever being mistaken for a log key (and the other
way round), and the timestamp is what later gives the controller an authenticated lower
bound on the time.

Why a witness matters to duet: a controller that shows two different histories of one log
to two users is caught only if someone compares them. A witness cosigns a checkpoint only
after checking that it extends the last one it cosigned for that origin, so two forks can
never both carry the same witness's cosignature.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from duet.ledger.errors import NoteError
from duet.ledger.note import NoteSignature, check_key_name, parse_note

ALG_COSIGNATURE_V1 = 0x04
"""Signature type byte of Ed25519 `cosignature/v1` in c2sp.org/signed-note."""

MAX_TIMESTAMP = (1 << 63) - 1


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """SHA-256(name ‖ 0x0A ‖ 0x04 ‖ pubkey)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + _raw(public_key)).digest()
    return int.from_bytes(digest[:4], "big")


def signed_message(body: str, timestamp: int) -> bytes:
    """The bytes a `cosignature/v1` signs: header line, time line, then the checkpoint body
    (its final newline included, no signature lines)."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()


def vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key ``name+hex8(key id)+base64(0x04 ‖ pubkey)``."""
    check_key_name(name)
    encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + _raw(public_key)).decode()
    return f"{name}+{key_id(name, public_key):08x}+{encoded}"


def _key_material(b64: str) -> bytes:
    """The 32 key bytes of a ``base64(0x04 ‖ key)`` field (a vkey's public key, a skey's seed)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        raise NoteError("witness key is not valid base64") from None
    if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
        raise NoteError("witness key is not a cosignature/v1 key (0x04 followed by 32 bytes)")
    return raw[1:]


def _check_hash(key_hash: int, hex_id: str) -> None:
    if f"{key_hash:08x}" != hex_id:
        raise NoteError(f"witness key hash {hex_id!r} does not match the key")


@dataclass(frozen=True)
class Cosigner:
    """A witness's signing key with its name."""

    name: str
    key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        check_key_name(self.name)

    @property
    def key_hash(self) -> int:
        return key_id(self.name, self.key.public_key())

    def vkey(self) -> str:
        return vkey(self.name, self.key.public_key())

    def skey(self) -> str:
        """The private key as ``PRIVATE+KEY+name+hex8+base64(0x04 ‖ seed)`` (the form Go's
        note package uses for signer keys, with the cosignature type byte)."""
        seed = self.key.private_bytes_raw()
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{encoded}"

    @classmethod
    def from_skey(cls, text: str) -> Cosigner:
        parts = text.strip().split("+", 4) if isinstance(text, str) else []
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("witness key file must hold PRIVATE+KEY+name+hash+key")
        _, _, name, hex_id, b64 = parts
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(_key_material(b64)))
        _check_hash(signer.key_hash, hex_id)
        return signer

    def cosign(self, body: str, timestamp: int) -> NoteSignature:
        """The signature line for `body` at `timestamp`."""
        sig = self.key.sign(signed_message(body, timestamp))
        return NoteSignature(self.name, self.key_hash, timestamp.to_bytes(8, "big") + sig)


@dataclass(frozen=True)
class CosignatureVerifier:
    """A trusted witness key, parsed from its vkey."""

    name: str
    public_key: Ed25519PublicKey

    @property
    def key_hash(self) -> int:
        return key_id(self.name, self.public_key)

    @classmethod
    def from_vkey(cls, text: str) -> CosignatureVerifier:
        parts = text.split("+", 2) if isinstance(text, str) else []
        if len(parts) != 3:
            raise NoteError("witness key must have the form name+hash+key")
        name, hex_id, b64 = parts
        check_key_name(name)
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(_key_material(b64)))
        _check_hash(verifier.key_hash, hex_id)
        return verifier

    def vkey(self) -> str:
        return vkey(self.name, self.public_key)

    def timestamp_of(self, body: str, sig: NoteSignature) -> int:
        """The verified timestamp of `sig` on `body`; NoteError when it does not verify."""
        if len(sig.signature) != 72:
            raise NoteError(f"cosignature by {self.name} is not 8 + 64 bytes")
        timestamp = int.from_bytes(sig.signature[:8], "big")
        try:
            self.public_key.verify(sig.signature[8:], signed_message(body, timestamp))
        except InvalidSignature:
            raise NoteError(f"cosignature by {self.name} ({self.key_hash:08x}) does not verify") from None
        return timestamp


def verified_cosignatures(note: str, witnesses: Sequence[CosignatureVerifier]) -> dict[str, int]:
    """Witness name -> cosignature timestamp, for every trusted witness whose cosignature
    on `note` verifies. Lines by unknown keys are ignored (as the spec asks); a line by a
    trusted key that does not verify is an error, never silently skipped."""
    body, sigs = parse_note(note)
    trusted = {(w.name, w.key_hash): w for w in witnesses}
    out: dict[str, int] = {}
    for sig in sigs:
        w = trusted.get((sig.name, sig.key_hash))
        if w is not None:
            out[w.name] = w.timestamp_of(body, sig)
    return out
