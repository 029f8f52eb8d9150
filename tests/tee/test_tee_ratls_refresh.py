"""The RA-TLS certificate is re-issued in place (fresh quote and collateral); a failed
refresh keeps the working certificate."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet.client.ratls import verify_certificate
from duet.ledger import keys
from duet.tee import ratls
from duet.tee.simulated import SimulatedTee


class BrokenTee:
    kind = "gramine"
    simulated = False

    def quote(self, report_data: bytes):  # type: ignore[no-untyped-def]
        raise RuntimeError("collateral service unreachable")

    def measurement(self) -> dict[str, str]:
        return {}


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_refresh_reissues_and_failure_keeps_the_old_certificate(tmp_path: Path) -> None:
    tee = SimulatedTee(tmp_path / "tee")
    key = keys.Ed25519PrivateKey.generate()
    certfile, keyfile = ratls.prepare(tmp_path / "tls", key, tee)
    ctx = ratls.server_context(certfile, keyfile)
    before = _der(certfile)
    assert ratls.refresh(ctx, tmp_path / "tls", key, tee)
    after = _der(certfile)
    assert after != before
    peer = verify_certificate(after, trust_simulated=True, now=datetime.now(UTC))
    assert peer.public_key == keys.raw_public(key.public_key())
    assert not ratls.refresh(ctx, tmp_path / "tls", key, BrokenTee())  # type: ignore[arg-type]
    assert _der(certfile) == after
