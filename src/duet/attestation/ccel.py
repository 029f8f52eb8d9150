"""TDX RTMRs from the guest's CC event log (CCEL): parse, replay, compare.

A TD's RTMRs are hash chains: RTMR[i] = SHA-384(RTMR[i] ‖ digest) for every event
extended into it, starting from 48 zero bytes. Pinning raw RTMR values breaks on every
harmless change of boot order or kernel command line; replaying the event log the
firmware kept (ACPI CCEL table, TCG crypto-agile format) shows *what* was measured, and
the replay must end at the RTMRs the quote reports, or the log is not the one that was
measured.

The log: one TCG_PCR_EVENT (SHA-1 format) holding the "Spec ID Event03" that lists the
digest algorithms and sizes, then TCG_PCR_EVENT2 records ``{mr_index u32, event_type u32,
digest count u32, (alg u16, digest)*, event_size u32, event}``. In a CCEL the index is
the CC measurement register: 0 MRTD, 1..4 RTMR0..3. EV_NO_ACTION events are not extended.
The log ends at the end of the data or at padding (0xFF… or 0x00…).

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from . import boot_events
from ._bytes import Reader
from .errors import BindingError, ParseError

ALG_SHA384 = 0x000C
EV_NO_ACTION = 0x00000003
EV_IPL = boot_events.EV_IPL
EV_EFI_BOOT_SERVICES_APPLICATION = boot_events.EV_EFI_BOOT_SERVICES_APPLICATION
#: grub's prefix for the kernel command line it measures (as an EV_IPL string, PCR 8 =
#: RTMR2 in a TD).
CMDLINE_PREFIX = boot_events.CMDLINE_PREFIX
#: The kernel in RTMR1, its command line in RTMR2, SHA-384.
_RTMRS = boot_events.Registers("rtmr", kernel=1, cmdline=2, digest=boot_events.sha384)
SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
MAX_EVENTS = 100_000
_KNOWN_SIZES = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}


@dataclass(frozen=True)
class CcEvent:
    mr_index: int  # 0 MRTD, 1..4 RTMR0..3
    event_type: int
    sha384: bytes
    data: bytes

    @property
    def rtmr(self) -> int | None:
        return self.mr_index - 1 if 1 <= self.mr_index <= 4 else None


def _spec_id(event: bytes) -> dict[int, int]:
    r = Reader(event, "Spec ID event")
    if r.take(16, "signature") != SPEC_ID_SIGNATURE:
        raise ParseError("CCEL: the first event is not a TCG Spec ID Event03")
    r.take(4, "platform class")
    r.take(4, "spec version")  # minor, major, errata, uintnSize
    n = r.u32("number of algorithms")
    if not 0 < n <= 16:
        raise ParseError(f"CCEL: {n} digest algorithms")
    sizes = {}
    for _ in range(n):
        alg = r.u16("algorithm id")
        sizes[alg] = r.u16("digest size")
    if ALG_SHA384 not in sizes or sizes[ALG_SHA384] != 48:
        raise ParseError("CCEL: the log has no SHA-384 digests")
    return sizes


def parse_ccel(data: bytes) -> list[CcEvent]:
    """Every event after the Spec ID header. Raises :class:`ParseError` on malformed logs."""
    r = Reader(bytes(data), "CCEL")
    r.u32("first mr index")
    if r.u32("first event type") != EV_NO_ACTION:
        raise ParseError("CCEL: the first event is not EV_NO_ACTION (Spec ID)")
    r.take(20, "first digest")
    sizes = _spec_id(r.take(r.u32("first event size"), "Spec ID event"))
    out: list[CcEvent] = []
    raw = bytes(data)
    while r.remaining() >= 8:
        # Padding ends the log: look at the next header only (a slice of the rest per
        # event would make a long log of tiny events quadratic, and a guest writes it).
        head = raw[r.pos : r.pos + 8]
        if head in (b"\xff" * 8, bytes(8)):
            break
        if len(out) >= MAX_EVENTS:
            raise ParseError(f"CCEL: more than {MAX_EVENTS} events")
        index = r.u32("mr index")
        etype = r.u32("event type")
        count = r.u32("digest count")
        if not 0 < count <= len(sizes):
            raise ParseError(f"CCEL event {len(out)}: {count} digests")
        sha384 = None
        for _ in range(count):
            alg = r.u16("algorithm id")
            size = sizes.get(alg, _KNOWN_SIZES.get(alg))
            if size is None:
                raise ParseError(f"CCEL event {len(out)}: unknown digest algorithm {alg:#x}")
            digest = r.take(size, "digest")
            if alg == ALG_SHA384:
                sha384 = digest
        if sha384 is None:
            raise ParseError(f"CCEL event {len(out)}: no SHA-384 digest")
        event = r.take(r.u32("event size"), "event data")
        out.append(CcEvent(index, etype, sha384, event))
    rest = raw[r.pos :]
    if rest and rest.strip(rest[:1]):
        raise ParseError("CCEL: trailing bytes after the last event (padding is all 0xFF or all 0x00)")
    return out


def replay_rtmrs(events: Sequence[CcEvent]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the events say they must be."""
    rtmrs = [bytes(48)] * 4
    for e in events:
        if e.event_type == EV_NO_ACTION or e.rtmr is None:
            continue
        rtmrs[e.rtmr] = hashlib.sha384(rtmrs[e.rtmr] + e.sha384).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def check_rtmrs(ccel: bytes, reported: Sequence[str | bytes]) -> list[CcEvent]:
    """Replay ``ccel`` and insist it ends at the ``reported`` RTMR0..3 (hex or bytes).

    Returns the events, now known to be the ones measured. Raises :class:`BindingError`
    naming the first RTMR that differs.
    """
    events = parse_ccel(ccel)
    replayed = replay_rtmrs(events)
    if len(reported) != 4:
        raise ValueError("four reported RTMRs")
    for i, (want, got) in enumerate(zip(reported, replayed, strict=True)):
        raw = bytes.fromhex(want) if isinstance(want, str) else bytes(want)
        if not hmac.compare_digest(raw, got):
            raise BindingError(
                f"RTMR{i}: the event log replays to {got.hex()}, the quote reports {raw.hex()}"
            )
    return events


