"""The user's audit of `witnesses` entries in the controller log: each must follow the
`witnesses.set` intent that asked for exactly it, signed by an owner key in force. A
controller that names witnesses of its own choosing (to cosign a split view with witnesses
it controls) is caught in the log, whatever users pass as --witness."""

from __future__ import annotations

import time
from typing import Any

from duet.client.controller_log import controller_log_checks
from duet.ledger import entries, keys
from duet.ledger.cosignature import Cosigner
from duet.ledger.intent import sign_intent

CID = "ab" * 32
OWNER = keys.Ed25519PrivateKey.generate()
STRANGER = keys.Ed25519PrivateKey.generate()
VKEY = Cosigner("witness.test/w", keys.Ed25519PrivateKey.generate()).vkey()
ARGS: dict[str, Any] = {"witnesses": [{"vkey": VKEY, "url": "https://w.example"}], "quorum": 1}


def _intent(signer: keys.Ed25519PrivateKey, args: dict[str, Any]) -> bytes:
    # Signed now and logged now: within the logging window of its entry's time.
    jws = sign_intent(signer, op="witnesses.set", aud=CID, args=args, iat=int(time.time()))
    return entries.IntentEntry(jws=jws, op="witnesses.set", kid=keys.key_id(signer.public_key())).encode()


def _log(*tail: bytes) -> list[bytes]:
    first = entries.OwnerKeysEntry(keys=(keys.public_b64(OWNER.public_key()),), time="2026-01-01T00:00:00.000000Z")
    return [first.encode(), *tail]  # the first entry's time before the others


def _witnesses(args: dict[str, Any]) -> bytes:
    return entries.WitnessesEntry(witnesses=tuple(args["witnesses"]), quorum=args["quorum"]).encode()


def _verdict(leaves: list[bytes]) -> tuple[bool, str]:
    checks, _ = controller_log_checks(leaves, controller_id=CID, expect=None)
    (c,) = [c for c in checks if c.name == "controller_log_entries"]
    return c.ok, c.detail


def test_an_owner_signed_witnesses_entry_is_accepted_and_heads_are_read() -> None:
    intent, witnesses = _intent(OWNER, ARGS), _witnesses(ARGS)
    heads = entries.HeadsEntry(heads=({"cvm": "c1", "size": 3, "root": "A" * 43 + "=", "consistency": []},)).encode()
    leaves = _log(intent, witnesses, heads)
    ok, detail = _verdict(leaves)
    assert ok, detail
    _, ctl = controller_log_checks(leaves, controller_id=CID, expect=None)
    assert ctl.witnesses == [(2, ARGS["witnesses"], 1)] and ctl.heads == {"c1": [(3, 3, "A" * 43 + "=")]}


def test_witnesses_the_owner_did_not_sign_are_caught() -> None:
    other = {"witnesses": [{"vkey": VKEY, "url": "https://evil.example"}], "quorum": 1}
    for leaves, why in [
        (_log(_witnesses(ARGS)), "without the witnesses.set intent"),
        (_log(_intent(STRANGER, ARGS), _witnesses(ARGS)), "which is not an owner key"),
        (_log(_intent(OWNER, ARGS), _witnesses(other)), "differs from what the preceding intent asked"),
    ]:
        ok, detail = _verdict(leaves)
        assert not ok and why in detail, detail
