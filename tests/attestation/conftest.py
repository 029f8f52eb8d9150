"""Simulated platforms, made once per session (key generation is the slow part)."""

from __future__ import annotations

import pytest

from duet.attestation.simulated import SimulatedSgx, SimulatedSnp


@pytest.fixture(scope="session")
def sim_sgx(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSgx:
    return SimulatedSgx.load_or_create(tmp_path_factory.mktemp("sgx"))


@pytest.fixture(scope="session")
def sim_snp(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("snp"))
