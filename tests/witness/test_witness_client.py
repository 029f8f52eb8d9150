"""The submitting side of tlog-witness against duet's own witness (in-process ASGI): first
contact, growth, recovery from a wrong guess of the witness's size, and refusal of a
cosignature that does not verify or of a witness ahead of the log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_witness import LOG_KEY, ORIGIN, Log

from duet.ledger import merkle
from duet.ledger.cosignature import CosignatureVerifier, Cosigner, verified_cosignatures
from duet.witness.client import WitnessError, add_checkpoint
from duet.witness.server import Witness, make_app
from duet.witness.state import WitnessState

KEY = Cosigner("witness.test/c", Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))


@pytest.fixture
def http(tmp_path: Path) -> httpx.Client:
    """Starlette's TestClient is an httpx.Client that drives the ASGI app in-process."""
    from starlette.testclient import TestClient

    witness = Witness(WitnessState(tmp_path / "w.sqlite"), KEY, {ORIGIN: [LOG_KEY.verifier()]}, clock=lambda: 1234)
    return TestClient(make_app(witness), base_url="http://witness")


def test_first_contact_growth_and_a_wrong_guess(http: httpx.Client) -> None:
    log = Log([f"e{i}".encode() for i in range(20)])
    verifier = CosignatureVerifier.from_vkey(KEY.vkey())

    def proof(old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(log.hashes, old, new)

    got, held = add_checkpoint(http, "http://witness", verifier, log.note(5), 5, proof, old=0)
    assert held == 5 and verified_cosignatures(log.note(5) + got.lines, [verifier]) == {KEY.name: 1234}
    got, held = add_checkpoint(http, "http://witness", verifier, log.note(12), 12, proof, old=5)
    assert held == 12
    # We forgot what the witness holds (a restart): its 409 tells us, and we resubmit once.
    got, held = add_checkpoint(http, "http://witness", verifier, log.note(18), 18, proof, old=0)
    assert held == 18 and got.timestamp == 1234


def test_a_witness_ahead_of_the_log_or_a_bad_line_is_refused(http: httpx.Client) -> None:
    log = Log([f"e{i}".encode() for i in range(20)])
    verifier = CosignatureVerifier.from_vkey(KEY.vkey())

    def proof(old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(log.hashes, old, new)

    add_checkpoint(http, "http://witness", verifier, log.note(15), 15, proof, old=0)
    with pytest.raises(WitnessError, match="beyond this checkpoint"):  # a rolled-back log meets its witness
        add_checkpoint(http, "http://witness", verifier, log.note(10), 10, proof, old=0)
    impostor = CosignatureVerifier.from_vkey(Cosigner("witness.test/c", Ed25519PrivateKey.generate()).vkey())
    with pytest.raises(WitnessError, match="no cosignature by its key"):
        add_checkpoint(http, "http://witness", impostor, log.note(16), 16, proof, old=15)
