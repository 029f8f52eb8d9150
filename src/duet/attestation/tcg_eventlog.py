"""A vTPM's TCG event log: parse, replay to the quoted SHA-256 PCRs, name what was booted.

Pinning raw PCR values breaks on every harmless change of boot order or kernel command
line, and says nothing about *what* was measured. The firmware's event log (Linux exposes
it as ``/sys/kernel/security/tpm0/binary_bios_measurements``) lists every extend; the
replay of the log must end at the PCR values the AK-signed quote reports, or the log is not
the one that was measured. Only then is an event in it believed, and only its digest: event
data is the guest's word unless the digest is its hash.

Format (TCG PC Client Platform Firmware Profile, "crypto agile" log): one TCG_PCR_EVENT
in the SHA-1 layout ``{pcr u32, type u32, digest[20], size u32, data}`` whose data is the
"Spec ID Event03" structure (the digest algorithms and sizes the log carries), then
TCG_PCR_EVENT2 records ``{pcr u32, type u32, count u32, (alg u16, digest)*, size u32,
data}``, little-endian, up to the end of the data (the kernel exports the log at its exact
length: anything after the last event is refused). Replay: PCR[i] starts at 32 zero bytes
(PCR 0 at the locality of a "StartupLocality" EV_NO_ACTION event, when there is one) and
PCR[i] = SHA-256(PCR[i] || digest) for every event other than EV_NO_ACTION.

Why a parser here and not a library: no maintained pure-Python parser of this format
exists on PyPI that is small and typed (what exists are firmware-tool frameworks), and the
format is a few dozen lines. Bounded: at most :data:`MAX_LOG_BYTES` of input and
:data:`MAX_EVENTS` events; every read is bounds-checked (:class:`Reader`); malformed input
raises :class:`ParseError`, a replay that does not match raises :class:`BindingError`.
Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import boot_events
from ._bytes import Reader
from .errors import BindingError, ParseError, UnsupportedVersion

ALG_SHA1 = 0x0004
ALG_SHA256 = 0x000B
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_IPL = boot_events.EV_IPL
EV_EFI_BOOT_SERVICES_APPLICATION = boot_events.EV_EFI_BOOT_SERVICES_APPLICATION
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
#: grub's prefix for the kernel command line it measures (EV_IPL text in PCR 8).
CMDLINE_PREFIX = boot_events.CMDLINE_PREFIX
#: The PCRs a boot's named events live in: the kernel image as an EFI application (4),
#: grub's command line strings (8).
KERNEL_PCR = 4
CMDLINE_PCR = 8
#: The kernel in PCR 4, its command line in PCR 8, SHA-256.
_PCRS = boot_events.Registers("pcr", kernel=KERNEL_PCR, cmdline=CMDLINE_PCR, digest=boot_events.sha256)
NUM_PCRS = 24
#: Real logs are tens of kilobytes; this bounds what a guest can make a verifier read.
MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_EVENTS = 100_000


@dataclass(frozen=True)
class TcgEvent:
    pcr: int
    event_type: int
    sha256: bytes
    data: bytes


def _spec_id(event: bytes) -> dict[int, int]:
    r = Reader(event, "TCG event log Spec ID event")
    if r.take(16, "signature") != SPEC_ID_SIGNATURE:
        raise UnsupportedVersion("TCG event log: the first event is not a Spec ID Event03 (not a crypto-agile log)")
    r.take(4, "platform class")
    r.take(4, "spec version")
    n = r.u32("number of algorithms")
    if not 0 < n <= 16:
        raise ParseError(f"TCG event log: {n} digest algorithms in the Spec ID event")
    sizes: dict[int, int] = {}
    for _ in range(n):
        alg = r.u16("algorithm id")
        size = r.u16("digest size")
        if not 0 < size <= 64 or alg in sizes:
            raise ParseError(f"TCG event log: algorithm {alg:#x} listed with size {size} (or twice)")
        sizes[alg] = size
    if sizes.get(ALG_SHA256) != 32:
        raise ParseError("TCG event log: the log has no SHA-256 digests")
    return sizes


def parse_tcg2_log(data: bytes) -> list[TcgEvent]:
    """Every event after the Spec ID header (the header itself is not returned)."""
    raw = bytes(data)
    if len(raw) > MAX_LOG_BYTES:
        raise ParseError(f"TCG event log: {len(raw)} bytes, more than {MAX_LOG_BYTES}")
    r = Reader(raw, "TCG event log")
    r.u32("first pcr index")
    if r.u32("first event type") != EV_NO_ACTION:
        raise ParseError("TCG event log: the first event is not EV_NO_ACTION (Spec ID)")
    r.take(20, "first digest")
    sizes = _spec_id(r.take(r.u32("first event size"), "Spec ID event"))
    out: list[TcgEvent] = []
    while r.remaining() > 0:
        if len(out) >= MAX_EVENTS:
            raise ParseError(f"TCG event log: more than {MAX_EVENTS} events")
        n = len(out)
        pcr = r.u32("pcr index")
        if pcr >= NUM_PCRS:
            raise ParseError(f"TCG event log event {n}: PCR index {pcr}")
        etype = r.u32("event type")
        count = r.u32("digest count")
        if not 0 < count <= len(sizes):
            raise ParseError(f"TCG event log event {n}: {count} digests")
        sha256: bytes | None = None
        seen: set[int] = set()
        for _ in range(count):
            alg = r.u16("algorithm id")
            size = sizes.get(alg)
            if size is None or alg in seen:
                raise ParseError(f"TCG event log event {n}: digest algorithm {alg:#x} not in the Spec ID event"
                                 " (or twice)")
            seen.add(alg)
            digest = r.take(size, "digest")
            if alg == ALG_SHA256:
                sha256 = digest
        if sha256 is None:
            raise ParseError(f"TCG event log event {n}: no SHA-256 digest")
        event = r.take(r.u32("event size"), "event data")
        out.append(TcgEvent(pcr, etype, sha256, event))
    return out


def replay_pcrs(events: Sequence[TcgEvent]) -> dict[int, bytes]:
    """The SHA-256 PCRs the events extend, as the events say they must be."""
    pcrs: dict[int, bytes] = {}
    start0 = bytes(32)
    for e in events:
        if e.event_type == EV_NO_ACTION:
            if e.pcr == 0 and e.data[:16] == STARTUP_LOCALITY_SIGNATURE and len(e.data) == 17 and 0 not in pcrs:
                start0 = bytes(31) + e.data[16:17]
            continue
        current = pcrs.get(e.pcr, start0 if e.pcr == 0 else bytes(32))
        pcrs[e.pcr] = hashlib.sha256(current + e.sha256).digest()
    return pcrs


def check_pcrs(log: bytes, quoted: Mapping[int, str | bytes]) -> list[TcgEvent]:
    """Replay ``log`` and insist that every PCR it extends is quoted, with the replayed value.

    PCRs the log never extends are not judged by it (the OS extends some after boot, and no
    event of the log is believed for them). Returns the events, now known to be the ones
    measured. Raises :class:`BindingError` naming the first PCR that differs.
    """
    events = parse_tcg2_log(log)
    for pcr, got in sorted(replay_pcrs(events).items()):
        want = quoted.get(pcr)
        if want is None:
            raise BindingError(f"PCR {pcr}: the event log extends it, but the vTPM quote does not cover it")
        raw = bytes.fromhex(want) if isinstance(want, str) else bytes(want)
        if not hmac.compare_digest(raw, got):
            raise BindingError(f"PCR {pcr}: the event log replays to {got.hex()}, the vTPM quote reports {raw.hex()}")
    return events


def _text(data: bytes) -> str | None:
    """Event data as text (grub's strings: ASCII/UTF-8, maybe NUL-terminated), or None."""
    raw = data.rstrip(b"\0")
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def named_events(events: Sequence[TcgEvent]) -> dict[str, dict[str, object]]:
    """The events a user names, from a log already replayed against the quote.

    ``kernel``: the last EFI boot-services application measured into PCR 4 (shim, the boot
    loader, then the kernel, in order). ``cmdline``: the kernel command line measured into
    PCR 8 as EV_IPL text (grub's ``kernel_cmdline: ...``, else the last EV_IPL text there).
    ``measured``: whether the digest is SHA-256 of the text as logged; only then is the text
    what was measured (the replay binds digests, not event data).
    """
    return boot_events.named_events(((e.pcr, e.event_type, e.sha256, e.data) for e in events), _PCRS, _text)


def event_log_claims(log: bytes, quoted: Mapping[int, str | bytes]) -> dict[str, object]:
    """Replay ``log`` against the quoted PCRs (:func:`check_pcrs`, fails closed) and give what
    a verifier reports and expectations read: the event count, the PCRs the log accounts
    for, and the named events."""
    events = check_pcrs(log, quoted)
    replayed = sorted(replay_pcrs(events))
    return {"events": len(events), "pcrs": replayed, **named_events(events)}


def build_tcg2_log(events: Sequence[tuple[int, int, bytes]], *, startup_locality: int | None = None) -> bytes:
    """A crypto-agile log with SHA-256 digests of ``(pcr, event_type, data)`` events (the
    digest of an EV_NO_ACTION event is zeros). For SIMULATED guests and tests: what a
    firmware would leave in ``binary_bios_measurements`` for those extends."""
    spec = (SPEC_ID_SIGNATURE + (0).to_bytes(4, "little") + bytes([0, 2, 0, 2]) + (1).to_bytes(4, "little")
            + ALG_SHA256.to_bytes(2, "little") + (32).to_bytes(2, "little") + b"\x00")
    out = bytearray()
    out += (0).to_bytes(4, "little") + EV_NO_ACTION.to_bytes(4, "little") + bytes(20)
    out += len(spec).to_bytes(4, "little") + spec
    all_events = list(events)
    if startup_locality is not None:
        all_events.insert(0, (0, EV_NO_ACTION, STARTUP_LOCALITY_SIGNATURE + bytes([startup_locality])))
    for pcr, etype, data in all_events:
        digest = bytes(32) if etype == EV_NO_ACTION else hashlib.sha256(data).digest()
        out += pcr.to_bytes(4, "little") + etype.to_bytes(4, "little")
        out += (1).to_bytes(4, "little") + ALG_SHA256.to_bytes(2, "little") + digest
        out += len(data).to_bytes(4, "little") + data
    return bytes(out)
