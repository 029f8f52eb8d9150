"""The RA-TLS verdict cache (`client/ratls_cache.py`): a controller certificate verified
once is not verified again by later processes within the TTL, and the cache is
untrusted on read: tampered, forged, expired or looser entries are ignored and the
certificate is verified in full."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.attestation import Expectations
from duet.client import ratls as client_ratls
from duet.client.ratls import RaTlsError, RaTlsVerifier
from duet.client.ratls_cache import CACHE_FILE, KEY_FILE, VerifiedCache
from duet.tee import ratls
from duet.tee.base import Quote
from duet.tee.simulated import SimulatedTee

URL = "https://127.0.0.1:6443"


@pytest.fixture(scope="module")
def sim_tee(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTee:
    return SimulatedTee(tmp_path_factory.mktemp("tee"))


@pytest.fixture(scope="module")
def cert(sim_tee: SimulatedTee) -> bytes:
    return ratls.make_certificate(Ed25519PrivateKey.generate(), sim_tee).cert_der


@pytest.fixture
def full(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every certificate verified in full (quote chain and collateral), in order."""
    calls: list[bytes] = []
    real = client_ratls.verify_certificate

    def counting(der: bytes, **kw: Any) -> Any:
        calls.append(der)
        return real(der, **kw)

    monkeypatch.setattr(client_ratls, "verify_certificate", counting)
    return calls


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def verifier(state: Path, clock: Clock | None = None, **kw: Any) -> RaTlsVerifier:
    kw.setdefault("trust_simulated", True)
    return RaTlsVerifier(URL, state_dir=state, clock=clock or Clock(), cache_ttl=kw.pop("ttl", 300.0), **kw)


def test_a_later_process_reuses_the_verdict(tmp_path: Path, cert: bytes, full: list[bytes]) -> None:
    first = verifier(tmp_path).verify_der(cert)
    assert len(full) == 1 and not first.cached
    again = verifier(tmp_path).verify_der(cert)  # a new verifier: a new `duet` process
    assert len(full) == 1, "the certificate was attested again within the TTL"
    assert again.cached and "verdict cached" in again.describe()
    assert (again.controller_id, again.report.mrenclave, again.simulated) == \
        (first.controller_id, first.report.mrenclave, first.simulated)
    assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"


def test_an_expired_verdict_is_verified_again(tmp_path: Path, cert: bytes, full: list[bytes]) -> None:
    clock = Clock()
    verifier(tmp_path, clock).verify_der(cert)
    clock.now += timedelta(seconds=301)
    assert not verifier(tmp_path, clock).verify_der(cert).cached
    assert len(full) == 2
    # A verdict from the future (a clock moved back, an edited file) is not used either.
    clock.now -= timedelta(seconds=3600)
    assert not verifier(tmp_path, clock).verify_der(cert).cached


def _edit(state: Path, change: Any) -> None:
    path = state / CACHE_FILE
    data = json.loads(path.read_text())
    for entry in data.values():
        change(entry)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field,value", [("mrenclave", "00" * 32), ("verified_at", 4e9), ("simulated", False),
                                         ("tcb_status", "Tampered"), ("mac", "0" * 64)])
def test_a_tampered_entry_is_ignored(tmp_path: Path, cert: bytes, full: list[bytes], field: str,
                                     value: Any) -> None:
    verifier(tmp_path).verify_der(cert)
    _edit(tmp_path, lambda e: e.__setitem__(field, value))
    peer = verifier(tmp_path).verify_der(cert)
    assert not peer.cached and len(full) == 2


def test_a_damaged_cache_file_is_ignored_and_rebuilt(tmp_path: Path, cert: bytes, full: list[bytes]) -> None:
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert not verifier(tmp_path).verify_der(cert).cached
    assert verifier(tmp_path).verify_der(cert).cached and len(full) == 1


