"""The controller inside a Gramine SGX enclave: quotes through ``/dev/attestation``.

Gramine exposes SGX attestation as pseudo-files (Gramine docs, "Low-level
``/dev/attestation`` interface"):

* ``attestation_type`` reads ``dcap`` when the manifest says ``sgx.remote_attestation =
  "dcap"`` and the enclave runs on SGX; it is absent outside Gramine, and ``none`` under
  ``gramine-direct`` or without remote attestation;
* writing 64 bytes to ``user_report_data`` sets the report data of the *next* quote;
* reading ``quote`` returns an SGX DCAP quote over that report data;
* ``my_target_info`` holds this enclave's TARGETINFO, whose first 32 bytes are MRENCLAVE.

The two-step write-then-read is a process-wide state machine, so :meth:`GramineTee.quote`
serialises it with a lock, and checks that the quote it read back really carries the report
data it wrote (a quote for somebody else's report data is refused, never served).

**Collateral.** A verifier needs the DCAP collateral (TCB Info, QE Identity, CRLs, issuer
chains) for the platform's FMSPC. It comes from the PCCS the host is configured with (or
Intel's PCS). It is public and signed by Intel, so fetching it over an untrusted network is
sound: a wrong or stale answer only makes verification fail. It is *injectable*:
``GramineTee(collateral=...)`` takes a callable ``quote bytes -> collateral JSON``;
:func:`pccs_collateral` builds one over ``dcap_qvl.get_collateral(pccs_url, quote)``. With
no provider, or when the provider fails, :meth:`quote` raises :class:`CollateralUnavailable`
(code ``collateral_unavailable``): the quote endpoint answers with that clear error rather
than with a quote nobody can verify. Before serving, the quote is verified with the very
collateral it is served with, against Intel's root (fail closed).

**Sealed state.** The controller key and every other piece of state live in the data dir,
which the manifest mounts as an encrypted mount keyed by ``_sgx_mrenclave`` at
:data:`SEALED_DATA_DIR`: only this very enclave (same MRENCLAVE, same CPU) can read it.
:meth:`GramineTee.check_data_dir` refuses any other data dir, so a manifest that forgot the
mount cannot silently keep the key on the host's disk in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from duet.attestation.dcap.abi import SgxReportBody, parse_sgx_quote
from duet.attestation.errors import AttestationError
from duet.tee.base import Quote
from duet.tee.seal import SealUnreadable, seal_with, unseal_with

DEFAULT_ATTESTATION_DIR = Path("/dev/attestation")
#: Where the manifest mounts the encrypted (sealed) data dir; the manifest template renders
#: this very value, and a test checks they agree.
SEALED_DATA_DIR = Path("/data")
REPORT_DATA_LEN = 64
#: Gramine limits SGX quotes to 8 KiB (SGX_QUOTE_MAX_SIZE); be a little generous.
MAX_QUOTE_LEN = 64 * 1024
TARGET_INFO_LEN = 512
_MEASUREMENT_DOMAIN = b"duet-gramine-measurement-v1"

CollateralProvider = Callable[[bytes], Mapping[str, Any]]


class GramineError(Exception):
    """A Gramine/SGX problem; ``code`` is stable for the HTTP layer."""

    code = "tee_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotInEnclave(GramineError):
    """``--tee gramine`` outside a Gramine SGX enclave with DCAP attestation."""

    code = "not_in_enclave"


class QuoteMismatch(GramineError):
    """The quote read back does not carry the report data just written."""

    code = "quote_mismatch"


class CollateralUnavailable(GramineError):
    """No (verifiable) DCAP collateral for this platform right now."""

    code = "collateral_unavailable"


#: Gramine's pseudo-file with this enclave's MRENCLAVE-policy sealing key (16 bytes),
#: relative to the attestation dir.
SEAL_KEY_FILE = "keys/_sgx_mrenclave"


class SealedDirError(GramineError):
    code = "unsealed_data_dir"


class GramineTee:
    """:class:`duet.tee.base.TeeBackend` over Gramine's ``/dev/attestation``."""

    kind = "gramine"
    simulated = False

    def __init__(
        self,
        attestation_dir: Path = DEFAULT_ATTESTATION_DIR,
        *,
        collateral: CollateralProvider | None = None,
        collateral_ttl: float = 3600.0,
        root_ca_der: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_verified: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        """``root_ca_der`` exists only for tests (a simulated quoting enclave behind a fake
        ``/dev/attestation``): a real deployment leaves it ``None`` and quotes verify
        against Intel's SGX root only. ``clock`` is the controller's trusted clock (never
        earlier than collateral it verified, tee/clock.py) and ``on_verified`` receives
        each collateral that verified, to raise that bound."""
        self._dir = Path(attestation_dir)
        self._collateral_provider = collateral
        self._collateral_ttl = collateral_ttl
        self._root = root_ca_der
        self._clock = clock
        self._on_verified = on_verified
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._measurement: dict[str, str] | None = None

    # ------------------------------------------------------------------ environment

    @staticmethod
    def check_environment(attestation_dir: Path = DEFAULT_ATTESTATION_DIR) -> None:
        """Raise :class:`NotInEnclave` with a plain explanation unless we run inside a
        Gramine SGX enclave whose manifest enables DCAP remote attestation."""
        path = Path(attestation_dir) / "attestation_type"
        try:
            kind = path.read_text(encoding="ascii", errors="replace").strip().strip("\0")
        except FileNotFoundError:
            raise NotInEnclave(
                f"--tee gramine needs the controller to run inside a Gramine SGX enclave ({path} does not "
                "exist: this process is not running under gramine-sgx). Start it with `gramine-sgx "
                "duet-controller` from the signed image (deploy/gramine/README.md), or use --tee simulated "
                "for development."
            ) from None
        except OSError as exc:
            raise NotInEnclave(f"cannot read {path}: {exc.strerror}") from None
        if kind != "dcap":
            raise NotInEnclave(
                f"--tee gramine needs DCAP remote attestation, but {path} says {kind or 'nothing'!r} "
                "(gramine-direct, or a manifest without sgx.remote_attestation = \"dcap\"); run the "
                "signed manifest with gramine-sgx on an SGX host with DCAP"
            )

    @staticmethod
    def check_data_dir(data_dir: Path) -> None:
        """The data dir must be the manifest's encrypted mount (see module docstring)."""
        if Path(os.path.abspath(data_dir)) != SEALED_DATA_DIR:
            raise SealedDirError(
                f"under --tee gramine the data dir must be the sealed mount {SEALED_DATA_DIR} "
                f"(an encrypted mount keyed by _sgx_mrenclave in the manifest), not {data_dir}"
            )

    # ------------------------------------------------------------------------ quotes

    def _raw_quote(self, report_data: bytes) -> bytes:
        """Write report data, read the quote; the caller holds the lock."""
        if len(report_data) != REPORT_DATA_LEN:
            raise ValueError(f"report data must be exactly {REPORT_DATA_LEN} bytes, got {len(report_data)}")
        try:
            with open(self._dir / "user_report_data", "wb", buffering=0) as f:
                written = f.write(report_data)
            if written != REPORT_DATA_LEN:
                raise GramineError(f"short write to user_report_data ({written} of {REPORT_DATA_LEN} bytes)")
            with open(self._dir / "quote", "rb", buffering=0) as f:
                quote = f.read(MAX_QUOTE_LEN + 1)
        except FileNotFoundError as exc:
            raise NotInEnclave(f"{exc.filename} does not exist: not inside a Gramine SGX enclave") from None
        except OSError as exc:
            raise GramineError(f"SGX quote generation failed ({exc.filename}: {exc.strerror})") from None
        if len(quote) > MAX_QUOTE_LEN:
            raise GramineError(f"the quote from {self._dir / 'quote'} is larger than {MAX_QUOTE_LEN} bytes")
        try:
            body = parse_sgx_quote(quote).body
        except AttestationError as exc:
            raise GramineError(f"the quote from {self._dir / 'quote'} is not an SGX DCAP quote: {exc}") from None
        assert isinstance(body, SgxReportBody)
        if not hmac.compare_digest(body.report_data, report_data):
            raise QuoteMismatch(
                "the quote read back does not carry the report data just written to user_report_data "
                "(another writer, or a broken /dev/attestation); refusing to serve it"
            )
        return quote

    def quote(self, report_data: bytes) -> Quote:
        with self._lock:
            raw = self._raw_quote(report_data)
        collateral = self._verified_collateral(raw)
        return Quote(quote=raw, collateral=collateral, simulated_root_ca=None)

    # -------------------------------------------------------------------- collateral

    def _fetch(self, raw: bytes) -> dict[str, Any]:
        if self._collateral_provider is None:
            raise CollateralUnavailable(
                "no DCAP collateral source is configured for this controller (a PCCS URL); without "
                "collateral nobody can verify the quote, so none is served"
            )
        try:
            got = self._collateral_provider(raw)
            return dict(json.loads(json.dumps(dict(got))))
        except GramineError:
            raise
        except Exception as exc:
            raise CollateralUnavailable(f"cannot get DCAP collateral for this platform: {exc}") from None

    def _check(self, raw: bytes, collateral: Mapping[str, Any]) -> None:
        from duet.attestation import verify_sgx_quote

        verify_sgx_quote(raw, collateral, now=self._clock(), root_ca_der=self._root)

    def _verified_collateral(self, raw: bytes) -> dict[str, Any]:
        """Collateral that verifies ``raw`` now; cached for ``collateral_ttl`` seconds and
        refetched once when the cached one no longer verifies."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < self._collateral_ttl:
            try:
                self._check(raw, cached[1])
                return cached[1]
            except AttestationError:
                pass
        collateral = self._fetch(raw)
        try:
            self._check(raw, collateral)
        except AttestationError as exc:
            raise CollateralUnavailable(
                f"this enclave's quote does not verify with the collateral from the PCCS ({exc}); "
                "refusing to serve an unverifiable quote"
            ) from None
        if self._on_verified is not None:
            self._on_verified(collateral)
        self._cached = (time.monotonic(), collateral)
        return collateral

    # ------------------------------------------------------------------- measurement

    def measurement(self) -> dict[str, str]:
        """MRENCLAVE and MRSIGNER from a quote of this enclave (cross-checked with
        ``my_target_info`` when Gramine provides it)."""
        if self._measurement is None:
            report_data = hashlib.sha512(_MEASUREMENT_DOMAIN).digest()
            with self._lock:
                raw = self._raw_quote(report_data)
            body = parse_sgx_quote(raw).body
            assert isinstance(body, SgxReportBody)
            try:
                target_info = (self._dir / "my_target_info").read_bytes()
            except OSError:
                target_info = b""
            if len(target_info) == TARGET_INFO_LEN and target_info[:32] != body.mr_enclave:
                raise GramineError("my_target_info and the quote disagree on MRENCLAVE")
            self._measurement = {"mrenclave": body.mr_enclave.hex(), "mrsigner": body.mr_signer.hex()}
        return dict(self._measurement)


    # ------------------------------------------------------------------------ sealing

    def _seal_key(self) -> bytes:
        path = self._dir / SEAL_KEY_FILE
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise SealUnreadable(f"cannot read this enclave's sealing key {path}: {exc.strerror}") from None
        if len(key) != 16:
            raise SealUnreadable(f"{path} is not a 128-bit sealing key")
        return key

    def seal(self, plaintext: bytes) -> bytes:
        """Seal with EGETKEY's MRENCLAVE-policy key (Gramine's ``_sgx_mrenclave``). The
        enclave does not see its CPUSVN here, so the header carries 0; a TCB change still
        changes the key, and the seal then does not open (the error says so)."""
        mr = bytes.fromhex(self.measurement()["mrenclave"])
        return seal_with(self._seal_key(), plaintext, mrenclave=mr, cpusvn=0)

    def unseal(self, blob: bytes) -> bytes:
        mr = bytes.fromhex(self.measurement()["mrenclave"])
        return unseal_with(self._seal_key(), blob, mrenclave=mr, cpusvn=0)


def pccs_collateral(pccs_url: str, *, timeout: float = 30.0) -> CollateralProvider:
    """A collateral provider over ``dcap_qvl.get_collateral(pccs_url, quote)`` (network).

    ``pccs_url`` is the PCCS the SGX host's DCAP stack uses (``/etc/sgx_default_qcnl.conf``,
    ``pccs_url``), or Intel's PCS ``https://api.trustedservices.intel.com``. It decides
    availability only: collateral is verified against Intel's root before use.
    """
    import asyncio
    import concurrent.futures

    import dcap_qvl  # type: ignore[import-untyped]

    def provide(quote: bytes) -> Mapping[str, Any]:
        async def fetch() -> Any:
            return await asyncio.wait_for(dcap_qvl.get_collateral(pccs_url, quote), timeout)

        # A private event loop in a private thread: the caller may itself be running inside
        # an event loop (asyncio.run refuses to nest).
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            coll = pool.submit(asyncio.run, fetch()).result()
        data = json.loads(coll.to_json())
        if not isinstance(data, dict):
            raise ValueError("dcap-qvl returned collateral that is not a JSON object")
        return data

    return provide

