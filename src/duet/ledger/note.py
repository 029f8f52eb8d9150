"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A signed note is text followed by a blank line and one or more signature lines
``— <name> base64(key_id ‖ signature)``. Checkpoints travel in this format, and witnesses
will later add their cosignatures to the same note, so parsing keeps every signature line
while trusting only the keys the caller supplies.

Parsing is strict because a note is security-relevant input from the network: anything
the specification does not allow (control characters, a missing blank line, a line that is
not a signature, non-canonical base64, two signatures by the same key) is rejected with a
:class:`NoteError` that says what was wrong, instead of being repaired silently.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from duet.ledger.errors import NoteError

ALG_ED25519 = 0x01
"""Signature type byte of Ed25519 in c2sp.org/signed-note."""

MAX_SIGNATURES = 100
"""Signature lines accepted in one note. The spec asks for at least 16; witnesses
cosigning a checkpoint stay far below this, while an unbounded count would let anyone
make verification arbitrarily expensive."""

MAX_NOTE_BYTES = 1 << 20
"""Largest note accepted by :func:`open_note`; checkpoints are a few hundred bytes."""

_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_HEX8 = re.compile(r"[0-9a-f]{8}")


def _b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only: one encoding per byte string, so a
    signature line cannot be re-encoded into a second, "different" valid line."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def check_key_name(name: str) -> None:
    """Key names must be non-empty and contain no Unicode spaces and no '+' (the spec);
    '+' separates the parts of a verifier key string."""
    if not isinstance(name, str) or not name:
        raise NoteError("key name must be a non-empty string")
    for ch in name:
        if ch.isspace() or ch == "+" or ord(ch) < 0x20 or ch == "\x7f":
            raise NoteError(f"key name {name!r} contains a space, '+' or control character")


def _check_text_chars(text: str, what: str) -> None:
    """Notes must be valid UTF-8 with no ASCII control character other than newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8") from exc
    for i, ch in enumerate(text):
        if ch < " " and ch != "\n":
            raise NoteError(f"{what} contains control character U+{ord(ch):04X} at offset {i}")


def key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """Key ID = SHA-256(name ‖ 0x0A ‖ 0x01 ‖ pubkey)[:4], big-endian (signed-note spec)."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key)
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def verifier_key_string(name: str, public_key: Ed25519PublicKey) -> str:
    """The standard verifier key ``name+hex8(key id)+base64(0x01 ‖ pubkey)``."""
    check_key_name(name)
    encoded = base64.b64encode(bytes([ALG_ED25519]) + _raw_public(public_key)).decode("ascii")
    return f"{name}+{key_id(name, public_key):08x}+{encoded}"


