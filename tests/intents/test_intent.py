"""Owner intents: the JWS format and every check a controller and a verifier make."""

from __future__ import annotations

import base64
import json

import pytest
import rfc8785

from duet.ledger import keys
from duet.ledger.intent import (
    BadSignature,
    IntentError,
    StaleIntent,
    UnknownKey,
    WrongAudience,
    check_claims,
    parse_intent,
    sign_intent,
    verify_signature,
)

AUD = "ab" * 32


@pytest.fixture
def owner() -> keys.Ed25519PrivateKey:
    return keys.Ed25519PrivateKey.generate()


def _keyset(k: keys.Ed25519PrivateKey) -> dict[str, keys.Ed25519PublicKey]:
    return {keys.key_id(k.public_key()): k.public_key()}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip(owner: keys.Ed25519PrivateKey) -> None:
    jws = sign_intent(owner, op="cvm.run", aud=AUD, cvm="c1", args={"command": "ls -l"}, iat=1000)
    it = parse_intent(jws)
    verify_signature(it, _keyset(owner))
    check_claims(it, aud=AUD, now=1000)
    assert (it.op, it.cvm, it.args, it.kid) == ("cvm.run", "c1", {"command": "ls -l"}, keys.key_id(owner.public_key()))


def test_signature_by_another_key_is_refused(owner: keys.Ed25519PrivateKey) -> None:
    other = keys.Ed25519PrivateKey.generate()
    jws = sign_intent(other, op="cvm.delete", aud=AUD, cvm="c1", args={}, iat=1000)
    with pytest.raises(UnknownKey):
        verify_signature(parse_intent(jws), _keyset(owner))


def test_tampered_payload_fails_signature(owner: keys.Ed25519PrivateKey) -> None:
    jws = sign_intent(owner, op="cvm.run", aud=AUD, cvm="c1", args={"command": "ls"}, iat=1000)
    h, p, s = jws.split(".")
    payload = json.loads(base64.urlsafe_b64decode(p + "=="))
    payload["args"]["command"] = "rm -rf /"
    forged = f"{h}.{_b64(rfc8785.dumps(payload))}.{s}"
    with pytest.raises(BadSignature):
        verify_signature(parse_intent(forged), _keyset(owner))


def test_kid_swapped_to_victim_key_fails(owner: keys.Ed25519PrivateKey) -> None:
    attacker = keys.Ed25519PrivateKey.generate()
    jws = sign_intent(attacker, op="cvm.delete", aud=AUD, cvm="c1", args={}, iat=1000)
    _, p, s = jws.split(".")
    header = {"alg": "EdDSA", "kid": keys.key_id(owner.public_key()), "typ": "duet-intent+jws"}
    with pytest.raises(BadSignature):
        verify_signature(parse_intent(f"{_b64(rfc8785.dumps(header))}.{p}.{s}"), _keyset(owner))


@pytest.mark.parametrize("now,ok", [(1000, True), (1120, True), (880, True), (1121, False), (879, False)])
def test_iat_window(owner: keys.Ed25519PrivateKey, now: int, ok: bool) -> None:
    it = parse_intent(sign_intent(owner, op="cvm.delete", aud=AUD, cvm="c", args={}, iat=1000))
    if ok:
        check_claims(it, aud=AUD, now=now)
    else:
        with pytest.raises(StaleIntent):
            check_claims(it, aud=AUD, now=now)


def test_wrong_audience(owner: keys.Ed25519PrivateKey) -> None:
    it = parse_intent(sign_intent(owner, op="cvm.delete", aud="cd" * 32, cvm="c", args={}, iat=1000))
    with pytest.raises(WrongAudience):
        check_claims(it, aud=AUD, now=1000)


def _forge(owner: keys.Ed25519PrivateKey, payload: dict[str, object], header: dict[str, object] | None = None,
           canonical: bool = True) -> str:
    header = header or {"alg": "EdDSA", "kid": keys.key_id(owner.public_key())}
    raw = rfc8785.dumps(payload) if canonical else json.dumps(payload, indent=1).encode()
    si = f"{_b64(rfc8785.dumps(header))}.{_b64(raw)}"
    return f"{si}.{_b64(owner.sign(si.encode()))}"


BASE = {"v": 1, "op": "cvm.run", "aud": AUD, "cvm": "c1", "args": {"command": "ls"},
        "nonce": "n" * 20, "iat": 1000}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(op="cvm.explode"),
        lambda p: p.update(v=2),
        lambda p: p.pop("nonce"),
        lambda p: p.update(nonce="short"),
        lambda p: p.update(iat="1000"),
        lambda p: p.update(iat=True),
        lambda p: p.pop("cvm"),
        lambda p: p.update(extra=1),
        lambda p: p.update(args={"command": ""}),
        lambda p: p.update(args={"command": "ls", "sudo": True}),
        lambda p: p.update(args={"command": "a\x00b"}),
        lambda p: p.update(args={"command": "ls", "timeout_s": -1}),
        lambda p: p.update(op="cvm.mode", args={"mode": "in-chaos"}),
        lambda p: p.update(op="owner.keys", args={"keys": []}),
        lambda p: p.update(op="cvm.create", args={"provider": "local"}),  # names a cvm
    ],
)
def test_malformed_payloads_are_refused(owner: keys.Ed25519PrivateKey, mutate) -> None:  # type: ignore[no-untyped-def]
    payload = json.loads(json.dumps(BASE))
    mutate(payload)
    with pytest.raises(IntentError) as info:
        parse_intent(_forge(owner, payload))
    assert info.value.code == "malformed_intent"


def test_non_canonical_payload_is_refused(owner: keys.Ed25519PrivateKey) -> None:
    with pytest.raises(IntentError, match="canonical"):
        parse_intent(_forge(owner, dict(BASE), canonical=False))


@pytest.mark.parametrize("header", [{"alg": "none", "kid": "0" * 64}, {"alg": "HS256", "kid": "0" * 64},
                                    {"alg": "EdDSA"}, {"alg": "EdDSA", "kid": "0" * 64, "jku": "http://x"}])
def test_bad_headers_are_refused(owner: keys.Ed25519PrivateKey, header: dict[str, object]) -> None:
    with pytest.raises(IntentError):
        parse_intent(_forge(owner, dict(BASE), header=header))


@pytest.mark.parametrize("jws", ["", "abc", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.", "x" * 300_000])
def test_garbage_is_a_typed_error(jws: str) -> None:
    with pytest.raises(IntentError):
        parse_intent(jws)
