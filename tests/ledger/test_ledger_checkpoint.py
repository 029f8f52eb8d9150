"""C2SP tlog checkpoints: exact text form, strict parsing, signing and opening."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from duet.ledger.errors import CheckpointError, NoteError
from duet.ledger.note import Signer, open_note, sign_note

ROOT = hashlib.sha256(b"some root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
ORIGIN = "duet/" + "ab" * 32 + "/cvm-1"
SIGNER = Signer("duet/" + "ab" * 32, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The same 32 bytes in non-canonical base64: the unused low bits of the last character set.
ROOT_B64_TWIN = ROOT_B64[:-2] + _ALPHABET[_ALPHABET.index(ROOT_B64[-2]) | 0b11] + "="
assert ROOT_B64_TWIN != ROOT_B64 and base64.b64decode(ROOT_B64_TWIN) == ROOT
OTHER = Signer("duet/" + "ab" * 32, Ed25519PrivateKey.from_private_bytes(bytes(32)))


def test_body_is_the_spec_format() -> None:
    cp = Checkpoint(ORIGIN, 20852163, ROOT)
    assert cp.body() == f"{ORIGIN}\n20852163\n{ROOT_B64}\n"
    ext = Checkpoint(ORIGIN, 0, ROOT, ("ext one", "ext two"))
    assert ext.body() == f"{ORIGIN}\n0\n{ROOT_B64}\next one\next two\n"
    assert Checkpoint.parse(ext.body()) == ext
    assert Checkpoint.parse(cp.body(), expected_origin=ORIGIN) == cp


def test_spec_example_parses() -> None:
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(body, expected_origin="example.com/behind-the-sofa")
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.body() == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n5\n{ROOT_B64}", "newline"),
        (f"{ORIGIN}\n5\n", "lines"),
        (f"\n5\n{ROOT_B64}\n", "origin"),
        (f"{ORIGIN}\n05\n{ROOT_B64}\n", "leading zeros"),
        (f"{ORIGIN}\n-5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n+5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n 5\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n5.0\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n{2**63}\n{ROOT_B64}\n", "decimal"),
        (f"{ORIGIN}\n١\n{ROOT_B64}\n", "decimal"),  # Arabic-Indic digit one
        (f"{ORIGIN}\n5\n{ROOT_B64[:-1]}\n", "base64"),
        (f"{ORIGIN}\n5\n{ROOT_B64_TWIN}\n", "canonical"),
        (f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\n\n", "extension line 1 is empty"),
        (f"{ORIGIN}\n5\n{ROOT_B64}\next\n\nmore\n", "extension line 2 is empty"),
        (f"{ORIGIN}\t\n5\n{ROOT_B64}\n", "control"),
    ],
)
def test_malformed_bodies_are_rejected(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(body)


def test_origin_must_match_when_expected() -> None:
    body = Checkpoint(ORIGIN, 5, ROOT).body()
    with pytest.raises(CheckpointError, match="expected 'duet/other'"):
        Checkpoint.parse(body, expected_origin="duet/other")


def test_construction_is_validated() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, True, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT[:31])
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT, ("",))


def test_sign_and_open() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    note = sign_checkpoint(cp, SIGNER)
    assert note.startswith(cp.body() + "\n— " + SIGNER.name + " ")
    assert open_checkpoint(note, SIGNER.verifier(), expected_origin=ORIGIN) == cp
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(note, SIGNER.verifier(), expected_origin=ORIGIN + "x")
    with pytest.raises(NoteError):
        open_checkpoint(note, OTHER.verifier())
    tampered = note.replace("\n7\n", "\n8\n")
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(tampered, SIGNER.verifier())


def test_cosigned_checkpoint_opens_and_keeps_cosignature() -> None:
    witness = Signer("witness.example/w1", Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32))
    cp = Checkpoint(ORIGIN, 7, ROOT)
    note = sign_note(cp.body(), [SIGNER, witness])
    assert open_checkpoint(note, SIGNER.verifier()) == cp
    assert [s.name for s in open_note(note, [SIGNER.verifier()]).signatures] == [
        SIGNER.name,
        witness.name,
    ]


def test_a_signed_note_that_is_not_a_checkpoint() -> None:
    note = sign_note("just some text\n", [SIGNER])
    with pytest.raises(CheckpointError):
        open_checkpoint(note, SIGNER.verifier())
