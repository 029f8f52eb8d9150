"""duet.tee.gramine against a fake /dev/attestation (FIFOs that behave like Gramine's
pseudo-files, quoting with the simulated quote generator)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tee_helpers import MRENCLAVE, MRSIGNER, FakeAttestation

from duet.attestation import SimulatedSgx, verify_sgx_quote
from duet.tee.base import controller_report_data
from duet.tee.gramine import (
    SEALED_DATA_DIR,
    CollateralUnavailable,
    GramineTee,
    NotInEnclave,
    QuoteMismatch,
    SealedDirError,
)

NOW = SimulatedSgx.valid_at()[0] + timedelta(days=30)


@pytest.fixture(scope="module")
def sgx(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSgx:
    return SimulatedSgx.load_or_create(tmp_path_factory.mktemp("sgx"))


@pytest.fixture
def fake(tmp_path: Path, sgx: SimulatedSgx) -> Iterator[FakeAttestation]:
    f = FakeAttestation(tmp_path / "attestation", sgx)
    yield f
    f.close()


def tee_for(fake: FakeAttestation, sgx: SimulatedSgx, **kw: object) -> GramineTee:
    kw.setdefault("collateral", lambda quote: sgx.collateral())
    return GramineTee(fake.dir, root_ca_der=sgx.root_ca_der, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_binding_round_trips(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    tee = tee_for(fake, sgx)
    GramineTee.check_environment(fake.dir)
    rd = controller_report_data(bytes(range(32)), b"nonce")
    q = tee.quote(rd)
    assert q.simulated_root_ca is None  # a Gramine quote never ships a root
    report = verify_sgx_quote(q.quote, q.collateral, now=NOW, root_ca_der=sgx.root_ca_der)
    assert report.report_data == rd
    assert report.mrenclave == MRENCLAVE.hex() and report.mrsigner == MRSIGNER.hex()
    assert tee.kind == "gramine" and tee.simulated is False


def test_quote_with_other_report_data_is_refused(tmp_path: Path, sgx: SimulatedSgx) -> None:
    fake = FakeAttestation(tmp_path / "att", sgx, tamper=lambda rd: bytes(64))
    try:
        with pytest.raises(QuoteMismatch, match="does not carry the report data"):
            tee_for(fake, sgx).quote(controller_report_data(b"k" * 32, b"n"))
    finally:
        fake.close()


def test_report_data_must_be_64_bytes(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        tee_for(fake, sgx).quote(b"short")


def test_concurrent_quotes_are_serialised(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    tee = tee_for(fake, sgx)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        rd = controller_report_data(b"k" * 32, i.to_bytes(4, "big"))
        try:
            q = tee.quote(rd)
            results[i] = verify_sgx_quote(q.quote, q.collateral, now=NOW, root_ca_der=sgx.root_ca_der).report_data
            assert results[i] == rd
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 8


def test_measurement_from_quote_and_target_info(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    m = tee_for(fake, sgx).measurement()
    assert m == {"mrenclave": MRENCLAVE.hex(), "mrsigner": MRSIGNER.hex()}


def test_no_collateral_source_fails_closed(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    tee = GramineTee(fake.dir, root_ca_der=sgx.root_ca_der, clock=lambda: NOW)
    with pytest.raises(CollateralUnavailable, match="no DCAP collateral source") as exc:
        tee.quote(bytes(64))
    assert exc.value.code == "collateral_unavailable"


def test_unreachable_pccs_fails_closed(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    def down(quote: bytes) -> dict[str, object]:
        raise ConnectionError("PCCS unreachable")

    with pytest.raises(CollateralUnavailable, match="PCCS unreachable"):
        tee_for(fake, sgx, collateral=down).quote(bytes(64))


def test_collateral_that_does_not_verify_is_not_served(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    revoked = sgx.collateral(revoke_pck=True)
    with pytest.raises(CollateralUnavailable, match="does not verify"):
        tee_for(fake, sgx, collateral=lambda q: revoked).quote(bytes(64))


def test_intel_root_refuses_a_non_intel_quote(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    # Without the test-only root, the self-check uses Intel's root: a dev quote never passes.
    tee = GramineTee(fake.dir, collateral=lambda q: sgx.collateral(), clock=lambda: NOW)
    with pytest.raises(CollateralUnavailable):
        tee.quote(bytes(64))


def test_outside_an_enclave_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(NotInEnclave, match="not running under gramine-sgx") as exc:
        GramineTee.check_environment(tmp_path / "no-such-dir")
    assert exc.value.code == "not_in_enclave"
    (tmp_path / "attestation_type").write_text("none")
    with pytest.raises(NotInEnclave, match="needs DCAP remote attestation"):
        GramineTee.check_environment(tmp_path)
    # This machine has no Gramine: the default path is missing too.
    if not Path("/dev/attestation").exists():
        with pytest.raises(NotInEnclave):
            GramineTee.check_environment()


def test_quote_outside_an_enclave(tmp_path: Path) -> None:
    with pytest.raises(NotInEnclave):
        GramineTee(tmp_path / "nothing", collateral=lambda q: {}).quote(bytes(64))


def test_data_dir_must_be_the_sealed_mount(tmp_path: Path) -> None:
    GramineTee.check_data_dir(SEALED_DATA_DIR)
    GramineTee.check_data_dir(Path("/data/../data"))
    with pytest.raises(SealedDirError, match="sealed mount"):
        GramineTee.check_data_dir(tmp_path)


async def test_pccs_provider_fails_closed_even_inside_an_event_loop(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    from duet.tee.gramine import pccs_collateral

    # A closed port: dcap-qvl's fetch fails; the quote endpoint gets a clear, typed error.
    tee = GramineTee(fake.dir, collateral=pccs_collateral("https://127.0.0.1:9", timeout=10), clock=lambda: NOW)
    with pytest.raises(CollateralUnavailable, match="cannot get DCAP collateral"):
        tee.quote(bytes(64))


def test_seal_uses_the_mrenclave_key_and_fails_closed(fake: FakeAttestation, sgx: SimulatedSgx) -> None:
    """The state key is sealed with Gramine's _sgx_mrenclave key; another key (a microcode
    update, another CPU) or no key file at all opens nothing, with one typed error."""
    from duet.tee.gramine import SEAL_KEY_FILE
    from duet.tee.seal import SealUnreadable

    tee = tee_for(fake, sgx)
    with pytest.raises(SealUnreadable, match="sealing key"):
        tee.seal(b"k" * 32)
    (fake.dir / SEAL_KEY_FILE).parent.mkdir()
    (fake.dir / SEAL_KEY_FILE).write_bytes(bytes(range(16)))
    blob = tee.seal(b"k" * 32)
    assert b"k" * 32 not in blob and tee.unseal(blob) == b"k" * 32
    (fake.dir / SEAL_KEY_FILE).write_bytes(bytes(range(1, 17)))
    with pytest.raises(SealUnreadable, match="microcode"):
        tee.unseal(blob)
