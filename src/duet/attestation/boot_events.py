"""The boot events a user names in a replayed measured-boot log: the kernel and its command
line. The TDX CCEL (RTMRs, SHA-384; `ccel.py`) and the vTPM's TCG log (PCRs, SHA-256;
`tcg_eventlog.py`) carry the same TCG event types; only the registers, the digest bank and
how event text is encoded differ, so the choosing is written once, here."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EV_IPL = 0x0000000D
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
CMDLINE_PREFIX = "kernel_cmdline: "


@dataclass(frozen=True)
class Registers:
    name: str  # "rtmr" or "pcr", the key the claims carry
    kernel: int
    cmdline: int
    digest: Callable[[bytes], bytes]  # the log's bank, to tell whether logged text was measured


def named_events(events: Iterable[tuple[int | None, int, bytes, bytes]], regs: Registers,
                 text_of: Callable[[bytes], str | None]) -> dict[str, dict[str, object]]:
    """From (register, event type, digest, data) of a log already replayed against the quote:

    ``kernel``: the last EFI boot-services application measured into the kernel register
    (shim, the boot loader, then the kernel, in order). ``cmdline``: the kernel command line
    measured into the command-line register as EV_IPL text (grub's ``kernel_cmdline: ...``,
    else the last EV_IPL text there). ``measured``: whether the digest is the bank's hash
    of the text as logged; only then is the text what was measured (the replay binds
    digests, not event data)."""
    out: dict[str, dict[str, object]] = {}
    cmdline: tuple[bytes, bytes, str] | None = None
    for reg, etype, digest, data in events:
        if reg == regs.kernel and etype == EV_EFI_BOOT_SERVICES_APPLICATION:
            out["kernel"] = {regs.name: regs.kernel, "digest": digest.hex()}
        elif reg == regs.cmdline and etype == EV_IPL:
            text = text_of(data)
            if text is not None and (cmdline is None or text.startswith(CMDLINE_PREFIX)
                                     or not cmdline[2].startswith(CMDLINE_PREFIX)):
                cmdline = (digest, data, text)
    if cmdline is not None:
        digest, data, text = cmdline
        measured = any(hmac.compare_digest(regs.digest(d), digest) for d in (data, data.rstrip(b"\0")))
        out["cmdline"] = {regs.name: regs.cmdline, "digest": digest.hex(),
                          "text": text.removeprefix(CMDLINE_PREFIX), "measured": measured}
    return out


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()
