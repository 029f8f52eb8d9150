"""Paths and times for the attestation tests (a uniquely named module, imported directly)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"


def vec(rel: str) -> bytes:
    return (VECTORS / rel).read_bytes()


def hexvec(rel: str) -> bytes:
    return bytes.fromhex(vec(rel).decode().strip().removeprefix("0x"))


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


SIM_NOW = at("2026-06-01T00:00:00")
