"""`duet verify`'s evidence check under `cvm.snp_arks`: it passes, and its detail says the
reports chain to a pinned non-AMD root (SIMULATED), in the whole-log checks and the
streaming replay alike; without the pin the same log fails as untrusted."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.logbuilder import CVM_ID, LogBuilder, all_checks

from duet.attestation.simulated.snp import SimulatedSnp
from duet.client.audit import Check
from duet.client.expectations import UserExpectations
from duet.client.replay import CvmReplay


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("dev-snp"))


def _verdicts(log: LogBuilder, expect: UserExpectations | None, *, trust_simulated: bool = False,
              ) -> list[dict[str, Check]]:
    now = datetime.now(UTC)
    audited = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                         expect=expect, trust_simulated=trust_simulated, now=now)
    replay = CvmReplay(log.controller_id, log.controller_key, CVM_ID, expect=expect,
                       trust_simulated=trust_simulated, now=now)
    for leaf in log.leaves():
        replay.feed(leaf)
    return [audited, {c.name: c for c in replay.finish(now).checks}]


def test_the_evidence_check_names_the_pinned_non_amd_root(dev: SimulatedSnp) -> None:
    log = LogBuilder(dev, tee="snp", evidence_kind="snp").honest_life()
    pinned = UserExpectations.model_validate({"cvm": {"tee": "snp", "snp_arks": [dev.ark_pem.decode()]}})
    for checks in _verdicts(log, pinned):
        ev = checks["evidence"]
        assert ev.ok and ev.simulated, ev
        assert "SIMULATED: they chain to a pinned non-AMD SEV-SNP root (cvm.snp_arks)" in ev.detail
        assert "proves no AMD hardware" in ev.detail
    for checks in _verdicts(log, None):
        assert not checks["evidence"].ok and "is not a trusted root" in checks["evidence"].detail


def test_simulated_kinds_say_nothing_of_pinned_roots(dev: SimulatedSnp) -> None:
    """`simulated-snp` is SIMULATED by its kind already; no root note is added."""
    log = LogBuilder(dev).honest_life()
    pinned = UserExpectations.model_validate({"cvm": {"snp_arks": [dev.ark_pem.decode()]}})
    for checks in _verdicts(log, pinned, trust_simulated=True):
        assert checks["evidence"].ok and "non-AMD" not in checks["evidence"].detail
