"""The controller log as the user checks it: which owner keys were in force when, and
whether each CVM log points into it honestly.

The controller log (origin `duet/<controller-id>/controller`) holds the claim and every
owner-key change: an `owner.keys` intent, verbatim, followed by the `owner_keys` entry it
authorised. Likewise a `providers.set` intent is followed by the `providers` entry it
authorised and a `credentials.set` intent by its `credentials` entry (which names the
provider and digests, never the secret). A `providers` entry without an intent is the
`--providers` file of a controller run outside an enclave (development). Its first
entry may instead be a bare `owner_keys` entry: the key set the
operator gave at first start (`--owner-key`), or the keys of a data dir that predates the
controller log. Each CVM intent names the controller-log size in force when it was
accepted; the intent's signer must be an owner key of that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from duet.client.audit import Check
from duet.client.expectations import UserExpectations
from duet.ledger import entries, keys, merkle
from duet.ledger.errors import LedgerError
from duet.ledger.intent import parse_intent, verify_signature
from duet.ledger.operations import Op


@dataclass
class ControllerLog:
    decoded: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    #: (controller-log size once the change was appended, key ids, base64 keys).
    changes: list[tuple[int, list[str], list[str]]] = field(default_factory=list)
    #: Index of each `providers` entry, and of those no owner intent authorised.
    providers: list[int] = field(default_factory=list)
    host_seeded: list[int] = field(default_factory=list)
    credentials: list[int] = field(default_factory=list)

    def keys_at(self, size: int) -> list[str]:
        """Key ids in force in the prefix of `size` entries."""
        current: list[str] = []
        for at, ids, _ in self.changes:
            if at <= size:
                current = ids
        return current


def _ids(b64s: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for b in b64s:
        pub = keys.public_from_b64(str(b))
        out[keys.key_id(pub)] = pub
    return out


def controller_log_checks(leaves: Sequence[bytes], *, controller_id: str,
                          expect: UserExpectations | None) -> tuple[list[Check], ControllerLog]:
    ctl = ControllerLog(hashes=[merkle.leaf_hash(leaf) for leaf in leaves])
    problems: list[str] = []
    in_force: dict[str, Any] = {}
    nonces: set[str] = set()
    for i, leaf in enumerate(leaves):
        try:
            e: dict[str, Any] = entries.parse(leaf).to_dict()
        except LedgerError as exc:
            problems.append(f"entry {i}: {exc}")
            ctl.decoded.append({"type": "undecodable"})
            continue
        ctl.decoded.append(e)
        t = e.get("type")
        if t == "intent":
            try:
                nxt = entries.decode(leaves[i + 1]).get("type") if i + 1 < len(leaves) else None
            except LedgerError:
                nxt = None  # reported as undecodable on its own turn
            if _AUTHORISES.get(str(e.get("op"))) != nxt:
                problems.append(f"entry {i}: a {e.get('op')} intent not followed by the entry it authorises")
            continue  # judged with the entry it must be followed by
        if t in ("providers", "credentials"):
            problem = _setting(i, e, ctl, in_force, nonces, controller_id)
            if problem:
                problems.append(problem)
            continue
        if t != "owner_keys":
            problems.append(f"entry {i}: a {t} entry has no place in the controller log")
            continue
        try:
            new = _ids(list(e.get("keys") or []))
        except (LedgerError, ValueError, TypeError) as exc:
            problems.append(f"entry {i}: malformed owner key: {exc}")
            continue
        prev = ctl.decoded[i - 1] if i > 0 else None
        if prev is None or prev.get("type") != "intent":
            if i != 0:
                problems.append(f"entry {i}: owner key change without an owner.keys intent")
                continue
        else:
            try:
                it = parse_intent(str(prev.get("jws")))
                # A claim (no keys in force yet) is signed by one of the keys it names.
                verify_signature(it, in_force or new)
            except LedgerError as exc:
                problems.append(f"entry {i - 1}: {exc}")
                continue
            if it.op != Op.OWNER_KEYS or sorted(it.args.get("keys", [])) != sorted(e.get("keys") or []):
                problems.append(f"entry {i}: the keys differ from what the preceding intent asked")
                continue
            if it.payload.get("aud") != controller_id:
                problems.append(f"entry {i - 1}: intent addressed to another controller")
                continue
            if it.nonce in nonces:
                problems.append(f"entry {i - 1}: intent nonce reused (replay)")
                continue
            nonces.add(it.nonce)
        in_force = new
        ctl.changes.append((i + 1, sorted(new), sorted(str(k) for k in e.get("keys") or [])))
    seeded = (f"; {len(ctl.host_seeded)} set by the host's --providers (outside an enclave, development)"
              if ctl.host_seeded else "")
    checks = [Check("controller_log_entries", not problems, "; ".join(problems[:5])
                    or f"{len(ctl.changes)} owner key set(s), {len(ctl.providers)} provider setting(s) and "
                       f"{len(ctl.credentials)} credentials change(s), each authorised by an owner key in force"
                       + seeded)]
    if expect is not None and expect.owner is not None:
        allowed = expect.owner.key_ids
        outside = sorted({k for _, ids, _ in ctl.changes for k in ids if k not in allowed})
        checks.append(Check(
            "controller_log_owner_keys", not outside and bool(ctl.changes),
            f"the controller log puts owner key(s) {', '.join(k[:16] + '…' for k in outside)} outside the "
            "expected set in force" if outside else ("the controller log names no owner keys" if not ctl.changes
                                                     else "every owner key the controller log put in force "
                                                          "is expected")))
    return checks, ctl


#: The entry each controller-log intent must be followed by.
_AUTHORISES: dict[str, str] = {Op.OWNER_KEYS.value: "owner_keys", Op.PROVIDERS_SET.value: "providers",
                               Op.CREDENTIALS_SET.value: "credentials"}


def _setting(i: int, e: dict[str, Any], ctl: ControllerLog, in_force: dict[str, Any], nonces: set[str],
             controller_id: str) -> str | None:
    """A `providers` or `credentials` entry: authorised by the intent just before it (a
    `providers` entry may stand alone: a development controller's --providers file)."""
    import hashlib

    import rfc8785

    t = e["type"]
    if t == "providers" and hashlib.sha256(rfc8785.dumps(e.get("providers"))).hexdigest() != e.get("providers_sha256"):
        return f"entry {i}: providers_sha256 is not the digest of the settings"
    prev = ctl.decoded[i - 1] if i > 0 else None
    if prev is None or prev.get("type") != "intent":
        if t == "credentials":
            return f"entry {i}: credentials change without a credentials.set intent"
        ctl.providers.append(i)
        ctl.host_seeded.append(i)
        return None
    try:
        it = parse_intent(str(prev.get("jws")))
        verify_signature(it, in_force)
    except LedgerError as exc:
        return f"entry {i - 1}: {exc}"
    if it.payload.get("aud") != controller_id:
        return f"entry {i - 1}: intent addressed to another controller"
    if it.nonce in nonces:
        return f"entry {i - 1}: intent nonce reused (replay)"
    nonces.add(it.nonce)
    if t == "providers":
        if it.op != Op.PROVIDERS_SET or it.args.get("providers") != e.get("providers") \
                or it.args.get("control_plane_recheck_s") != e.get("control_plane_recheck_s"):
            return f"entry {i}: the providers differ from what the preceding intent asked"
        ctl.providers.append(i)
        return None
    if it.op != Op.CREDENTIALS_SET or any(it.args.get(k) != e.get(k) for k in
                                          ("provider", "ciphertext_sha256", "recipient_key_id")):
        return f"entry {i}: the credentials change differs from what the preceding intent asked"
    ctl.credentials.append(i)
    return None


def cvm_link_checks(decoded: Sequence[dict[str, Any]], ctl: ControllerLog) -> list[Check]:
    """Each CVM intent's signer is an owner key in force at the controller-log size it
    names; genesis names a real controller-log head and the keys of that head."""
    problems: list[str] = []
    size = len(ctl.hashes)
    linked = 0
    for i, e in enumerate(decoded):
        at = e.get("controller_log_size")
        if not isinstance(at, int):
            continue
        linked += 1
        if at > size:
            problems.append(f"entry {i}: names controller-log size {at}, the log has {size}")
            continue
        if e.get("type") == "genesis":
            root = e.get("controller_log_root")
            if root is None or root != _b64(merkle.root(ctl.hashes[:at])):
                problems.append(f"entry {i}: the controller-log head it names is not the log's at size {at}")
            try:
                ids = sorted(_ids(list(e.get("owner_keys") or [])))
            except (LedgerError, ValueError, TypeError):
                ids = []
            if ids != ctl.keys_at(at):
                problems.append(f"entry {i}: genesis owner keys differ from the controller log's at size {at}")
        elif e.get("type") == "intent":
            if e.get("op") == Op.OWNER_KEYS:
                # A copy of a controller-log change: the same intent, just before `at`.
                if at < 2 or ctl.decoded[at - 2].get("jws") != e.get("jws"):
                    problems.append(f"entry {i}: owner key change not found in the controller log at size {at}")
            elif _signer(e.get("jws")) not in ctl.keys_at(at):
                problems.append(f"entry {i}: signed by a key not in force in the controller log at size {at}")
    return [Check("controller_log_link", not problems, "; ".join(problems[:5])
                  or f"{linked} entries name a controller-log size; each signer was an owner key in force there")]


def _signer(jws: Any) -> str | None:
    try:
        return parse_intent(str(jws)).kid
    except LedgerError:
        return None


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()