def test_a_forged_entry_with_a_valid_mac_still_needs_the_binding(tmp_path: Path, sim_tee: SimulatedTee,
                                                                   full: list[bytes]) -> None:
    """An attacker able to write the cache *and* read its MAC key plants a verdict for
    their own certificate, whose quote belongs to another key: the binding is re-checked
    on the certificate, so the entry is ignored and the full check refuses it."""
    genuine = Ed25519PrivateKey.generate()
    bound_to_genuine = ratls.ratls_report_data(ratls.spki_der(genuine.public_key()))

    class Replayed:
        kind, simulated = "simulated", True

        def quote(self, report_data: bytes) -> Quote:
            return sim_tee.quote(bound_to_genuine)

        def measurement(self) -> dict[str, str]:
            return sim_tee.measurement()

    forged = ratls.make_certificate(Ed25519PrivateKey.generate(), Replayed()).cert_der  # type: ignore[arg-type]
    state = tmp_path
    cache = VerifiedCache(state, client_ratls.origin_of(URL), ttl=300, trust_simulated=True, expect=None)
    binding = client_ratls.certificate_binding(forged)[1]
    report = type("R", (), {"simulated": True, "mrenclave": sim_tee.measurement()["mrenclave"],
                            "mrsigner": "00" * 32, "isv_prod_id": 0, "isv_svn": 0, "tcb_status": "UpToDate",
                            "debug": False, "advisory_ids": []})()
    cache.store(hashlib.sha256(forged).hexdigest(), binding, report, "gramine")
    with pytest.raises(RaTlsError) as exc:
        verifier(state).verify_der(forged)
    assert exc.value.code == "ratls_binding" and full == [forged]


def test_a_verdict_under_trust_simulated_is_not_used_without_it(tmp_path: Path, cert: bytes,
                                                                  full: list[bytes]) -> None:
    verifier(tmp_path, trust_simulated=True).verify_der(cert)
    with pytest.raises(RaTlsError) as exc:
        verifier(tmp_path, trust_simulated=False).verify_der(cert)
    assert exc.value.code == "ratls_simulated" and len(full) == 2


def test_other_expectations_mean_a_full_check(tmp_path: Path, cert: bytes, full: list[bytes]) -> None:
    verifier(tmp_path).verify_der(cert)
    wrong = Expectations.model_validate({"mrenclave": "11" * 32})
    with pytest.raises(RaTlsError) as exc:
        verifier(tmp_path, expect=wrong).verify_der(cert)
    assert exc.value.code == "ratls_expectations" and len(full) == 2


def test_ttl_zero_turns_the_cache_off(tmp_path: Path, cert: bytes, full: list[bytes],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    verifier(tmp_path, ttl=0).verify_der(cert)
    verifier(tmp_path, ttl=0).verify_der(cert)
    assert len(full) == 2 and not (tmp_path / CACHE_FILE).exists()
    monkeypatch.setenv("DUET_RATLS_CACHE_TTL", "0")
    assert RaTlsVerifier(URL, state_dir=tmp_path, trust_simulated=True).cache is None
    monkeypatch.setenv("DUET_RATLS_CACHE_TTL", "forever")
    with pytest.raises(Exception, match="DUET_RATLS_CACHE_TTL"):
        RaTlsVerifier(URL, state_dir=tmp_path, trust_simulated=True)


def test_a_cached_verdict_does_not_load_the_attestation_package(tmp_path: Path, cert: bytes) -> None:
    verifier(tmp_path).verify_der(cert)
    (tmp_path / "cert.der").write_bytes(cert)
    code = (
        "import sys; from pathlib import Path; from duet.client.ratls import RaTlsVerifier\n"
        f"v = RaTlsVerifier({URL!r}, state_dir=Path({str(tmp_path)!r}), trust_simulated=True, cache_ttl=300)\n"
        f"p = v.verify_der(Path({str(tmp_path / 'cert.der')!r}).read_bytes())\n"
        "print(p.cached, 'duet.attestation' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "False"], out.stderr
