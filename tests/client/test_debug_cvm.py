"""A CVM whose SEV-SNP guest policy allows DEBUG (the host can read and change its memory)
fails `duet verify` unless the user's expectations accept it by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from duet.attestation import SimulatedSnp
from duet.client.expectations import UserExpectations
from logbuilder import LogBuilder, all_checks

SNP_POLICY_DEBUG = 1 << 19


class _DebugPlatform:
    """The simulated SNP platform, launching every guest with the DEBUG policy bit."""

    def __init__(self, snp: SimulatedSnp) -> None:
        self._snp = snp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snp, name)

    def report(self, report_data: bytes, **kw: Any) -> bytes:
        return self._snp.report(report_data, policy=0x30000 | SNP_POLICY_DEBUG, **kw)


@pytest.fixture(scope="module")
def snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(Path(tmp_path_factory.mktemp("snp")))


def _evidence(log: LogBuilder, expect: dict[str, Any] | None) -> Any:
    checks = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                        expect=UserExpectations.model_validate(expect) if expect else None)
    return checks["evidence"]


def test_debug_fails_unless_allowed_by_name(snp: SimulatedSnp) -> None:
    honest = LogBuilder(snp).honest_life()
    assert _evidence(honest, None).ok
    debug = LogBuilder(_DebugPlatform(snp)).honest_life()  # type: ignore[arg-type]
    failed = _evidence(debug, None)
    assert not failed.ok and "DEBUG enabled" in failed.detail
    assert not _evidence(debug, {"cvm": {"tee": "simulated-snp"}}).ok
    assert _evidence(debug, {"cvm": {"allow_debug": True}}).ok
