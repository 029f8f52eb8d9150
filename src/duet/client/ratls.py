"""RA-TLS, client side: attest the controller in the TLS handshake, then pin its key.

The certificate format is described in :mod:`duet.tee.ratls` (Gramine's RA-TLS "SGX quote"
extension + duet's endorsements extension; the TLS key is the controller's Ed25519 identity
key). This module must not import the controller side, so the OIDs are repeated here (a
test checks both sides agree).

**When the check happens.** :meth:`RaTlsVerifier.ssl_context` returns an ``SSLContext``
(TLS 1.3 only, no CA-chain or hostname check) whose ``sslsocket_class`` /
``sslobject_class`` are subclasses that, right after OpenSSL completes the handshake and
*inside* ``do_handshake``, take the peer certificate and run :meth:`RaTlsVerifier.verify_der`:

1. the certificate key is Ed25519 (the controller id is SHA-256 of it);
2. the quote extension is there and verifies with dcap-qvl (``verify_sgx_quote``) against
   Intel's SGX root — or, only with ``trust_simulated``, against the development root the
   endorsements carry; the collateral comes from the endorsements or from an injected
   ``collateral_provider`` (e.g. a PCCS);
3. its report data is SHA-256(the certificate's SubjectPublicKeyInfo) ‖ 32 zero bytes —
   TLS 1.3's CertificateVerify has just proven the server holds that very key;
4. optional expectations (MRENCLAVE, MRSIGNER, ISV SVN, TCB statuses);
5. the key is pinned per controller origin in ``<state dir>/ratls-pins.json`` (read and
   rewritten under the file's lock, atomically: :mod:`duet.client.statefile`); a different
   key later is refused (``ratls_key_changed``) until the user forgets the pin.

Any failure raises :class:`RaTlsError` out of ``wrap_socket`` / ``do_handshake``, so the
HTTP client never gets a connection to write a request on: no owner intent or command is
sent to an unattested peer. httpx (sync over ``ssl.SSLSocket``, async over
``ssl.SSLObject``) propagates the error unchanged; :func:`find_ratls_error` also digs it out
of a wrapping exception. Verified certificates are cached per verifier (by SHA-256 of the
DER), so later connections of the same client cost one hash, and for a short TTL across
processes in the state dir (:mod:`duet.client.ratls_cache`: untrusted on read, the binding
re-checked on the certificate), so that each `duet` command does not verify the quote
again. The attestation package is imported only when a quote is verified in full.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from duet.client.errors import ClientError
from duet.client.ratls_cache import Binding, CachedReport, VerifiedCache, ttl_from_env
from duet.client.statefile import locked, read_json, write_json

if TYPE_CHECKING:
    import httpx

    from duet.attestation import Expectations, SgxReport

QUOTE_OID = x509.ObjectIdentifier("1.2.840.113741.1337.6")
ENDORSEMENTS_OID = x509.ObjectIdentifier("2.25.10214357168241375939949257289218269483")
PIN_FILE = "ratls-pins.json"
MAX_ENDORSEMENTS = 256 * 1024

CollateralProvider = Callable[[bytes], Mapping[str, Any]]


class RaTlsError(Exception):
    """The controller's certificate does not attest it; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PeerIdentity:
    public_key: bytes  # raw Ed25519, 32 bytes
    controller_id: str  # lowercase hex SHA-256 of public_key
    report: SgxReport | CachedReport
    tee: str
    simulated: bool
    cert_sha256: str
    #: The verdict came from the state dir's cache (verified in full by an earlier process).
    cached: bool = False

    def describe(self) -> str:
        label = "SIMULATED " if self.simulated else ""
        how = " (verdict cached)" if self.cached else ""
        return (
            f"{label}SGX RA-TLS: controller {self.controller_id[:16]}…, MRENCLAVE {self.report.mrenclave[:16]}…, "
            f"TCB {self.report.tcb_status}{how}"
        )


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    if ext.critical:
        raise RaTlsError("ratls_bad_certificate", f"extension {oid.dotted_string} must not be critical")
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise RaTlsError("ratls_bad_certificate", f"extension {oid.dotted_string} is malformed")
    return bytes(value.value)


