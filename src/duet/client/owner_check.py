"""Who owns the CVM, as the user sees it: the owner keys in force through the log, and
the user's pin of them (`owner.keys` in the expectations).

Genesis names the first owner keys and each `owner_keys` entry replaces them. Without a
pin, a controller (or a modified build of it) could mint an owner key of its own, sign
intents with it and log whatever it likes as "owner commands". With a pin, genesis and
every later change must name only keys the user listed, whether or not the change is
otherwise well authorised (the audit judges that).

`verified_intents` gives `duet log` the `op` and `kid` of each intent from its signed
JWS, checked against the keys in force at that point, never the entry's own copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from duet.client.audit import Check

if TYPE_CHECKING:  # `duet log` uses verified_intents without the attestation package
    from duet.client.expectations import UserExpectations
from duet.ledger import keys
from duet.ledger.errors import LedgerError
from duet.ledger.intent import Intent, parse_intent, verify_signature


@dataclass
class OwnerResult:
    checks: list[Check] = field(default_factory=list)
    in_force: list[str] = field(default_factory=list)


def _key_ids(b64s: Any) -> tuple[list[str], list[str]]:
    """(key ids, problems) of a list of base64 public keys as logged."""
    ids: list[str] = []
    bad: list[str] = []
    for b in b64s if isinstance(b64s, list) else []:
        try:
            ids.append(keys.key_id(keys.public_from_b64(str(b))))
        except (LedgerError, ValueError, TypeError):
            bad.append(str(b)[:24])
    if not isinstance(b64s, list):
        bad.append("not a list")
    return ids, bad


def owner_key_changes(decoded: Sequence[dict[str, Any]]) -> list[tuple[int, list[str], list[str]]]:
    """(entry index, key ids, malformed keys) for genesis and each owner-key change."""
    out = []
    for i, e in enumerate(decoded):
        if (i == 0 and e.get("type") == "genesis") or (i > 0 and e.get("type") == "owner_keys"):
            field_name = "owner_keys" if i == 0 else "keys"
            ids, bad = _key_ids(e.get(field_name))
            out.append((i, ids, bad))
    return out


def owner_checks(decoded: Sequence[dict[str, Any]], expect: UserExpectations | None) -> OwnerResult:
    changes = owner_key_changes(decoded)
    result = OwnerResult(in_force=sorted(changes[-1][1]) if changes else [])
    if expect is None or expect.owner is None:
        return result
    allowed = expect.owner.key_ids
    problems = []
    for i, ids, bad in changes:
        outside = [k for k in ids if k not in allowed]
        what = "genesis" if i == 0 else f"entry {i} (owner key change)"
        if outside:
            problems.append(f"{what} names owner key(s) {', '.join(k[:16] + '…' for k in outside)} "
                            "outside the expected set")
        if bad:
            problems.append(f"{what} names malformed owner key(s)")
        if not ids:
            problems.append(f"{what} names no owner key")
    if not changes:
        problems.append("the log names no owner keys")
    result.checks.append(Check(
        "owner_keys", not problems, "; ".join(problems[:5]) or
        f"every owner key the log ever put in force is expected ({len(changes)} key set(s); in force: "
        f"{', '.join(k[:16] + '…' for k in result.in_force)})"))
    return result


@dataclass(frozen=True)
class VerifiedIntent:
    op: str
    kid: str
    #: For an `owner.keys` intent: the keys it asks for (sorted).
    keys: tuple[str, ...] = ()


def verified_intents(decoded: Sequence[dict[str, Any]]) -> dict[int, VerifiedIntent | None]:
    """For each intent or rejected entry carrying a JWS: its op and kid when the JWS is
    signed by an owner key in force at that point of the log, else None."""
    in_force: dict[str, Any] = {}
    out: dict[int, VerifiedIntent | None] = {}
    for i, e in enumerate(decoded):
        t = e.get("type")
        if i == 0 and t == "genesis":
            in_force = _keyset(e.get("owner_keys"))
        elif t == "owner_keys":
            prev = out.get(i - 1)
            logged = e.get("keys")
            if prev is not None and prev.op == "owner.keys" and isinstance(logged, list) \
                    and prev.keys == tuple(sorted(str(k) for k in logged)):
                in_force = _keyset(logged)
        elif t in ("intent", "rejected") and e.get("jws") is not None:
            out[i] = _verified(e.get("jws"), in_force)
    return out


def _verified(jws: Any, in_force: dict[str, Any]) -> VerifiedIntent | None:
    try:
        it: Intent = parse_intent(str(jws))
        verify_signature(it, in_force)
        asked = it.args.get("keys") if it.op == "owner.keys" else None
        return VerifiedIntent(op=it.op, kid=it.kid,
                              keys=tuple(sorted(str(k) for k in asked)) if isinstance(asked, list) else ())
    except (LedgerError, KeyError, ValueError, TypeError):
        return None


def _keyset(b64s: Any) -> dict[str, Any]:
    out = {}
    for b in b64s if isinstance(b64s, list) else []:
        try:
            pub = keys.public_from_b64(str(b))
        except (LedgerError, ValueError, TypeError):
            continue
        out[keys.key_id(pub)] = pub
    return out
