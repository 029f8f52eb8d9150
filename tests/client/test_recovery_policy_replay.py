"""A `recovery_policy` entry in the controller log must carry one share digest per holder
and commit to K exactly when recovery is on. Attack: a controller that logs the owner's
`controller.recovery` intent faithfully (same threshold and holders, so the intent check
passes) but a share list that does not match its holders, or a K commitment that does
not match whether recovery is on, is caught by the replay."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from duet.client.controller_log import controller_log_checks
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent

CID = "ce" * 32
OWNER = keys.Ed25519PrivateKey.generate()


def _holder() -> str:
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _entry(e: dict[str, Any], when: float) -> bytes:
    return entries.encode({"v": 1, **e, "time": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def _verdict(threshold: int, holders: list[str], shares: list[str], state_key: str) -> tuple[bool, str]:
    t = datetime.now(UTC).timestamp() - 60
    args = {"threshold": threshold, "holders": holders}
    jws = sign_intent(OWNER, op="controller.recovery", aud=CID, args=args, iat=int(t))
    leaves = [_entry({"type": "owner_keys", "keys": [keys.public_b64(OWNER.public_key())]}, t),
              _entry({"type": "intent", "jws": jws, "op": "controller.recovery",
                      "kid": keys.key_id(OWNER.public_key())}, t),
              _entry({"type": "recovery_policy", **args, "shares_sha256": shares, "state_key_sha256": state_key}, t)]
    checks, _ = controller_log_checks(leaves, controller_id=CID, expect=None)
    (c,) = [c for c in checks if c.name == "controller_log_entries"]
    return c.ok, c.detail


def test_a_policy_whose_shares_do_not_match_its_holders_fails() -> None:
    holders = [_holder(), _holder(), _holder()]
    k = "ab" * 32
    assert _verdict(2, holders, ["01" * 32, "02" * 32, "03" * 32], k)[0]  # honest
    assert _verdict(0, [], [], "")[0]  # recovery off: no shares, no commitment
    for threshold, hs, shares, key in ((2, holders, ["01" * 32, "02" * 32], k),  # a holder's share missing
                                       (2, holders, ["01" * 32] * 4, k),  # a share no holder has
                                       (2, holders, ["01" * 32, "02" * 32, "03" * 32], ""),  # on, no K commitment
                                       (0, [], [], k)):  # off, yet a K commitment
        ok, detail = _verdict(threshold, hs, shares, key)
        assert not ok and "entry 2: a recovery_policy entry whose shares do not match its holders" in detail, detail
