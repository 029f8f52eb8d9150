"""Split view: a controller shows users A and B two different CVM logs, each validly signed
with the real controller key (the `evil_controller` double). Without witnesses both views
verify: nothing connects the two users. With one honest witness and quorum 1, at most one
of them verifies; the other fails `witness_cosigned`, whichever way the controller tries to
get its view witnessed."""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from evil_controller import EvilController, Recorded

from duet.client.verify import Report, verify
from duet.client.witness_check import WitnessPolicy
from duet.ledger import entries, keys, merkle
from duet.ledger.checkpoint import Checkpoint, sign_checkpoint
from duet.ledger.cosignature import Cosigner
from duet.ledger.keys import Ed25519PrivateKey
from duet.ledger.note import Signer, Verifier
from duet.witness.server import Refusal, Witness
from duet.witness.state import WitnessState

WITNESS = Cosigner("witness.test/honest", Ed25519PrivateKey.from_private_bytes(b"\x11" * 32))


def _extra(view: str) -> bytes:
    return entries.ErrorEntry(code="note", message=f"only user {view} sees this").encode()


def _heads(cvm: str, leaves: list[bytes], ctl: list[bytes]) -> bytes:
    """A `heads` entry for `leaves`, with the consistency proof from the CVM's last head in
    the controller log `ctl` (a proof computed on `leaves`: it verifies only if that head
    is a prefix of them)."""
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    old = 0
    for leaf in ctl:
        e = entries.decode(leaf)
        if e["type"] == "heads":
            old = next((int(h["size"]) for h in e["heads"] if h["cvm"] == cvm), old)  # type: ignore[attr-defined]
    proof = merkle.consistency_proof(hashes, old, len(hashes)) if 0 < old < len(hashes) else []
    return entries.HeadsEntry(heads=({"cvm": cvm, "size": len(leaves), "root": base64.b64encode(
        merkle.root(hashes)).decode(), "consistency": [base64.b64encode(h).decode() for h in proof]},)).encode()


class WitnessedDouble:
    """The evil controller plus what it needs to serve `/witnessed`: a controller log with
    `heads` entries and a (claimed) cosigned checkpoint of it."""

    def __init__(self, rec: Recorded, cvm_leaves: list[bytes], ctl_leaves: list[bytes]) -> None:
        self.evil = EvilController(rec)
        self.evil.logs[rec.cvm] = cvm_leaves
        self.evil.logs["controller"] = ctl_leaves
        self.cosigned = ""
        self.evil.hooks["/witnessed"] = self._witnessed

    @property
    def origin(self) -> str:
        return f"duet/{self.evil.cid}/controller"

    def note(self, size: int) -> str:
        hashes = [merkle.leaf_hash(leaf) for leaf in self.evil.logs["controller"][:size]]
        cp = Checkpoint(self.origin, size, merkle.root(hashes))
        return sign_checkpoint(cp, Signer(f"duet/{self.evil.cid}", self.evil.key))

    def submit(self, witness: Witness, old: int) -> str:
        """Ask the witness to cosign the whole controller log; return the cosigned note
        (or raise the witness's refusal)."""
        ctl = self.evil.logs["controller"]
        hashes = [merkle.leaf_hash(leaf) for leaf in ctl]
        proof = merkle.consistency_proof(hashes, old, len(ctl)) if 0 < old < len(ctl) else []
        note = self.note(len(ctl))
        body = "\n".join([f"old {old}", *(base64.b64encode(h).decode() for h in proof)]) + "\n\n" + note
        return note + witness.add_checkpoint(body.encode())

    def _witnessed(self, request: httpx.Request) -> httpx.Response:
        size = int(parse_qs(urlsplit(str(request.url)).query)["size"][0])
        cvm = request.url.path.split("/")[3]
        ctl = self.evil.logs["controller"]
        cvm_hashes = [merkle.leaf_hash(leaf) for leaf in self.evil.logs[cvm]]
        ctl_size = int(self.cosigned.split("\n")[1])
        for i, leaf in enumerate(ctl[:ctl_size]):
            e = entries.decode(leaf)
            heads = {h["cvm"]: h for h in e.get("heads", [])} if e["type"] == "heads" else {}  # type: ignore[union-attr]
            if cvm in heads and heads[cvm]["size"] >= size:
                m = heads[cvm]["size"]
                cons = merkle.consistency_proof(cvm_hashes, size, m) if size < m <= len(cvm_hashes) else []
                incl = merkle.inclusion_proof([merkle.leaf_hash(x) for x in ctl], i, ctl_size)
                return httpx.Response(200, json={
                    "cvm": cvm, "size": size, "heads_index": i, "head": {"size": m, "root": heads[cvm]["root"]},
                    "consistency": [base64.b64encode(h).decode() for h in cons],
                    "controller_checkpoint": self.cosigned,
                    "inclusion": [base64.b64encode(h).decode() for h in incl]})
        return httpx.Response(503, json={"error": {"code": "not_witnessed", "message": "no heads entry"}})


def _verify(double: WitnessedDouble, state: Path, witnesses: WitnessPolicy | None) -> Report:
    with double.evil.http() as http:
        report, _ = verify(http, double.evil.rec.cvm, trust_simulated=True, state_dir=state, witnesses=witnesses,
                           now=datetime.now(UTC))
    return report


def _failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