def certificate_binding(cert_der: bytes) -> tuple[x509.Certificate, Binding]:
    """Step 1 and the quote extension: the certificate's Ed25519 key and its quote."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        _ = cert.extensions  # parsed lazily: surface malformed extensions here
        pub = cert.public_key()
    except (ValueError, x509.InvalidVersion) as exc:
        raise RaTlsError("ratls_bad_certificate", f"the controller's certificate does not parse: {exc}") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise RaTlsError("ratls_bad_certificate", "the controller's certificate key is not Ed25519")
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    quote = _ext(cert, QUOTE_OID)
    if quote is None:
        raise RaTlsError(
            "ratls_no_quote", "the controller's certificate carries no SGX quote (not an RA-TLS certificate)"
        )
    return cert, Binding(public_key=raw, spki=spki, quote=quote)


def verify_certificate(
    cert_der: bytes,
    *,
    trust_simulated: bool = False,
    now: datetime | None = None,
    expect: Expectations | None = None,
    collateral_provider: CollateralProvider | None = None,
) -> PeerIdentity:
    """Verify an RA-TLS certificate (steps 1-4 of the module docstring); no pinning."""
    from duet.attestation import validate, verify_sgx_quote
    from duet.attestation.errors import AttestationError

    cert, binding = certificate_binding(cert_der)
    raw, spki, quote = binding.public_key, binding.spki, binding.quote
    endorsements: dict[str, Any] = {}
    blob = _ext(cert, ENDORSEMENTS_OID)
    if blob is not None:
        if len(blob) > MAX_ENDORSEMENTS:
            raise RaTlsError("ratls_bad_certificate", "the certificate's endorsements are too large")
        try:
            parsed = json.loads(blob)
        except ValueError:
            raise RaTlsError("ratls_bad_certificate", "the certificate's endorsements are not JSON") from None
        if not isinstance(parsed, dict) or parsed.get("v") != 1:
            raise RaTlsError("ratls_bad_certificate", "the certificate's endorsements have an unknown version")
        endorsements = parsed
    root: bytes | None = None
    if endorsements.get("simulated_root_ca") is not None:
        if not trust_simulated:
            raise RaTlsError(
                "ratls_simulated",
                "the controller runs on a SIMULATED TEE (no SGX); pass --trust-simulated to accept its "
                "development root (unsafe outside development)",
            )
        try:
            root = base64.b64decode(str(endorsements["simulated_root_ca"]), validate=True)
        except ValueError:
            raise RaTlsError("ratls_bad_certificate", "the simulated root in the endorsements is not base64") from None
    if collateral_provider is not None:
        try:
            collateral: Any = collateral_provider(quote)
        except Exception as exc:
            raise RaTlsError("ratls_quote_invalid", f"cannot get DCAP collateral for the quote: {exc}") from None
    else:
        collateral = endorsements.get("collateral")
        if collateral is None:
            raise RaTlsError("ratls_quote_invalid", "no DCAP collateral: neither in the certificate nor configured")
    try:
        report = verify_sgx_quote(quote, collateral, now=now or datetime.now(UTC), root_ca_der=root)
    except AttestationError as exc:
        raise RaTlsError("ratls_quote_invalid", f"the controller's SGX quote does not verify: {exc}") from None
    expected = hashlib.sha256(spki).digest() + bytes(32)
    if not hmac.compare_digest(report.report_data, expected):
        raise RaTlsError(
            "ratls_binding",
            "the quote verifies but its report data does not bind the certificate's key: the quote was "
            "made for another key",
        )
    if expect is not None:
        failures = validate(report, expect)
        if failures:
            raise RaTlsError(
                "ratls_expectations",
                "the controller's quote verifies, but "
                + "; ".join(f"{f.field} is {f.found}, expected {f.expected}" for f in failures),
            )
    return PeerIdentity(
        public_key=raw,
        controller_id=hashlib.sha256(raw).hexdigest(),
        report=report,
        tee=str(endorsements.get("tee", "gramine")),
        simulated=report.simulated,
        cert_sha256=hashlib.sha256(cert_der).hexdigest(),
    )


def origin_of(url: str) -> str:
    """``https://host:port`` (lowercase host, explicit port): the unit a key is pinned to."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"RA-TLS needs an https:// controller URL, got {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{parts.port or 443}"


