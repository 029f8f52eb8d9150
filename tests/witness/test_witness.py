"""The witness, held to the C2SP tlog-witness and tlog-cosignature texts.

Each answer the spec prescribes is exercised (200, 400, 403, 404, 409 with the latest size
as `text/x.tlog.size`, 422), a fork and a rollback get no cosignature, the state survives
kill -9, and the cosignature format is checked against bytes computed here from the spec's
own description, not from the module under test.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.ledger import merkle
from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
from duet.ledger.cosignature import CosignatureVerifier, Cosigner, verified_cosignatures
from duet.ledger.errors import NoteError
from duet.ledger.note import Signer
from duet.witness.server import Refusal, Witness
from duet.witness.state import WitnessState
from helpers import free_port

ORIGIN = "duet/0123abcd/controller"
LOG_KEY = Signer("duet/0123abcd", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


class Log:
    """A log whose checkpoints and proofs the tests hand to the witness."""

    def __init__(self, leaves: list[bytes], signer: Signer = LOG_KEY, origin: str = ORIGIN) -> None:
        self.hashes = [merkle.leaf_hash(x) for x in leaves]
        self.signer, self.origin = signer, origin

    def root(self, size: int) -> bytes:
        return merkle.root(self.hashes[:size])

    def note(self, size: int) -> str:
        return sign_checkpoint(Checkpoint(self.origin, size, self.root(size)), self.signer)

    def body(self, old: int, size: int, *, proof: list[bytes] | None = None) -> bytes:
        if proof is None:
            proof = merkle.consistency_proof(self.hashes, old, size) if 0 < old < size else []
        lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
        return ("\n".join(lines) + "\n\n" + self.note(size)).encode()


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    cosigner = Cosigner("witness.test/w1", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    return Witness(WitnessState(tmp_path / "w.sqlite"), cosigner, {ORIGIN: [LOG_KEY.verifier()]},
                   clock=lambda: 1_700_000_000)


def refusal(witness: Witness, body: bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        witness.add_checkpoint(body)
    return info.value


def test_cosignature_v1_matches_the_spec_computed_by_hand() -> None:
    # tlog-cosignature: key ID = SHA-256(name || "\n" || 0x04 || pubkey)[:4]; the signed message is
    # "cosignature/v1\n" "time <ts>\n" then the checkpoint body; the line's payload is
    # key ID || u64 big-endian timestamp || Ed25519 signature. Ed25519 is deterministic, so the
    # whole line is fixed by the seed.
    seed, name, ts = bytes([0x42] * 32), "witness.example/w1", 1679315147
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    pub = sk.public_key().public_bytes_raw()
    key_id = hashlib.sha256(name.encode() + b"\n\x04" + pub).digest()[:4]
    msg = b"cosignature/v1\ntime 1679315147\n" + body.encode()
    expected = "— witness.example/w1 " + base64.b64encode(key_id + ts.to_bytes(8, "big") + sk.sign(msg)).decode()
    line = Cosigner(name, sk).cosign(body, ts).line()
    assert line == expected + "\n"
    vkey_material = base64.b64encode(b"\x04" + pub).decode()
    assert Cosigner(name, sk).vkey() == f"{name}+{key_id.hex()}+{vkey_material}"
    # and it verifies from the vkey alone, with the timestamp recovered
    verifier = CosignatureVerifier.from_vkey(Cosigner(name, sk).vkey())
    note = body + "\n" + line
    assert verified_cosignatures(note, [verifier]) == {name: ts}
    # a changed byte in the body is caught
    with pytest.raises(NoteError):
        verified_cosignatures(note.replace("20852163", "20852164"), [verifier])


def test_witness_follows_the_protocol(witness: Witness) -> None:
    log = Log([f"leaf {i}".encode() for i in range(12)])
    vkey = CosignatureVerifier.from_vkey(witness.cosigner.vkey())
    line = witness.add_checkpoint(log.body(0, 5))
    assert verified_cosignatures(log.note(5) + line, [vkey]) == {"witness.test/w1": 1_700_000_000}

    stale = refusal(witness, log.body(0, 8))  # the witness has cosigned 5 already
    assert (stale.status, stale.response().body) == (409, b"5\n")
    assert stale.response().headers["content-type"] == "text/x.tlog.size"
    assert refusal(witness, log.body(8, 5)).status == 400  # old larger than the checkpoint
    bad = merkle.consistency_proof(log.hashes, 5, 8)
    bad[0] = bytes(32)
    assert refusal(witness, log.body(5, 8, proof=bad)).status == 422
    assert refusal(witness, log.body(5, 8, proof=[])).status == 422

    line = witness.add_checkpoint(log.body(5, 8))
    assert verified_cosignatures(log.note(8) + line, [vkey])
    assert witness.add_checkpoint(log.body(8, 8))  # the same head again: cosigned again


def test_forks_and_rollbacks_get_no_cosignature(witness: Witness) -> None:
    honest = Log([f"leaf {i}".encode() for i in range(8)])
    fork = Log([f"leaf {i}".encode() for i in range(5)] + [b"rewritten", b"x", b"y"])
    witness.add_checkpoint(honest.body(0, 6))
    same_size_fork = refusal(witness, fork.body(6, 6))
    assert same_size_fork.status == 409 and same_size_fork.size == 6
    # a fork that extends past the cosigned head cannot prove consistency with it
    assert refusal(witness, fork.body(6, 8)).status == 422
    # a rolled-back log (smaller) names an old size the witness did not last cosign
    assert refusal(witness, honest.body(4, 4)).status == 409
    assert witness.state.latest(ORIGIN) == (6, honest.root(6))


def test_unknown_logs_and_keys_are_refused(witness: Witness) -> None:
    other_origin = Log([b"a"], origin="duet/other/controller")
    assert refusal(witness, other_origin.body(0, 1)).status == 404
    impostor = Log([b"a"], signer=Signer(LOG_KEY.name, Ed25519PrivateKey.generate()))
    assert refusal(witness, impostor.body(0, 1)).status == 403
    for junk in (b"", b"old 01\n\n", b"old 1\nnot base64!\n\n", b"old x\n\n" + Log([b"a"]).note(1).encode(),
                 b"old 0\n" + b"AAAA\n" * 64 + b"\n", b"\xff\xfe"):
        assert refusal(witness, junk).status == 400


def _serve(tmp: Path, key: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "duet.cli.main", "witness", "serve", "--data", str(tmp / "wdata"), "--key", str(key),
         "--log", f"{ORIGIN}={LOG_KEY.verifier_key()}", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("witness did not start")


def test_witness_over_http_keeps_its_state_through_kill_9(tmp_path: Path) -> None:
    key = tmp_path / "witness.key"
    made = subprocess.run([sys.executable, "-m", "duet.cli.main", "witness", "keygen", "--out", str(key),
                           "--name", "witness.test/http"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600" and "PRIVATE" not in made.stdout
    verifier = CosignatureVerifier.from_vkey(made.stdout.strip())
    log = Log([f"e{i}".encode() for i in range(10)])
    port = free_port()
    proc = _serve(tmp_path, key, port)
    url = f"http://127.0.0.1:{port}/add-checkpoint"
    try:
        r = httpx.post(url, content=log.body(0, 7), timeout=10)
        assert r.status_code == 200 and verified_cosignatures(log.note(7) + r.text, [verifier])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc = _serve(tmp_path, key, port)
        r = httpx.post(url, content=log.body(0, 9), timeout=10)  # as if it had forgotten
        assert (r.status_code, r.text, r.headers["content-type"]) == (409, "7\n", "text/x.tlog.size")
        assert httpx.post(url, content=log.body(7, 9), timeout=10).status_code == 200
        assert httpx.post(url, content=b"old 0\n\n" + b"x" * 70_000, timeout=10).status_code == 413
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
