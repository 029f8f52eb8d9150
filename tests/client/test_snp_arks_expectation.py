"""The user expectation `cvm.snp_arks`: SEV-SNP roots a user trusts instead of AMD's,
for `snp` / `azure-snp` evidence, in `duet verify` (the audit checks and the streaming
replay alike). Without it, evidence under a development ARK fails as untrusted."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from tests.logbuilder import CVM_ID, LogBuilder, all_checks

from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.snp.certs import load_cert
from duet.client.audit import Check
from duet.client.errors import ClientError
from duet.client.expectations import UserExpectations, load_expectations
from duet.client.replay import CvmReplay


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("dev-snp"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path_factory.mktemp("other-snp"))


@pytest.fixture(scope="module")
def log(dev: SimulatedSnp) -> LogBuilder:
    """A CVM whose `snp` evidence (a hardware kind, not `simulated-snp`) a development
    VCEK under the development ARK signed: what a twin's guest produces."""
    return LogBuilder(dev, tee="snp", evidence_kind="snp").honest_life()


def _expect(*arks: bytes | str) -> UserExpectations:
    return UserExpectations.model_validate({"cvm": {"tee": "snp", "snp_arks": [
        a.decode() if isinstance(a, bytes) else a for a in arks]}})


def _verdicts(log: LogBuilder, expect: UserExpectations | None) -> tuple[dict[str, Check], dict[str, Check]]:
    """What `duet verify` reports: the whole-log checks and the streaming replay's."""
    now = datetime.now(UTC)
    audited = all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                         expect=expect, trust_simulated=False, now=now)
    replay = CvmReplay(log.controller_id, log.controller_key, CVM_ID, expect=expect, now=now)
    for leaf in log.leaves():
        replay.feed(leaf)
    return audited, {c.name: c for c in replay.finish(now).checks}


def test_evidence_under_the_dev_ark_fails_without_the_pin(log: LogBuilder) -> None:
    for checks in _verdicts(log, None) + _verdicts(log, UserExpectations.model_validate({"cvm": {"tee": "snp"}})):
        assert not checks["evidence"].ok and "is not a trusted root" in checks["evidence"].detail, checks["evidence"]


def test_evidence_under_the_pinned_dev_ark_passes_and_says_so(log: LogBuilder, dev: SimulatedSnp) -> None:
    for checks in _verdicts(log, _expect(dev.ark_pem)):
        ev = checks["evidence"]
        assert ev.ok, ev
        assert ev.simulated and "SIMULATED" in ev.detail and "non-AMD SEV-SNP root (cvm.snp_arks)" in ev.detail
        assert checks["cvm_tee"].ok


def test_another_pinned_ark_fails(log: LogBuilder, dev: SimulatedSnp, other: SimulatedSnp) -> None:
    for checks in _verdicts(log, _expect(other.ark_pem)):
        assert not checks["evidence"].ok and "is not a trusted root" in checks["evidence"].detail
    # Pinning both: the one that signed is among them.
    for checks in _verdicts(log, _expect(other.ark_pem, dev.ark_pem)):
        assert checks["evidence"].ok


def test_the_pin_as_a_file_pem_or_der(tmp_path: Path, log: LogBuilder, dev: SimulatedSnp) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ark.pem").write_bytes(dev.ark_pem)
    (tmp_path / "keys" / "ark.der").write_bytes(load_cert(dev.ark_pem, "ARK").public_bytes(Encoding.DER))
    for ref in ("keys/ark.pem", "keys/ark.der", str(tmp_path / "keys" / "ark.pem")):
        (tmp_path / "expect.yaml").write_text(f"cvm:\n  tee: snp\n  snp_arks: [{ref}]\n")
        expect = load_expectations(tmp_path / "expect.yaml")
        assert expect.cvm is not None and expect.cvm.snp_roots() is not None
        for checks in _verdicts(log, expect):
            assert checks["evidence"].ok, (ref, checks["evidence"])


def test_a_bad_pin_is_refused_when_the_file_is_read(tmp_path: Path, dev: SimulatedSnp) -> None:
    ask = dev.cert_chain_pem.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    (tmp_path / "ask.pem").write_bytes(ask)
    (tmp_path / "chain.pem").write_bytes(dev.cert_chain_pem)
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01junk")
    for ref, why in (("ask.pem", "snp_arks[0]: SEV-Milan is not self-signed"),
                     ("chain.pem", "holds 2 PEM blocks"),
                     ("junk.bin", "cvm.snp_arks: "),
                     ("missing.pem", "cvm.snp_arks: cannot read")):
        (tmp_path / "expect.yaml").write_text(f"cvm:\n  snp_arks: [{ref}]\n")
        with pytest.raises(ClientError) as info:
            load_expectations(tmp_path / "expect.yaml")
        assert info.value.code == "invalid_expectations" and why in str(info.value), (ref, str(info.value))
    (tmp_path / "expect.yaml").write_text("cvm:\n  snp_arks: []\n")
    with pytest.raises(ClientError, match="at least one SEV-SNP root"):
        load_expectations(tmp_path / "expect.yaml")
