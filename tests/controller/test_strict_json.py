"""JSON at the edges: every JSON input is strict, and a hostile document is a 4xx with a
code naming the rule it broke, never a 500."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet.ledger import entries, keys, strictjson
from duet.ledger.intent import parse_intent, sign_intent
from inproc import CVM_ID, inproc


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jws_with_payload(payload: bytes) -> str:
    header = rfc8785.dumps({"alg": "EdDSA", "kid": "0" * 64})
    return f"{_b64url(header)}.{_b64url(payload)}.{_b64url(b'x' * 64)}"


DEEP = b"[" * 5000 + b"]" * 5000
HOSTILE = {
    "json_non_finite": [b'{"v": NaN}', b'{"v": Infinity}', b'{"v": -Infinity}', b'{"v": 1e999}'],
    "json_unsafe_integer": [b'{"v": 9007199254740993}', b'{"v": -9007199254740992}', b'{"v": ' + b"9" * 5000 + b"}"],
    "json_lone_surrogate": [b'{"v": "\\ud800"}', b'{"\\udfff": 1}', '{"v": "\ud800"}'.encode("utf-8", "surrogatepass")],
    "json_too_deep": [DEEP, b'{"a":' * 100 + b"1" + b"}" * 100],
    "json_duplicate_key": [b'{"v": 1, "v": 2}'],
    "invalid_json": [b'{"v": 1', b"\xff\xfe", b"[1,]"],
}


@pytest.mark.parametrize(("code", "doc"), [(c, d) for c, docs in HOSTILE.items() for d in docs])
def test_strict_reader_refuses_each_rule_with_its_code(code: str, doc: bytes) -> None:
    with pytest.raises(strictjson.JsonInputError) as info:
        strictjson.loads(doc)
    assert info.value.code == code


def test_strict_reader_keeps_what_is_valid() -> None:
    doc = '{"a": [1, -9007199254740991, 2.5, "\\ud83d\\ude00", null, true], "b": {"c": "é"}}'
    assert strictjson.loads(doc.encode()) == json.loads(doc)
    assert strictjson.loads(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(strictjson.JsonTooLarge):
        strictjson.loads(b" " * 11 + b"1", max_bytes=10)


def test_hostile_shapes_are_refused_in_linear_time() -> None:
    # An unterminated string of escaped quotes is quadratic for a naive string-stripping
    # pre-scan; the reader has none.
    started = time.process_time()
    with pytest.raises(strictjson.JsonInputError):
        strictjson.loads(b'"' + b'\\"' * 400_000)
    assert time.process_time() - started < 30  # generous: quadratic would be hours


def test_canonical_leaves_still_read_big_doubles() -> None:
    # RFC 8785 writes 2.0**53 without a fraction; a leaf carrying it stays readable.
    leaf = entries.encode({"v": 1, "time": entries.now_rfc3339(), "type": "error", "code": "x",
                           "message": "m", "n": 2.0**53})
    assert entries.decode(leaf)["n"] == 2.0**53


@pytest.mark.parametrize(("code", "doc"), [(c, d) for c, docs in HOSTILE.items() for d in docs])
def test_hostile_jws_payload_is_a_4xx_with_its_code(tmp_path: Path, code: str, doc: bytes) -> None:
    with inproc(tmp_path) as (client, _):
        r = client.post("/v1/intents", json={"jws": _jws_with_payload(doc)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize(("code", "doc"), [(c, d) for c, docs in HOSTILE.items() for d in docs])
def test_hostile_request_body_is_a_4xx_with_its_code(tmp_path: Path, code: str, doc: bytes) -> None:
    with inproc(tmp_path) as (client, _):
        r = client.post("/v1/intents", content=doc, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code


def test_hostile_guest_reply_is_strict() -> None:
    # The controller reads one JSON document from a guest (the report reply); it goes
    # through the same reader.
    with pytest.raises(strictjson.JsonTooDeep):
        strictjson.loads_object(DEEP, what="the guest's report reply")


def test_a_valid_intent_still_parses() -> None:
    owner = keys.Ed25519PrivateKey.generate()
    jws = sign_intent(owner, op="cvm.run", aud="a" * 64, cvm="x", args={"command": "echo é", "timeout_s": 1.5},
                      iat=int(time.time()))
    assert parse_intent(jws).args["command"] == "echo é"


# --- generated JSON at every endpoint -------------------------------------------------

_scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _render(value: object, nest: int, ascii_only: bool, top: str) -> bytes:
    """A generated value, maybe nested deep, maybe inside an object (a JWS payload must be
    one to reach the canonical check)."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    text = "[" * nest + text + "]" * nest
    if top == "object":
        text = '{"v": 1, "op": ' + text + "}"
    return text.encode("utf-8", "surrogatepass")


_documents = st.builds(_render, _json_values, st.sampled_from([0, 0, 1, 70, 3000]), st.booleans(),
                       st.sampled_from(["object", "object", "value"]))


def _routes(client) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = []
    for route in client.app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/v1/"):
            continue
        for method in sorted(getattr(route, "methods", ()) or ()):
            out.append((method, path.replace("{cvm_id}", CVM_ID)))
    return out


_EXAMPLES = 25


def _probe(client, method: str, path: str):  # type: ignore[no-untyped-def]
    @settings(max_examples=_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=_documents, where=st.sampled_from(["body", "jws", "query", "header"]))
    def probe(doc: bytes, where: str) -> None:
        kw: dict[str, object] = {}
        if where == "body":
            kw["content"] = doc
        elif where == "jws":
            kw["content"] = json.dumps({"jws": _jws_with_payload(doc)})
        elif where == "query":
            text = doc.decode("utf-8", "replace")[:2000]
            kw["params"] = {k: text for k in ("nonce", "start", "end", "index", "tree_size", "old", "new")}
        else:
            kw["headers"] = {"duet-checkpoint": base64.b64encode(doc[:4000]).decode()}
        r = client.request(method, path, **kw)
        assert r.status_code < 500, (method, path, where, doc[:200], r.text[:500])

    return probe


def test_generated_json_at_every_endpoint_is_2xx_or_4xx(tmp_path: Path) -> None:
    leaf = entries.encode({"v": 1, "time": entries.now_rfc3339(), "type": "error", "code": "x", "message": "m"})
    with inproc(tmp_path, leaves=[leaf, leaf]) as (client, _):
        routes = _routes(client)
        assert len(routes) >= 9
        for method, path in routes:
            _probe(client, method, path)()


def test_hostile_vcek_document_from_the_guest_is_a_refusal() -> None:
    from duet.cvm.guest.collect import Collected, CollectError, azure_envelope

    blobs = {"tpm_pcrs": bytes(24 * 32), "tpm_signature": b"s", "tpm_message": b"m", "hcl_report": b"h",
             "vcek_json": DEEP}
    got = Collected(provider="azure", report_data=bytes(64), host_key="ssh-ed25519 AAAA", blobs=blobs)
    with pytest.raises(CollectError, match="no usable VCEK"):
        azure_envelope(got)