def _text(data: bytes) -> str | None:
    """Event data as text: ASCII / UTF-8 (grub's strings), or UTF-16LE (firmware), without
    trailing NULs; None when it is not printable text."""
    raw = data.rstrip(b"\0")
    if not raw:
        return None
    for codec in ("utf-8", "utf-16-le"):
        if codec == "utf-16-le" and (len(data) % 2 or b"\0" not in raw):
            continue
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if text.isprintable():
            return text
    return None


def named_events(events: Sequence[CcEvent]) -> dict[str, dict[str, object]]:
    """The events a user names, from a log already replayed against the quote.

    ``kernel``: the last EFI boot-services application measured into RTMR1 (shim, then the
    boot loader, then the kernel, in order; with a direct kernel boot, the kernel).
    ``cmdline``: the kernel command line measured into RTMR2 as an EV_IPL string (grub's
    ``kernel_cmdline: ...``, else the last EV_IPL text there). ``measured`` says whether
    the digest is SHA-384 of the text as logged: only then is the text what was measured
    (the digest alone is bound by the replay; the event data is not).
    """
    return boot_events.named_events(((e.rtmr, e.event_type, e.sha384, e.data) for e in events), _RTMRS, _text)


def event_log_claims(ccel: bytes, reported: Sequence[str | bytes]) -> dict[str, object]:
    """Replay ``ccel`` against the quote's RTMRs (:func:`check_rtmrs`, fails closed) and
    give what a verifier reports and expectations read: the number of events and the
    named ones."""
    events = check_rtmrs(ccel, reported)
    return {"events": len(events), **named_events(events)}


def build_ccel(events: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A CCEL with SHA-384 digests of ``(mr_index, event_type, data)`` events.

    For simulated guests and tests: what a TD's firmware would leave in the CCEL table.
    """
    spec = (
        SPEC_ID_SIGNATURE
        + (0).to_bytes(4, "little")
        + bytes([0, 2, 0, 2])  # spec version minor 0, major 2, errata 0, uintnSize 2
        + (1).to_bytes(4, "little")
        + ALG_SHA384.to_bytes(2, "little")
        + (48).to_bytes(2, "little")
        + b"\x00"  # vendor info size
    )
    out = bytearray()
    out += (0).to_bytes(4, "little") + EV_NO_ACTION.to_bytes(4, "little") + bytes(20)
    out += len(spec).to_bytes(4, "little") + spec
    for index, etype, data in events:
        out += index.to_bytes(4, "little") + etype.to_bytes(4, "little")
        out += (1).to_bytes(4, "little") + ALG_SHA384.to_bytes(2, "little")
        out += hashlib.sha384(data).digest()
        out += len(data).to_bytes(4, "little") + data
    return bytes(out)