@pytest.fixture
def views(recorded: Recorded) -> tuple[list[bytes], list[bytes]]:
    """Two forks of the CVM log, the same size, each a valid log on its own."""
    return [*recorded.leaves, _extra("A")], [*recorded.leaves, _extra("B")]


@pytest.fixture
def witness(tmp_path: Path, recorded: Recorded) -> Witness:
    evil = EvilController(recorded)
    log_key = Verifier(f"duet/{evil.cid}", evil.key.public_key())
    return Witness(WitnessState(tmp_path / "witness.sqlite"), WITNESS, {f"duet/{evil.cid}/controller": [log_key]},
                   clock=lambda: time.time() - 30)  # cosignatures dated 30 s ago


POLICY = WitnessPolicy.parse([WITNESS.vkey()], 1, timedelta(minutes=10))


def test_without_witnesses_both_views_verify(recorded: Recorded, views: Any, tmp_path: Path) -> None:
    a, b = views
    ctl = list(recorded.controller_leaves)
    for name, view in (("A", a), ("B", b)):
        report = _verify(WitnessedDouble(recorded, view, ctl), tmp_path / name, None)
        assert report.ok, _failed(report)
    # ... and demanding a witness with the same doubles is what catches it (below).


def test_separate_controller_logs_one_view_lacks_the_cosignature(
        recorded: Recorded, views: Any, witness: Witness, tmp_path: Path) -> None:
    a, b = views
    base = list(recorded.controller_leaves)
    user_a = WitnessedDouble(recorded, a, [*base, _heads(recorded.cvm, a, base)])
    user_b = WitnessedDouble(recorded, b, [*base, _heads(recorded.cvm, b, base)])
    user_a.cosigned = user_a.submit(witness, 0)
    # The honest witness will not cosign B's controller log: same size, another root.
    with pytest.raises(Refusal) as refused:
        user_b.submit(witness, len(base) + 1)
    assert refused.value.status == 409
    # So B's double shows A's cosignature line on its own checkpoint: it does not verify.
    user_b.cosigned = user_b.note(len(base) + 1) + user_a.cosigned.split("\n\n", 1)[1].split("\n", 1)[1]
    report_a = _verify(user_a, tmp_path / "A", POLICY)
    assert report_a.ok, _failed(report_a)
    passed = next(c for c in report_a.checks if c.name == "witness_cosigned")
    assert re.search(rf"{WITNESS.name} \(3\d s ago\)", passed.detail), passed.detail
    from duet.client.report_html import render_html

    page = render_html(report_a.to_json(), [])  # the auditor's report names the check and who signed
    assert "witness_cosigned" in page and WITNESS.name in page
    report_b = _verify(user_b, tmp_path / "B", POLICY)
    assert not report_b.ok
    failed = _failed(report_b)
    assert "witness_cosigned" in failed
    # An old cosigned checkpoint without B's head does not cover it either.
    user_b.evil.logs["controller"] = [*base, _heads(recorded.cvm, a, base)]
    user_b.cosigned = user_a.cosigned
    report_b = _verify(user_b, tmp_path / "B2", POLICY)
    assert "witness_cosigned" in _failed(report_b) and "fork" in _failed(report_b)["witness_cosigned"]


def test_one_controller_log_with_both_heads_fails_both_views(
        recorded: Recorded, views: Any, witness: Witness, tmp_path: Path) -> None:
    """Both heads in the one witnessed controller log: the second does not extend the first
    (no consistency proof can exist), so the controller log itself shows the fork, to every
    user; B's head is, besides, not the one that covers its size."""
    a, b = views
    base = list(recorded.controller_leaves)
    with_a = [*base, _heads(recorded.cvm, a, base)]
    both = [*with_a, _heads(recorded.cvm, b, with_a)]
    user_a, user_b = WitnessedDouble(recorded, a, both), WitnessedDouble(recorded, b, both)
    user_a.cosigned = user_b.cosigned = user_a.submit(witness, 0)
    failed_a = _failed(_verify(user_a, tmp_path / "A", POLICY))
    assert set(failed_a) == {"controller_log_entries"}, failed_a
    assert "does not extend its previous head" in failed_a["controller_log_entries"]
    failed_b = _failed(_verify(user_b, tmp_path / "B", POLICY))
    assert set(failed_b) == {"controller_log_entries", "witness_cosigned"}, failed_b
    assert "fork" in failed_b["witness_cosigned"]


def test_stale_or_missing_cosignatures_fail_and_say_who_signed(
        recorded: Recorded, views: Any, witness: Witness, tmp_path: Path) -> None:
    a, _ = views
    base = list(recorded.controller_leaves)
    user_a = WitnessedDouble(recorded, a, [*base, _heads(recorded.cvm, a, base)])
    user_a.cosigned = user_a.submit(witness, 0)
    strict = WitnessPolicy.parse([WITNESS.vkey()], 1, timedelta(seconds=10))
    failed = _failed(_verify(user_a, tmp_path / "A", strict))
    assert re.search(r"too old: witness.test/honest \(3\d s ago\)", failed["witness_cosigned"])
    other = Cosigner("witness.test/other", Ed25519PrivateKey.from_private_bytes(b"\x22" * 32))
    two = WitnessPolicy.parse([WITNESS.vkey(), other.vkey()], 2)
    failed = _failed(_verify(user_a, tmp_path / "A2", two))
    assert "not signed by witness.test/other" in failed["witness_cosigned"]
    assert keys is not None
