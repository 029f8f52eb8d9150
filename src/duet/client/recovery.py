"""A recovery-key holder's side of `duet controller recover` (docs/continuity.md).

The holder is asked to hand its share of the state key K to a recovering enclave. It
believes nothing the host says: it fetches the enclave's session (a fresh X25519 key, a
quote binding that key and the controller id, and the owner's `controller.approve`
intents from the controller log), then

1. verifies the quote (DCAP; a SIMULATED development root only with --trust-simulated;
   debug enclaves are refused) and that it binds the session key and this controller;
2. checks the quoted build against the approvals: an approval counts only if it is an
   intent signed by an owner key the holder trusts (those in its share file, fetched by
   the owner from the attested controller, or given with --owner-key) and addressed to
   this controller, so the host cannot make one up;
3. opens its share (HPKE with its own key; the share's `info` names the controller, the
   index and the K it is a share of) and re-encrypts it to the session key, for that
   index only, authenticated with its own key (HPKE auth mode) so that nobody else can
   send a share in its name.

An enclave that is not an approved build gets nothing: the share is never decrypted.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from duet.attestation.errors import AttestationError
from duet.client.api import RECOVERY_SESSION_PATH, RECOVERY_SHARE_PATH
from duet.client.errors import ClientError
from duet.client.wire import raise_for_status
from duet.ledger import keys
from duet.ledger import recovery as rc
from duet.ledger.errors import LedgerError
from duet.ledger.intent import parse_intent, verify_signature
from duet.ledger.operations import Op


class RecoveryRefused(ClientError):
    """The recovering enclave is not one the holder may hand its share to."""

    def __init__(self, message: str) -> None:
        super().__init__("recovery_refused", message)


def _approved(report: Any, approvals: Sequence[str], controller_id: str, trusted: dict[str, Any]) -> str | None:
    """The key id of an owner who approved this build, or None."""
    for jws in approvals:
        try:
            it = parse_intent(jws)
            verify_signature(it, trusted)
        except LedgerError:
            continue
        if it.op != Op.CONTROLLER_APPROVE or it.payload.get("aud") != controller_id:
            continue
        a = it.args
        if a.get("mrenclave") is not None:
            if hmac.compare_digest(str(a["mrenclave"]), report.mrenclave):
                return it.kid
        elif a.get("mrsigner") is not None and hmac.compare_digest(str(a["mrsigner"]), report.mrsigner) \
                and a.get("isv_prod_id") == report.isv_prod_id and report.isv_svn >= int(a.get("min_isv_svn") or 0):
            return it.kid
    return None


def check_session(session: Any, share: rc.ShareFile, *, trust_simulated: bool,
                  extra_owner_keys: Sequence[str] = ()) -> tuple[bytes, Any]:
    """(the enclave's session key, its verified report), or RecoveryRefused."""
    from duet.attestation import verify_sgx_quote

    if not isinstance(session, dict) or not session.get("recovering"):
        raise RecoveryRefused("the controller is not waiting for recovery shares")
    try:
        cid = str(session["controller_id"])
        pub = base64.b64decode(str(session["public_key"]), validate=True)
        q = session["quote"]
        quote = base64.b64decode(str(q["quote"]), validate=True)
        root = base64.b64decode(str(q["simulated_root_ca"]), validate=True) if q.get("simulated_root_ca") else None
        approvals = [str(j) for j in session["approvals"]]
        holders = [str(h) for h in session["holders"]]
        commitment = str(session["state_key_sha256"])
    except (KeyError, ValueError, TypeError) as exc:
        raise RecoveryRefused(f"malformed recovery session: {exc}") from None
    if cid != share.controller_id:
        raise RecoveryRefused(f"the enclave recovers controller {cid[:16]}…, this share is for "
                              f"{share.controller_id[:16]}…")
    if commitment != share.state_key_sha256:
        raise RecoveryRefused("this share is of another generation of the state key than the one the enclave "
                              "recovers (the key was rotated since: ask the owner for the current shares)")
    if not 1 <= share.index <= len(holders) or holders[share.index - 1] != share.holder_key:
        raise RecoveryRefused(f"the recovery policy the enclave shows does not name this holder at index {share.index}")
    if len(pub) != 32:
        raise RecoveryRefused("the enclave's session key is not an X25519 key")
    if root is not None and not trust_simulated:
        raise RecoveryRefused("the recovering enclave runs on a SIMULATED TEE (pass --trust-simulated for development)")
    try:
        report = verify_sgx_quote(quote, q["collateral"], now=datetime.now(UTC), root_ca_der=root)
    except (AttestationError, ValueError, TypeError, KeyError) as exc:
        raise RecoveryRefused(f"the recovering enclave's quote does not verify: {exc}") from None
    if not hmac.compare_digest(report.report_data, rc.report_data(pub, cid)):
        raise RecoveryRefused("the quote does not bind the enclave's session key and this controller")
    trusted: dict[str, Any] = {}
    for b64 in (*share.owner_keys, *extra_owner_keys):
        try:
            pk = keys.public_from_b64(b64)
        except (LedgerError, ValueError):
            raise RecoveryRefused(f"not an Ed25519 owner key: {b64[:20]}") from None
        trusted[keys.key_id(pk)] = pk
    if _approved(report, approvals, cid, trusted) is None:
        raise RecoveryRefused(
            f"build MRENCLAVE {report.mrenclave[:16]}… (MRSIGNER {report.mrsigner[:16]}…) is not approved for this "
            "controller by an owner key this holder trusts: the share was not opened")
    return pub, report


def transfer(share: rc.ShareFile, holder_key: X25519PrivateKey, enclave_key: bytes) -> bytes:
    """Open the share with the holder's key and re-encrypt it to the enclave's session key."""
    if rc.public_b64(holder_key.public_key()) != share.holder_key:
        raise ClientError("invalid_share", "this holder key is not the one the share was made for")
    y = rc.decode_share(rc.open_sealed(holder_key, share.sealed,
                                       rc.holder_info(share.controller_id, share.index, share.state_key_sha256),
                                       f"share {share.index}"), share.index)
    return rc.seal(rc.public_from_b64(base64.b64encode(enclave_key).decode()), rc.encode_share(share.index, y),
                   rc.transfer_info(share.controller_id, share.index, enclave_key), sender=holder_key)


def recover(url: str, share: rc.ShareFile, holder_key: X25519PrivateKey, *, trust_simulated: bool,
            extra_owner_keys: Sequence[str] = (), timeout: float = 60.0) -> dict[str, Any]:
    """Run the holder's side against the recovering enclave at `url` (a hint: what is
    accepted is decided by the quote and the owner's signatures)."""
    import httpx

    verify: Any = False if url.startswith("https://") else True
    try:
        with httpx.Client(base_url=url, timeout=timeout, verify=verify) as http:
            got = http.get(RECOVERY_SESSION_PATH)
            raise_for_status(got.status_code, got.content, RECOVERY_SESSION_PATH)
            pub, report = check_session(got.json(), share, trust_simulated=trust_simulated,
                                        extra_owner_keys=extra_owner_keys)
            sealed = transfer(share, holder_key, pub)
            res = http.post(RECOVERY_SHARE_PATH,
                            json={"index": share.index, "sealed": base64.b64encode(sealed).decode()})
            raise_for_status(res.status_code, res.content, RECOVERY_SHARE_PATH)
            answer = dict(res.json())
    except httpx.HTTPError as exc:
        raise ClientError("unreachable", f"cannot reach the recovering controller at {url}: {exc}") from None
    except ValueError as exc:
        raise ClientError("bad_response", f"the recovering controller answered something else: {exc}") from None
    answer["mrenclave"] = report.mrenclave
    answer["simulated"] = bool(report.simulated)
    return answer