class PinStore:
    """The controller key a user saw first, per origin (``<state dir>/ratls-pins.json``)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / PIN_FILE
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return read_json(self.path, "the pinned controller keys")
        except ClientError as exc:
            # A damaged pin file is not silently reset: that would forget the pins.
            raise RaTlsError(exc.code, exc.message) from None

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        write_json(self.path, data)

    def get(self, origin: str) -> dict[str, Any] | None:
        with self._lock, self._file_lock():
            return self._load().get(origin)

    def _file_lock(self) -> Any:
        """Other processes pin in the same file: read-check-write under its lock."""
        return locked(self.path, wait=60.0, error=RaTlsError)

    def check_or_pin(self, origin: str, peer: PeerIdentity) -> bool:
        """Pin on first sight (returns True); later, refuse a different key."""
        with self._lock, self._file_lock():
            data = self._load()
            pinned = data.get(origin)
            key_b64 = base64.b64encode(peer.public_key).decode()
            if pinned is not None:
                if pinned.get("public_key") != key_b64:
                    raise RaTlsError(
                        "ratls_key_changed",
                        f"the controller at {origin} now has key {peer.controller_id[:16]}…, but this user "
                        f"pinned {str(pinned.get('controller_id', '?'))[:16]}… (MRENCLAVE "
                        f"{str(pinned.get('mrenclave', '?'))[:16]}…). A new enclave build or a lost sealed "
                        f"state changes the key; if that is expected, forget the pin ({self.path}).",
                    )
                return False
            data[origin] = {
                "public_key": key_b64,
                "controller_id": peer.controller_id,
                "mrenclave": peer.report.mrenclave,
                "mrsigner": peer.report.mrsigner,
                "simulated": peer.simulated,
                "pinned_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            self._save(data)
            return True

    def forget(self, origin: str) -> bool:
        with self._lock, self._file_lock():
            data = self._load()
            if data.pop(origin, None) is None:
                return False
            self._save(data)
            return True


class RaTlsVerifier:
    """Verifies and pins one controller's RA-TLS certificate (see the module docstring).

    ``state_dir=None`` pins in memory only (for this verifier's lifetime)."""

    def __init__(
        self,
        url: str,
        *,
        state_dir: Path | None,
        trust_simulated: bool = False,
        expect: Expectations | None = None,
        collateral_provider: CollateralProvider | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_ttl: float | None = None,
    ) -> None:
        """`cache_ttl`: seconds a verdict is reused across processes (None: from
        `DUET_RATLS_CACHE_TTL`, default 300; 0: off). Needs a `state_dir`."""
        self.origin = origin_of(url)
        self.pins = PinStore(state_dir) if state_dir is not None else None
        ttl = ttl_from_env() if cache_ttl is None else cache_ttl
        self.cache = VerifiedCache(state_dir, self.origin, ttl=ttl, trust_simulated=trust_simulated, expect=expect) \
            if state_dir is not None and ttl > 0 else None
        self.trust_simulated = trust_simulated
        self.expect = expect
        self.collateral_provider = collateral_provider
        self.clock = clock
        self.peer: PeerIdentity | None = None
        #: True when this verifier pinned the key (first contact), False when it matched a pin.
        self.newly_pinned: bool | None = None
        self._verified: dict[str, PeerIdentity] = {}
        self._lock = threading.Lock()

    def verify_der(self, cert_der: bytes | None) -> PeerIdentity:
        if not cert_der:
            raise RaTlsError("ratls_bad_certificate", "the controller presented no certificate")
        digest = hashlib.sha256(cert_der).hexdigest()
        with self._lock:
            cached = self._verified.get(digest)
        if cached is not None:
            return cached
        peer = self._from_cache(cert_der, digest)
        if peer is None:
            peer = verify_certificate(
                cert_der,
                trust_simulated=self.trust_simulated,
                now=self.clock(),
                expect=self.expect,
                collateral_provider=self.collateral_provider,
            )
            if self.cache is not None:
                self.cache.store(digest, certificate_binding(cert_der)[1], peer.report, peer.tee,
                                 now=self.clock().timestamp())
        with self._lock:
            if self.peer is not None and self.peer.public_key != peer.public_key:
                raise RaTlsError(
                    "ratls_key_changed", f"the controller at {self.origin} changed its key during this session"
                )
            newly = self.pins.check_or_pin(self.origin, peer) if self.pins is not None else None
            if self.newly_pinned is None:
                self.newly_pinned = newly
            self.peer = peer
            self._verified[digest] = peer
        return peer

    def _from_cache(self, cert_der: bytes, digest: str) -> PeerIdentity | None:
        if self.cache is None:
            return None
        binding = certificate_binding(cert_der)[1]
        report = self.cache.lookup(digest, binding, now=self.clock().timestamp())
        if report is None:
            return None
        return PeerIdentity(public_key=binding.public_key, controller_id=hashlib.sha256(binding.public_key).hexdigest(),
                            report=report, tee=report.tee, simulated=report.simulated, cert_sha256=digest,
                            cached=True)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = _RaTlsContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # The CA chain and the host name mean nothing here: the quote is the trust anchor,
        # and it is checked (in do_handshake) before the connection is handed out.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.ratls_verifier = self
        ctx.sslsocket_class = _VerifyingSSLSocket
        ctx.sslobject_class = _VerifyingSSLObject
        return ctx


class _RaTlsContext(ssl.SSLContext):
    ratls_verifier: RaTlsVerifier


def _check_peer(ctx: ssl.SSLContext, der: bytes | None) -> None:
    verifier = getattr(ctx, "ratls_verifier", None)
    if not isinstance(verifier, RaTlsVerifier):
        raise RaTlsError("ratls_bad_certificate", "RA-TLS socket without a verifier")
    verifier.verify_der(der)


class _VerifyingSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _check_peer(self.context, self.getpeercert(binary_form=True))
        except BaseException:
            self.close()
            raise


class _VerifyingSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is complete
        _check_peer(self.context, self.getpeercert(binary_form=True))


def httpx_client(url: str, verifier: RaTlsVerifier, **kw: Any) -> httpx.Client:
    """An httpx client for ``url`` whose every connection is attested by ``verifier``."""
    import httpx

    if origin_of(url) != verifier.origin:
        raise ValueError(f"the verifier is for {verifier.origin}, not {url}")
    return httpx.Client(base_url=url, verify=verifier.ssl_context(), **kw)


def async_httpx_client(url: str, verifier: RaTlsVerifier, **kw: Any) -> httpx.AsyncClient:
    import httpx

    if origin_of(url) != verifier.origin:
        raise ValueError(f"the verifier is for {verifier.origin}, not {url}")
    return httpx.AsyncClient(base_url=url, verify=verifier.ssl_context(), **kw)


def find_ratls_error(exc: BaseException | None) -> RaTlsError | None:
    """The :class:`RaTlsError` behind ``exc`` (itself, or along its cause/context chain)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RaTlsError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
