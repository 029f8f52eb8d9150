"""Every certificate of the quote's collateral chains is checked, not only the root: a chain
copy that the quote verifier never reads (the PCK CRL issuer's intermediate) must not carry
a changed byte unnoticed. Found by the bundle byte-flip test, which hit it at random."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from duet.client.bundle import BundleSource
from duet.client.verify import verify
from helpers import ControllerProc


def _resign_broken(pem_chain: str) -> str:
    """The chain with the first certificate's signature changed (it still parses)."""
    certs = x509.load_pem_x509_certificates(pem_chain.encode())
    der = bytearray(certs[0].public_bytes(serialization.Encoding.DER))
    der[-1] ^= 1
    broken = x509.load_der_x509_certificate(bytes(der))
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in [broken, *certs[1:]])


def test_a_changed_intermediate_in_any_collateral_chain_fails(controller: ControllerProc, tmp_path: Path) -> None:
    cvm = controller.owner().create("local", name="chains")["id"]
    path = tmp_path / "bundle.json"
    out = subprocess.run([sys.executable, "-m", "duet.cli.main", "state", "export", cvm, "--out", str(path),
                          "--controller", controller.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    honest = json.loads(path.read_bytes())
    report, _ = verify(BundleSource.load(path), cvm, trust_simulated=True, state_dir=tmp_path / "ok")
    assert report.ok
    for name in ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        doc = json.loads(path.read_bytes())
        chain = doc["quote"]["collateral"][name]
        assert len(x509.load_pem_x509_certificates(chain.encode())) >= 2, name
        doc["quote"]["collateral"][name] = _resign_broken(chain)
        bad = tmp_path / f"{name}.json"
        bad.write_bytes(rfc8785.dumps(doc))
        report, _ = verify(BundleSource.load(bad), cvm, trust_simulated=True, state_dir=tmp_path / name)
        quote = next(c for c in report.checks if c.name == "controller_quote")
        assert not report.ok and not quote.ok, name
    assert honest == json.loads(path.read_bytes())
