"""Parsing of the continuity options of `duet controller serve` (kept apart from the CLI
module so the checks are typed errors the CLI prints as one line)."""

from __future__ import annotations

import re

from duet.controller.errors import ConfigError
from duet.controller.serve import SimulatedPlatform
from duet.tee.simulated import DEFAULT_CPUSVN

_HEX32 = re.compile(r"[0-9a-fA-F]{64}")


def simulated_platform(mrenclave: str | None, cpusvn: int | None) -> SimulatedPlatform | None:
    """`--simulated-mrenclave HEX` / `--simulated-cpusvn N`, or None when neither is given."""
    if mrenclave is None and cpusvn is None:
        return None
    if mrenclave is not None and not _HEX32.fullmatch(mrenclave):
        raise ConfigError("--simulated-mrenclave must be 64 hex digits (a 32-byte MRENCLAVE)")
    if cpusvn is not None and not 0 <= cpusvn < 1 << 16:
        raise ConfigError("--simulated-cpusvn must be 0..65535")
    return SimulatedPlatform(
        mrenclave=bytes.fromhex(mrenclave) if mrenclave is not None else None,
        cpusvn=cpusvn if cpusvn is not None else DEFAULT_CPUSVN,
    )
