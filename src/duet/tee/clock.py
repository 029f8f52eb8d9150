"""Time the host can only delay.

Inside an enclave the clock is the host's: it can set it back (to make expired or revoked
collateral look current again) or forward. The controller cannot know the true time, but
it can know a *lower bound*: every collateral it verified carries a signed issue date
(Intel's TCB info and QE identity `issueDate`, a CRL's `lastUpdate`, a certificate's
`notBefore`), and the true time is at least the newest of them. `TrustedClock.now()` is
never earlier than that bound, so setting the host clock back can no longer bring
collateral that was already superseded back into its validity window.

What the host can still do: hold the bound back (by withholding fresher collateral), and
move the clock forward (which can only make things look expired: a denial, not a
forgery). The bound is persisted through `store` (the sealed state file); rolling that
file back lowers the bound only to an older authenticated time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from cryptography import x509

log = logging.getLogger("duet.clock")

_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TrustedClock:
    """`now()` = max(host clock, newest authenticated time observed)."""

    def __init__(
        self,
        host: Callable[[], datetime] = _utc_now,
        *,
        floor: datetime | None = None,
        store: Callable[[datetime], None] | None = None,
    ) -> None:
        self._host = host
        self._floor = floor
        self._store = store
        self._lock = threading.Lock()

    @property
    def floor(self) -> datetime | None:
        return self._floor

    def attach(self, floor: datetime | None, store: Callable[[datetime], None]) -> None:
        """Load a persisted bound and persist later ones (the state file opens after the TEE)."""
        with self._lock:
            self._store = store
            if floor is not None and (self._floor is None or floor > self._floor):
                self._floor = floor
            current = self._floor
        if current is not None:
            store(current)

    def host_now(self) -> datetime:
        return self._host()

    def now(self) -> datetime:
        host = self._host()
        floor = self._floor
        if floor is not None and host < floor:
            return floor
        return host

    def observe(self, when: datetime, source: str) -> None:
        """Raise the bound to `when`; call only with a time taken from data whose signature
        has been verified. A time ahead of the host clock is accepted too: the host clock
        may be the one that is wrong."""
        if when.tzinfo is None:
            raise ValueError("authenticated times must be timezone-aware")
        with self._lock:
            if self._floor is not None and when <= self._floor:
                return
            self._floor = when
            store = self._store
        host = self._host()
        if when > host:
            log.warning("authenticated time %s (%s) is ahead of the host clock %s", when.isoformat(), source,
                        host.isoformat())
        if store is not None:
            store(when)

    def observe_dcap_collateral(self, collateral: Mapping[str, object]) -> None:
        """Issue dates of verified DCAP collateral (QuoteCollateralV3 JSON)."""
        for key in ("tcb_info", "qe_identity"):
            when = _issue_date(collateral.get(key))
            if when is not None:
                self.observe(when, f"DCAP {key} issueDate")
        for key in ("pck_crl", "root_ca_crl"):
            when = _crl_last_update(collateral.get(key))
            if when is not None:
                self.observe(when, f"DCAP {key} lastUpdate")

    def observe_certificate(self, der_or_pem: bytes, source: str) -> None:
        """The `notBefore` of a certificate whose chain has been verified."""
        try:
            cert = (x509.load_pem_x509_certificate(der_or_pem) if der_or_pem.lstrip().startswith(b"-----")
                    else x509.load_der_x509_certificate(der_or_pem))
        except (ValueError, x509.InvalidVersion):
            return
        self.observe(cert.not_valid_before_utc, source)


def _issue_date(doc: object) -> datetime | None:
    try:
        body = json.loads(doc) if isinstance(doc, str | bytes) else doc
        if isinstance(body, Mapping):
            inner = next((body[k] for k in ("tcbInfo", "enclaveIdentity") if k in body), body)
            if isinstance(inner, Mapping) and isinstance(inner.get("issueDate"), str):
                return _parse_iso(str(inner["issueDate"]))
    except ValueError:
        return None
    return None


def _parse_iso(text: str) -> datetime | None:
    for fmt in _ISO_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _crl_last_update(value: object) -> datetime | None:
    """CRLs in QuoteCollateralV3 JSON are hex of DER (or PEM text)."""
    if not isinstance(value, str):
        return None
    try:
        raw = value.encode() if value.lstrip().startswith("-----") else bytes.fromhex(value)
        crl = (x509.load_pem_x509_crl(raw) if raw.lstrip().startswith(b"-----") else x509.load_der_x509_crl(raw))
    except ValueError:
        return None
    return crl.last_update_utc
