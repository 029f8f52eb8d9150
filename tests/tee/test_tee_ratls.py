"""RA-TLS: the controller (simulated TEE) serves a certificate carrying its quote; the
client verifies it in the handshake and pins the key; other keys / report data are refused
before any request is sent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).parent))

from tee_helpers import https_server

from duet.attestation import Expectations, SimulatedSgx
from duet.client import ratls as client_ratls
from duet.client.http import Http
from duet.client.ratls import (
    PinStore,
    RaTlsError,
    RaTlsVerifier,
    async_httpx_client,
    find_ratls_error,
    httpx_client,
    origin_of,
    verify_certificate,
)
from duet.ledger import keys
from duet.tee import ratls
from duet.tee.base import Quote
from duet.tee.simulated import SimulatedTee


@pytest.fixture(scope="module")
def sim_tee(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTee:
    return SimulatedTee(tmp_path_factory.mktemp("tee"))


@dataclass
class QuoteFor:
    """A TEE that quotes fixed report data, whatever it is asked for (an attacker's cert)."""

    inner: SimulatedTee
    report_data: bytes
    kind: str = "simulated"
    simulated: bool = True

    def quote(self, report_data: bytes) -> Quote:
        return self.inner.quote(self.report_data)

    def measurement(self) -> dict[str, str]:
        return self.inner.measurement()


class Recorder:
    """A trivial app that records every request it receives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

        async def any_path(request: Request) -> JSONResponse:
            self.seen.append((request.method, request.url.path, await request.body()))
            return JSONResponse({"ok": True})

        self.app = Starlette(routes=[Route("/{p:path}", any_path, methods=["GET", "POST"])])


def files(tmp: Path, key: Ed25519PrivateKey, tee: Any) -> tuple[Path, Path]:
    return ratls.write_files(tmp, ratls.make_certificate(key, tee))


# ----------------------------------------------------------------- the real controller


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Any]:
    from duet.controller.serve import build_controller
    from duet.cvm.cleanup import delete_all_local

    owner = tmp_path / "owner.pub"
    owner.write_bytes(keys.public_pem(Ed25519PrivateKey.generate().public_key()))
    ctl = build_controller(tmp_path / "data", tee="simulated", owner_key=owner)
    yield ctl
    delete_all_local(tmp_path / "data" / "cvms")


def test_controller_serves_its_quote_and_the_client_verifies_and_pins(tmp_path: Path, controller: Any) -> None:
    from duet.controller.app import create_app

    certfile, keyfile = ratls.prepare(tmp_path / "data" / "tls", controller.key, controller.tee)
    expect = Expectations.model_validate({"mrenclave": controller.tee.measurement()["mrenclave"]})
    with https_server(create_app(controller), certfile, keyfile) as url:
        v = RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True, expect=expect)
        with httpx_client(url, v) as client:
            info = client.get("/v1/controller").json()
        assert v.peer is not None and v.newly_pinned is True
        assert info["controller_id"] == v.peer.controller_id == controller.controller_id
        assert v.peer.simulated and "SIMULATED" in v.peer.describe()
        pins = json.loads((tmp_path / "user" / "ratls-pins.json").read_text())
        assert pins[origin_of(url)]["controller_id"] == controller.controller_id

        # A later session (new verifier, same user state): matches the pin.
        v2 = RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True)
        # The existing Http wrapper works unchanged through a transport.
        with Http(url, transport=httpx.HTTPTransport(verify=v2.ssl_context())) as http:
            assert http.get_json("/v1/controller")["controller_id"] == controller.controller_id
        assert v2.newly_pinned is False


def test_certificate_key_is_the_controller_key(tmp_path: Path, controller: Any) -> None:
    cert = ratls.make_certificate(controller.key, controller.tee)
    parsed = x509.load_der_x509_certificate(cert.cert_der)
    assert ratls.spki_der(parsed.public_key()) == ratls.spki_der(controller.public_key)
    assert cert.report_data == hashlib.sha256(ratls.spki_der(controller.public_key)).digest() + bytes(32)
    quote = parsed.extensions.get_extension_for_oid(ratls.QUOTE_OID)
    assert isinstance(quote.value, x509.UnrecognizedExtension)
    assert not quote.critical and quote.value.value == cert.quote
    peer = verify_certificate(cert.cert_der, trust_simulated=True)
    assert peer.controller_id == controller.controller_id


# ------------------------------------------------------------------------- refusals


def assert_refused_before_any_request(tmp_path: Path, key: Ed25519PrivateKey, tee: Any, code: str) -> None:
    rec = Recorder()
    certfile, keyfile = files(tmp_path / "tls", key, tee)
    with https_server(rec.app, certfile, keyfile) as url:
        v = RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True)
        with httpx_client(url, v) as client, pytest.raises(RaTlsError) as exc:
            client.post("/v1/cvms", json={"intent": "owner secret"})
        assert exc.value.code == code
        assert v.peer is None
    assert rec.seen == []  # not even the request line reached the server
    assert not (tmp_path / "user" / "ratls-pins.json").exists()


def test_quote_with_other_report_data_is_refused(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    assert_refused_before_any_request(
        tmp_path, Ed25519PrivateKey.generate(), QuoteFor(sim_tee, hashlib.sha512(b"other").digest()), "ratls_binding"
    )


def test_certificate_with_a_different_key_is_refused(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    # An attacker who replays the controller's quote in a certificate for its own key.
    genuine = Ed25519PrivateKey.generate()
    bound_to_genuine = ratls.ratls_report_data(ratls.spki_der(genuine.public_key()))
    assert_refused_before_any_request(
        tmp_path, Ed25519PrivateKey.generate(), QuoteFor(sim_tee, bound_to_genuine), "ratls_binding"
    )


def test_a_changed_key_is_refused_after_pinning(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    rec = Recorder()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = files(tmp_path / "a", Ed25519PrivateKey.generate(), sim_tee)
    with https_server(rec.app, *first, port=port) as url:
        v = RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True)
        with httpx_client(url, v) as client:
            client.get("/")
        assert v.newly_pinned is True
    second = files(tmp_path / "b", Ed25519PrivateKey.generate(), sim_tee)  # a validly attested, other key
    with https_server(rec.app, *second, port=port) as url:
        v = RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True)
        with httpx_client(url, v) as client, pytest.raises(RaTlsError) as exc:
            client.post("/", content=b"owner secret")
        assert exc.value.code == "ratls_key_changed"
        assert PinStore(tmp_path / "user").forget(origin_of(url))
        with httpx_client(url, RaTlsVerifier(url, state_dir=tmp_path / "user", trust_simulated=True)) as client:
            assert client.get("/").status_code == 200  # after the user forgot the pin
    assert [m for m, _, _ in rec.seen] == ["GET", "GET"]


def test_simulated_tee_needs_trust_simulated(sim_tee: SimulatedTee) -> None:
    cert = ratls.make_certificate(Ed25519PrivateKey.generate(), sim_tee)
    with pytest.raises(RaTlsError, match="SIMULATED") as exc:
        verify_certificate(cert.cert_der)
    assert exc.value.code == "ratls_simulated"


def test_expectations_are_checked(sim_tee: SimulatedTee) -> None:
    cert = ratls.make_certificate(Ed25519PrivateKey.generate(), sim_tee)
    m = sim_tee.measurement()
    good = Expectations.model_validate({"mrenclave": m["mrenclave"]})
    verify_certificate(cert.cert_der, trust_simulated=True, expect=good)
    other = Expectations.model_validate({"mrenclave": "00" * 32})
    with pytest.raises(RaTlsError, match="mrenclave") as exc:
        verify_certificate(cert.cert_der, trust_simulated=True, expect=other)
    assert exc.value.code == "ratls_expectations"


def test_expired_collateral_is_refused(sim_tee: SimulatedTee) -> None:
    cert = ratls.make_certificate(Ed25519PrivateKey.generate(), sim_tee)
    late = SimulatedSgx.valid_at()[1] + timedelta(days=1)
    with pytest.raises(RaTlsError) as exc:
        verify_certificate(cert.cert_der, trust_simulated=True, now=late)
    assert exc.value.code == "ratls_quote_invalid"


def test_a_certificate_without_a_quote_is_refused() -> None:
    from datetime import UTC, datetime

    from cryptography.x509.oid import NameOID

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(key, None)
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(RaTlsError) as exc:
        verify_certificate(cert.public_bytes(Encoding.DER), trust_simulated=True)
    assert exc.value.code == "ratls_no_quote"


def test_tampered_quote_is_refused(sim_tee: SimulatedTee) -> None:
    key = Ed25519PrivateKey.generate()
    good = ratls.make_certificate(key, sim_tee)
    bad_quote = bytearray(good.quote)
    bad_quote[48 + 64] ^= 1  # a byte of MRENCLAVE
    cert = ratls.make_certificate(key, _Fixed(sim_tee, bytes(bad_quote)))
    with pytest.raises(RaTlsError) as exc:
        verify_certificate(cert.cert_der, trust_simulated=True)
    assert exc.value.code == "ratls_quote_invalid"


@dataclass
class _Fixed:
    inner: SimulatedTee
    raw: bytes
    kind: str = "simulated"
    simulated: bool = True

    def quote(self, report_data: bytes) -> Quote:
        q = self.inner.quote(report_data)
        return Quote(quote=self.raw, collateral=q.collateral, simulated_root_ca=q.simulated_root_ca)

    def measurement(self) -> dict[str, str]:
        return self.inner.measurement()


# ------------------------------------------------------------------- transport details


def test_async_client_verifies_too(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    rec = Recorder()
    with https_server(rec.app, *files(tmp_path, Ed25519PrivateKey.generate(), sim_tee)) as url:
        v = RaTlsVerifier(url, state_dir=None, trust_simulated=True)

        async def go() -> int:
            async with async_httpx_client(url, v) as client:
                return (await client.post("/x", content=b"hello")).status_code

        assert asyncio.run(go()) == 200
        assert v.peer is not None
        bad = RaTlsVerifier(url, state_dir=None, trust_simulated=False)

        async def refused() -> None:
            async with async_httpx_client(url, bad) as client:
                await client.post("/x", content=b"secret")

        with pytest.raises(Exception) as exc:
            asyncio.run(refused())
        err = find_ratls_error(exc.value)
        assert err is not None and err.code == "ratls_simulated"
    assert rec.seen == [("POST", "/x", b"hello")]


def test_server_speaks_tls13_only(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    rec = Recorder()
    with https_server(rec.app, *files(tmp_path, Ed25519PrivateKey.generate(), sim_tee)) as url:
        port = int(url.rsplit(":", 1)[1])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw)


def test_only_https_urls() -> None:
    with pytest.raises(ValueError, match="https"):
        origin_of("http://127.0.0.1:6037")
    assert origin_of("https://Example.org") == "https://example.org:443"
    assert origin_of("https://[::1]:8443/x") == "https://[::1]:8443"


def test_damaged_pin_file_is_not_reset(tmp_path: Path, sim_tee: SimulatedTee) -> None:
    (tmp_path / "ratls-pins.json").write_text("{not json")
    cert = ratls.make_certificate(Ed25519PrivateKey.generate(), sim_tee)
    peer = verify_certificate(cert.cert_der, trust_simulated=True)
    with pytest.raises(RaTlsError) as exc:
        PinStore(tmp_path).check_or_pin("https://x:1", peer)
    assert exc.value.code == "state_corrupt"


def test_both_sides_agree_on_the_format() -> None:
    assert client_ratls.QUOTE_OID == ratls.QUOTE_OID
    assert client_ratls.ENDORSEMENTS_OID == ratls.ENDORSEMENTS_OID
    assert ratls.QUOTE_OID.dotted_string == "1.2.840.113741.1337.6"  # Gramine's RA-TLS quote OID
