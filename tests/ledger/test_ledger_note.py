"""C2SP signed notes: the Go and C2SP vectors, and the strict parsing rules."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from duet.ledger.errors import NoteError
from duet.ledger.note import (
    MAX_SIGNATURES,
    Signer,
    Verifier,
    open_note,
    parse_note,
    sign_note,
    verifier_key_string,
)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "signed_note_vectors.json").read_text())
KEYS: dict[str, str] = VECTORS["keys"]
BY_ID = {v["id"]: v for v in VECTORS["vectors"]}


def verifiers(names: list[str]) -> list[Verifier]:
    return [Verifier.from_vkey(KEYS[name]) for name in names]


def _signer(name: str, seed: int) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


ALICE = _signer("example.com/alice", 1)
BOB = _signer("example.com/bob", 2)
TEXT = "origin\n42\nline three\n"


@pytest.mark.parametrize("vector", [v for v in VECTORS["vectors"] if "note" in v], ids=lambda v: v["id"])
def test_open_vectors(vector: dict[str, Any]) -> None:
    vs = verifiers(vector["verify_with"])
    if vector["expect"].startswith("reject"):
        with pytest.raises(NoteError):
            open_note(vector["note"], vs)
    else:
        note = open_note(vector["note"], vs)
        assert note.verified_by == [v.name for v in vs]
        # Every signature line is kept, trusted or not (cosignatures come later).
        assert len(note.signatures) == vector["note"].count("\n— ")
        assert vector["note"].startswith(note.text)


def test_golden_signature_reproduced_byte_for_byte() -> None:
    vector = BY_ID["go-sign-golden"]
    signer = Signer.from_skey(KEYS["PeterNeumann_skey"])
    assert signer.verifier_key() == KEYS["PeterNeumann_vkey"]
    assert sign_note(vector["text"], [signer]) == vector["expected_note"]


def test_two_signature_note_keeps_the_unknown_one() -> None:
    note = open_note(BY_ID["go-open-two-sigs"]["note"], verifiers(["PeterNeumann_vkey"]))
    assert [s.name for s in note.signatures] == ["PeterNeumann", "EnochRoot"]
    assert note.verified_by == ["PeterNeumann"]
    enoch = Verifier.from_vkey(KEYS["EnochRoot_vkey"])
    assert note.signatures[1].key_hash == enoch.key_hash
    both = open_note(BY_ID["go-open-two-sigs"]["note"], [enoch, *verifiers(["PeterNeumann_vkey"])])
    assert both.verified_by == ["PeterNeumann", "EnochRoot"]


def test_key_id_and_vkey_format() -> None:
    raw = ALICE.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    digest = hashlib.sha256(b"example.com/alice\n\x01" + raw).digest()
    assert ALICE.key_hash == int.from_bytes(digest[:4], "big")
    vkey = verifier_key_string("example.com/alice", ALICE.key.public_key())
    name, hex8, b64 = vkey.split("+")
    assert (name, hex8) == ("example.com/alice", digest[:4].hex())
    assert base64.b64decode(b64) == b"\x01" + raw
    assert Verifier.from_vkey(vkey).key_hash == ALICE.key_hash
    assert ALICE.verifier().verifier_key() == vkey == ALICE.verifier_key()
    # The base64 part may contain '+', the separator: it must still parse.
    seed = next(i for i in range(256) if "+" in _signer("k", i).verifier_key().split("+", 2)[2])
    plus = _signer("k", seed)
    assert Verifier.from_vkey(plus.verifier_key()).key_hash == plus.key_hash


def test_round_trip_with_several_signers() -> None:
    note = sign_note(TEXT, [ALICE, BOB])
    opened = open_note(note, [BOB.verifier()])
    assert opened.text == TEXT
    assert [s.name for s in opened.signatures] == [ALICE.name, BOB.name]
    assert opened.verified_by == [BOB.name]
    assert BOB.verifier().verify(TEXT.encode(), opened.signatures[1].signature)
    # Text may itself contain blank lines: the last one separates the signatures.
    tricky = "a\n\n— not a signature\n\nb\n"
    assert open_note(sign_note(tricky, [ALICE]), [ALICE.verifier()]).text == tricky


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda n: n + "garbage\n", "signature line"),
        (lambda n: n + "\n", "signature line"),
        (lambda n: n[:-1], "newline"),
        (lambda n: n.replace("\n\n", "\n"), "blank line"),
        (lambda n: n + n.split("\n\n", 1)[1], "two signatures"),
        (lambda n: n.replace("— ", "-- "), "'— '"),
        (lambda n: n.replace("— ", "—  "), "signature line 1"),
        (lambda n: n.replace("line three", "line\tthree"), "control character"),
        (lambda n: n.replace("line three", "line\rthree"), "control character"),
        (lambda n: n.replace("line three", "line \ud800"), "UTF-8"),
        (lambda n: n.rstrip("\n") + "=\n", "base64"),
        (lambda n: n.replace("example.com/alice ", "example.com/a+lice "), "contains a space"),
        (lambda n: n.split("\n\n")[0] + "\n\n", "no signature lines"),
    ],
)
def test_malformed_notes_are_rejected_precisely(mutate: Any, message: str) -> None:
    note = sign_note(TEXT, [ALICE])
    open_note(note, [ALICE.verifier()])  # the unmutated note is fine
    with pytest.raises(NoteError, match=message):
        open_note(mutate(note), [ALICE.verifier()])


def test_non_canonical_base64_is_rejected() -> None:
    note = sign_note(TEXT, [ALICE])
    line = note.split("\n\n")[1]
    blob = base64.b64decode(line.split(" ")[2])
    # 68 bytes encode with one pad char; setting the unused low bits of the last
    # character gives another string that decodes to the same bytes.
    encoded = base64.b64encode(blob).decode()
    assert encoded.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(encoded[-2])
    twin = encoded[:-2] + alphabet[last | 0b11] + "="
    assert twin != encoded and base64.b64decode(twin) == blob
    with pytest.raises(NoteError, match="canonical"):
        open_note(note.replace(encoded, twin), [ALICE.verifier()])


def test_signature_trust_rules() -> None:
    note = sign_note(TEXT, [ALICE])
    # Unknown key only: rejected, and the error names who signed and who was expected.
    with pytest.raises(NoteError, match=r"not signed by a known key.*alice.*known.*bob"):
        open_note(note, [BOB.verifier()])
    with pytest.raises(NoteError):
        open_note(note, [])
    # Same name, other key (so other key ID): treated as unknown, not as a bad signature.
    impostor = _signer(ALICE.name, 9)
    with pytest.raises(NoteError, match="not signed by a known key"):
        open_note(note, [impostor.verifier()])
    # Same name and key ID but a signature that does not verify: reject the note even
    # though another trusted key signed it.
    forged = sign_note("other text\n", [ALICE]).split("\n\n")[1]
    combined = sign_note(TEXT, [BOB]) + forged
    with pytest.raises(NoteError, match="does not verify"):
        open_note(combined, [ALICE.verifier(), BOB.verifier()])
    # ... while a verifier that only knows Bob ignores Alice's line.
    assert open_note(combined, [BOB.verifier()]).verified_by == [BOB.name]


def test_too_many_signatures() -> None:
    signers = [_signer(f"w{i}", i % 250 + 1) for i in range(MAX_SIGNATURES + 1)]
    note = sign_note(TEXT, signers)
    with pytest.raises(NoteError, match="at most"):
        open_note(note, [signers[0].verifier()])
    ok = sign_note(TEXT, signers[:16])
    assert open_note(ok, [signers[15].verifier()]).verified_by == ["w15"]


def test_parse_only_checks_format() -> None:
    text, sigs = parse_note(sign_note(TEXT, [ALICE, BOB]))
    assert text == TEXT and [s.name for s in sigs] == [ALICE.name, BOB.name]
    assert sigs[0].line() == sign_note(TEXT, [ALICE]).split("\n\n")[1]


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("nohash", "form"),
        ("a+b+c+d", "hex"),
        ("name+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "hex"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" + bytes(32)).decode(), "Ed25519"),
        ("PeterNeumann+c74f20a3+" + base64.b64encode(b"\x01" + bytes(31)).decode(), "Ed25519"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "non-empty"),
    ],
)
def test_bad_verifier_keys(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        Verifier.from_vkey(vkey)


def test_signing_rejects_bad_text_and_duplicate_signers() -> None:
    with pytest.raises(NoteError, match="newline"):
        sign_note("no newline", [ALICE])
    with pytest.raises(NoteError, match="control"):
        sign_note("bell\x07\n", [ALICE])
    with pytest.raises(NoteError, match="twice"):
        sign_note(TEXT, [ALICE, ALICE])
    with pytest.raises(NoteError, match="at least one"):
        sign_note(TEXT, [])
    with pytest.raises(NoteError):
        Signer("has space", ALICE.key)
