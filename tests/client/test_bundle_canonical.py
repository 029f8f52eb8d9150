"""Bundles are canonical: exactly the checkpoint signatures that verify are kept, and any
other byte makes the bundle fail before anything reaches the user's state."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from evil_controller import EvilController, Recorded

from duet.client.bundle import BundleSource, export_bundle
from duet.client.errors import ClientError
from duet.client.verify import CheckpointMemory, verify
from duet.ledger import keys
from duet.ledger.note import NoteSignature, Signer


def _foreign_line(text: str, name: str = "witness.example/w1") -> str:
    signer = Signer(name, keys.Ed25519PrivateKey.generate())
    return NoteSignature(name, signer.key_hash, signer.sign(text.encode())).line()


def _export(evil: EvilController, recorded: Recorded, path: Path) -> dict[str, object]:
    evil.logs[recorded.cvm] = recorded.leaves[: recorded.marks["honest"]]
    with evil.http() as http:
        path.write_bytes(export_bundle(http, recorded.cvm))
    data: dict[str, object] = json.loads(path.read_bytes())
    return data


def _write(path: Path, data: dict[str, object]) -> None:
    path.write_bytes(rfc8785.dumps(data))


def test_export_keeps_only_the_controllers_signature(evil: EvilController, recorded: Recorded,
                                                     tmp_path: Path) -> None:
    text = evil.checkpoint_note(recorded.cvm).split("\n\n")[0] + "\n"
    evil.note_padding = _foreign_line(text) + "— junk AAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
    data = _export(evil, recorded, tmp_path / "b.json")
    note = str(data["checkpoint"])
    assert note.count("\n— ") == 1 and f"— duet/{evil.cid} " in note


def test_a_padded_bundle_fails_and_leaves_no_trace(evil: EvilController, recorded: Recorded, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    data = _export(evil, recorded, path)
    state = tmp_path / "user"
    report, _ = verify(BundleSource.load(path), recorded.cvm, trust_simulated=True, state_dir=tmp_path / "honest")
    assert report.ok
    note = str(data["checkpoint"])
    text = note.split("\n\n")[0] + "\n"
    padding = "".join(_foreign_line(text, f"pad.example/p{i}") for i in range(50))  # 50 valid-looking lines
    _write(path, {**data, "checkpoint": note + padding})
    report, _ = verify(BundleSource.load(path), recorded.cvm, trust_simulated=True, state_dir=state)
    assert not report.ok
    assert "not the controller's" in {c.name: c.detail for c in report.checks if not c.ok}["checkpoint_signature"]
    assert not (state / "checkpoints.json").exists() or "pad.example" not in (state / "checkpoints.json").read_text()


@pytest.mark.parametrize("edit", [
    lambda d: {**d, "quote": {**d["quote"], "collateral": {**d["quote"]["collateral"], "padding": "x" * 100_000}}},
    lambda d: {**d, "quote": {**d["quote"], "simulated": "true"}},
    lambda d: {**d, "quote": {**d["quote"], "collateral": {
        **d["quote"]["collateral"],
        "tcb_info_issuer_chain": "padding " * 1000 + d["quote"]["collateral"]["tcb_info_issuer_chain"]}}},
    lambda d: {**d, "quote": {**d["quote"], "collateral": {
        **d["quote"]["collateral"], "pck_crl": d["quote"]["collateral"]["pck_crl"].upper()}}},
    lambda d: {**d, "nonce": d["nonce"].upper()},
    lambda d: {**d, "entries": [_alt_b64(d["entries"][0]), *d["entries"][1:]]},
    lambda d: {**d, "controller": {**d["controller"], "public_key": _alt_b64(d["controller"]["public_key"])}},
    lambda d: {**d, "extra": "padding"},
])
def test_any_other_byte_fails_before_anything_is_stored(evil: EvilController, recorded: Recorded, tmp_path: Path,
                                                        edit) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "b.json"
    data = _export(evil, recorded, path)
    edited = edit(data)
    assert edited != data
    _write(path, edited)
    state = tmp_path / "user"
    try:
        report, _ = verify(BundleSource.load(path), recorded.cvm, trust_simulated=True, state_dir=state)
    except ClientError as exc:
        assert exc.code == "invalid_bundle"
    else:
        assert not report.ok
    assert CheckpointMemory(state).get(f"duet/{evil.cid}/{recorded.cvm}") is None


def _alt_b64(value: str) -> str:
    """Another base64 spelling of (almost) the same bytes: set unused low bits of the last
    character, which a lenient decoder ignores."""
    raw = base64.b64decode(value)
    if len(raw) % 3 == 0:
        return value + "\n"  # not even base64 then
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stripped = value.rstrip("=")
    last = alphabet.index(stripped[-1])
    return stripped[:-1] + alphabet[last | 1] + value[len(stripped):]


def test_live_verify_stores_only_the_verified_signature(evil: EvilController, recorded: Recorded,
                                                        tmp_path: Path) -> None:
    text = evil.checkpoint_note(recorded.cvm).split("\n\n")[0] + "\n"
    evil.note_padding = _foreign_line(text)
    state = tmp_path / "user"
    with evil.http() as http:
        report, _ = verify(http, recorded.cvm, trust_simulated=True, state_dir=state)
    note = CheckpointMemory(state).note(f"duet/{evil.cid}/{recorded.cvm}")
    assert note is not None and "witness.example" not in note and note.count("\n— ") == 1
    assert report.checkpoint["size"] == len(recorded.leaves)


def test_a_changed_certificate_in_a_collateral_chain_fails(evil: EvilController, recorded: Recorded,
                                                           tmp_path: Path) -> None:
    """A byte changed inside a chain certificate that the quote verifier may not read
    (here the PCK CRL issuer chain), re-encoded as clean PEM: the chain check catches it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "b.json"
    data: dict[str, Any] = _export(evil, recorded, path)
    chain = data["quote"]["collateral"]["pck_crl_issuer_chain"]
    certs = x509.load_pem_x509_certificates(chain.encode())
    der = certs[0].public_bytes(serialization.Encoding.DER)
    assert b"PCK" in der
    forged = x509.load_der_x509_certificate(der.replace(b"PCK", b"PCX", 1))
    new_chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in [forged, *certs[1:]])
    _write(path, {**data, "quote": {**data["quote"], "collateral": {
        **data["quote"]["collateral"], "pck_crl_issuer_chain": new_chain}}})
    report, _ = verify(BundleSource.load(path), recorded.cvm, trust_simulated=True, state_dir=tmp_path / "u")
    assert not report.ok
    assert "not issued by" in {c.name: c.detail for c in report.checks if not c.ok}.get("controller_quote", "")