class Verifier:
    """A trusted Ed25519 note key: its name, key ID and public key."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        check_key_name(name)
        self.name = name
        self.public_key = public_key
        self.key_hash = key_id(name, public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``name+hex8+base64(0x01 ‖ pubkey)``; the key ID must match the key."""
        if not isinstance(vkey, str):
            raise NoteError("verifier key must be a string")
        parts = vkey.split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise NoteError("verifier key must have the form name+hash+key")
        name, hex_id, b64 = parts
        check_key_name(name)
        if not _HEX8.fullmatch(hex_id):
            raise NoteError(f"verifier key hash {hex_id!r} is not 8 lowercase hex digits")
        raw = _b64decode_strict(b64, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("verifier key is not an Ed25519 key (0x01 followed by 32 bytes)")
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_hash != int(hex_id, 16):
            raise NoteError(
                f"verifier key hash {hex_id} does not match the key "
                f"(computed {verifier.key_hash:08x})"
            )
        return verifier

    def verifier_key(self) -> str:
        """This key as a verifier key string."""
        return verifier_key_string(self.name, self.public_key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """True iff ``sig`` is this key's Ed25519 signature of ``msg``."""
        try:
            self.public_key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"Verifier({self.verifier_key()!r})"


class Signer:
    """An Ed25519 note signing key with its name."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self.key = key
        self.key_hash = key_id(name, key.public_key())

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse the ``PRIVATE+KEY+name+hex8+base64(0x01 ‖ seed)`` form used by Go's
        golang.org/x/mod/sumdb/note and its test vectors."""
        parts = skey.split("+", 4) if isinstance(skey, str) else []
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("signer key must have the form PRIVATE+KEY+name+hash+key")
        _, _, name, hex_id, b64 = parts
        check_key_name(name)
        raw = _b64decode_strict(b64, "signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("signer key is not an Ed25519 key (0x01 followed by 32 bytes)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if not _HEX8.fullmatch(hex_id) or signer.key_hash != int(hex_id, 16):
            raise NoteError(f"signer key hash {hex_id!r} does not match the key")
        return signer

    def verifier(self) -> Verifier:
        """The matching :class:`Verifier`."""
        return Verifier(self.name, self.key.public_key())

    def verifier_key(self) -> str:
        """The verifier key string to publish for this signer."""
        return verifier_key_string(self.name, self.key.public_key())

    def sign(self, msg: bytes) -> bytes:
        """Ed25519 signature of ``msg`` (64 bytes; deterministic)."""
        return self.key.sign(msg)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_hash={self.key_hash:08x})"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature without the key ID."""

    name: str
    key_hash: int
    signature: bytes

    def line(self) -> str:
        """The signature line as it appears in the note, with its final newline."""
        blob = self.key_hash.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class Note:
    """An opened note. ``signatures`` holds every line in order, trusted or not;
    ``verified_by`` names the caller's keys whose signatures verified."""

    text: str
    signatures: list[NoteSignature] = field(default_factory=list)
    verified_by: list[str] = field(default_factory=list)


def _check_note_text(text: str) -> None:
    if not isinstance(text, str):
        raise NoteError("note text must be a string")
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_text_chars(text, "note text")


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """Sign ``text`` (which must end in a newline) with every signer, in order."""
    _check_note_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    seen: set[tuple[str, int]] = set()
    lines = []
    msg = text.encode("utf-8")
    for signer in signers:
        ident = (signer.name, signer.key_hash)
        if ident in seen:
            raise NoteError(f"signer {signer.name} ({signer.key_hash:08x}) given twice")
        seen.add(ident)
        lines.append(NoteSignature(signer.name, signer.key_hash, signer.sign(msg)).line())
    return text + "\n" + "".join(lines)


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise NoteError(f"signature line {number} does not start with '— ': {line[:40]!r}")
    rest = line[len(_SIG_PREFIX) :]
    parts = rest.split(" ")
    if len(parts) != 2:
        raise NoteError(f"signature line {number} is not '— <name> <base64 signature>'")
    name, b64 = parts
    try:
        check_key_name(name)
    except NoteError as exc:
        raise NoteError(f"signature line {number}: {exc.message}") from exc
    blob = _b64decode_strict(b64, f"signature line {number}")
    if len(blob) < 5:
        raise NoteError(f"signature line {number} is too short to hold a key ID and signature")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def parse_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, checking only the format.

    Nothing here is trusted; :func:`open_note` is what callers want.
    """
    if not isinstance(note, str):
        raise NoteError("note must be a string")
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise NoteError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    _check_text_chars(note, "note")
    # The text is separated from the signatures by the *last* empty line (the text may
    # itself contain empty lines).
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("note does not end with a newline after its last signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signature lines, at most {MAX_SIGNATURES}")
    sigs = [_parse_signature_line(line, i + 1) for i, line in enumerate(lines)]
    seen: set[tuple[str, int]] = set()
    for sig in sigs:
        if (sig.name, sig.key_hash) in seen:
            raise NoteError(f"note has two signatures by key {sig.name} ({sig.key_hash:08x})")
        seen.add((sig.name, sig.key_hash))
    return text, sigs


def open_note(note: str, verifiers: Sequence[Verifier]) -> Note:
    """Parse ``note`` and verify it against the trusted ``verifiers``.

    Following the specification, a signature is matched to a verifier by (name, key ID);
    signatures by other keys are kept in the result but not trusted; a signature by a
    known key that does not verify rejects the whole note; and the note is rejected unless
    at least one known key verifies it.
    """
    text, sigs = parse_note(note)
    known = {(v.name, v.key_hash): v for v in verifiers}
    msg = text.encode("utf-8")
    verified: list[str] = []
    for sig in sigs:
        verifier = known.get((sig.name, sig.key_hash))
        if verifier is None:
            continue
        if not verifier.verify(msg, sig.signature):
            raise NoteError(f"signature by {sig.name} ({sig.key_hash:08x}) does not verify")
        verified.append(sig.name)
    if not verified:
        names = ", ".join(f"{s.name} ({s.key_hash:08x})" for s in sigs)
        wanted = ", ".join(f"{v.name} ({v.key_hash:08x})" for v in verifiers) or "none"
        raise NoteError(f"note is not signed by a known key: signed by {names}; known: {wanted}")
    return Note(text=text, signatures=sigs, verified_by=verified)
