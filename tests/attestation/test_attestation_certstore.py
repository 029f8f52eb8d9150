"""Certificates by content: every file in --certs read, classified, and the chain built
from the endorsement key the report names (VCEK or VLEK), whatever the files are called."""

from __future__ import annotations

from pathlib import Path

import pytest
from attestation_helpers import SIM_NOW, VECTORS, at, hexvec, vec
from typer.testing import CliRunner

from duet.attestation.certstore import CertStore, classify
from duet.attestation.errors import (
    ChainInvalid,
    MissingCertificate,
    ProductMismatch,
    SignatureInvalid,
)
from duet.attestation.simulated import SimulatedSnp
from duet.attestation.snp.certs import load_pem_chain
from duet.attestation.snp.verify import verify_snp_report, verify_snp_report_with_certs
from duet.cli.attestation_cmd import app

NOW = at("2025-01-01T00:00:00")
GSG = "snp/go-sev-guest/"
ROOTS = "snp/amd-roots/"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["verify", *args])
    return res.exit_code, res.output


def _write(d: Path, files: dict[str, bytes]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


# -- classification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "roles"),
    [
        (GSG + "vcek.testcer", [("vcek", "Milan")]),
        (ROOTS + "ask_ark_milan.pem", [("ask", "Milan"), ("ark", "Milan")]),
        (ROOTS + "ask_ark_genoa.pem", [("ask", "Genoa"), ("ark", "Genoa")]),
        (ROOTS + "turin_ark.pem", [("ark", "Turin")]),
        ("sgx/intel-root/IntelSGXRootCA.der", [("sgx-root", None)]),
        ("azure/az-snp-vtpm/vcek.pem", [("vcek", "Milan"), ("ask", "Milan"), ("ark", "Milan")]),
    ],
)
def test_classify_real_certificates(rel: str, roles: list[tuple[str, str | None]]) -> None:
    store = CertStore.from_blobs([(Path(rel).name, vec(rel))])
    assert [(c.role, c.product) for c in store.certs] == roles


def test_classify_pck_chain_from_a_real_quote() -> None:
    from duet.attestation.dcap.abi import parse_sgx_quote

    pem = parse_sgx_quote(vec("sgx/dcap-qvl/sgx_quote")).pck_chain_pem
    assert pem is not None
    roles = [classify(c)[0] for c in load_pem_chain(pem.encode() if isinstance(pem, str) else pem,
                                                     "pck chain")]
    assert roles == ["pck", "pck-ca", "sgx-root"]


def test_directory_skips_non_certificates_and_reads_bundles(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "c",
        {
            "7f3a9c": vec(GSG + "vcek.testcer"),
            "notes.txt": b"hello",
            "x.bundle": vec(ROOTS + "ask_ark_milan.pem"),
        },
    )
    store = CertStore.from_dir(d)
    assert [(c.source, c.role) for c in store.certs] == [
        ("7f3a9c", "vcek"),
        ("x.bundle#1", "ask"),
        ("x.bundle#2", "ark"),
    ]
    assert store.skipped == [("notes.txt", "not a certificate")]


# -- real VCEK vectors, judged as before, from arbitrary names -----------------------------


def test_real_vcek_report_from_arbitrary_names(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "c",
        {"a1.crt": vec(GSG + "vcek.testcer"), "zz": vec(GSG + "milan.testcer")},
    )
    r = verify_snp_report_with_certs(vec(GSG + "attestation.bin"), CertStore.from_dir(d), now=NOW)
    old = verify_snp_report(
        vec(GSG + "attestation.bin"),
        vcek_der=vec(GSG + "vcek.testcer"),
        ask_pem=vec(GSG + "milan.testcer"),
        now=NOW,
    )
    assert r == old


def test_the_right_vcek_is_picked_among_several(tmp_path: Path) -> None:
    """Three VCEKs in the directory: the one whose key signs the report is used."""
    d = _write(
        tmp_path / "c",
        {
            "a": vec("snp/trustee/test-vcek-invalid-legacy.der"),
            "b": vec("snp/virtee-sev/vcek_milan.der"),
            "c": vec("snp/trustee/test-vcek-invalid-new.der"),
        },
    )
    r = verify_snp_report_with_certs(
        hexvec("snp/virtee-sev/report_milan.hex"), CertStore.from_dir(d), now=NOW
    )
    assert r.chip_id.startswith("d49554ec")


def test_invalid_vcek_still_fails_naming_the_file(tmp_path: Path) -> None:
    d = _write(tmp_path / "c", {"mystery.der": vec("snp/trustee/test-vcek-invalid-new.der")})
    with pytest.raises((ChainInvalid, SignatureInvalid)) as ei:
        verify_snp_report_with_certs(
            vec("snp/trustee/test-report.bin"), CertStore.from_dir(d), now=NOW
        )
    assert "mystery.der" in str(ei.value) and "CN=SEV-VCEK" in str(ei.value)


def test_wrong_product_chain_fails_and_names_the_mismatch(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "c",
        {"vcek": vec(GSG + "vcek.testcer"), "chain.pem": vec(ROOTS + "ask_ark_genoa.pem")},
    )
    with pytest.raises(ProductMismatch) as ei:
        verify_snp_report_with_certs(vec(GSG + "attestation.bin"), CertStore.from_dir(d), now=NOW)
    msg = str(ei.value)
    assert "Milan" in msg and "Genoa" in msg and "chain.pem#1" in msg and "vcek" in msg
    code, out = run(str(VECTORS / GSG / "attestation.bin"), "--certs", str(d), "--now", "2025-01-01")
    assert code == 3 and "product_mismatch" in out and "Genoa" in out


def test_missing_vcek_lists_what_was_found(tmp_path: Path) -> None:
    d = _write(tmp_path / "c", {"chain": vec(ROOTS + "ask_ark_milan.pem")})
    code, out = run(str(VECTORS / GSG / "attestation.bin"), "--certs", str(d), "--now", "2025-01-01")
    assert code == 4 and "certificate_missing" in out
    assert "signed by a VCEK" in out and "chain#1: ASK Milan (CN=SEV-Milan)" in out


# -- VLEK (simulated: no public VLEK vector exists) ----------------------------------------


@pytest.fixture()
def vlek_dir(sim_snp: SimulatedSnp, tmp_path: Path) -> tuple[Path, Path]:
    report = tmp_path / "report.bin"
    report.write_bytes(sim_snp.report(b"vlek", measurement=bytes(48), signing_key="vlek"))
    assert sim_snp.vlek_der is not None
    d = _write(
        tmp_path / "certs",
        {
            # names as nothing in duet expects them
            "0001.cer": sim_snp.vlek_der,
            "kds-download": sim_snp.vlek_cert_chain_pem,  # ASVK + ARK, KDS-style bundle
            "extra-vcek.der": sim_snp.vcek_der,  # a VCEK too: must not be picked
        },
    )
    return report, d


def test_vlek_report_verifies_from_arbitrary_names(
    sim_snp: SimulatedSnp, vlek_dir: tuple[Path, Path]
) -> None:
    report, d = vlek_dir
    r = verify_snp_report_with_certs(
        report.read_bytes(), CertStore.from_dir(d), now=SIM_NOW, trusted_arks=[sim_snp.ark_pem]
    )
    assert r.signing_key == "vlek" and r.simulated
    code, out = run(str(report), "--kind", "simulated-snp", "--certs", str(d), "--now", "2026-06-01")
    assert code == 0, out
    assert "signing_key: vlek" in out and "SIMULATED" in out


def test_vlek_without_asvk_lists_what_is_missing(
    sim_snp: SimulatedSnp, vlek_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    report, _ = vlek_dir
    assert sim_snp.vlek_der is not None
    d = _write(tmp_path / "only", {"k": sim_snp.vlek_der})
    with pytest.raises(MissingCertificate) as ei:
        verify_snp_report_with_certs(
            report.read_bytes(), CertStore.from_dir(d), now=SIM_NOW, trusted_arks=[sim_snp.ark_pem]
        )
    assert "ASVK" in str(ei.value) and "k: VLEK Milan" in str(ei.value)


def test_vlek_report_is_not_verified_by_the_vcek(
    sim_snp: SimulatedSnp, vlek_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGNING_KEY=1 names a VLEK: a directory with only the VCEK chain must not do."""
    report, _ = vlek_dir
    d = _write(tmp_path / "vcek-only", {"v": sim_snp.vcek_der, "c": sim_snp.cert_chain_pem})
    with pytest.raises(MissingCertificate) as ei:
        verify_snp_report_with_certs(
            report.read_bytes(), CertStore.from_dir(d), now=SIM_NOW, trusted_arks=[sim_snp.ark_pem]
        )
    assert "signed by a VLEK" in str(ei.value) and "v: VCEK" in str(ei.value)


def test_vlek_with_the_vcek_chain_names_the_missing_asvk(
    sim_snp: SimulatedSnp, vlek_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    report, _ = vlek_dir
    assert sim_snp.vlek_der is not None
    d = _write(tmp_path / "mixed", {"vlek": sim_snp.vlek_der, "chain": sim_snp.cert_chain_pem})
    with pytest.raises(MissingCertificate) as ei:
        verify_snp_report_with_certs(
            report.read_bytes(), CertStore.from_dir(d), now=SIM_NOW, trusted_arks=[sim_snp.ark_pem]
        )
    msg = str(ei.value)
    assert "needs its Milan ASVK (CN=SEV-VLEK-Milan)" in msg and "chain#1: ASK Milan" in msg


def test_an_ask_that_did_not_issue_the_vcek_is_named(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    """AMD's Milan VCEK beside the *development* Milan chain: same product, wrong issuer.
    Never silently replaced by the embedded ASK."""
    d = _write(tmp_path / "c", {"v": vec(GSG + "vcek.testcer"), "dev": sim_snp.cert_chain_pem})
    with pytest.raises(ChainInvalid) as ei:
        verify_snp_report_with_certs(vec(GSG + "attestation.bin"), CertStore.from_dir(d), now=NOW)
    assert not isinstance(ei.value, ProductMismatch)
    assert "no ASK found issued it: dev#1: ASK Milan (CN=SEV-Milan)" in str(ei.value)


def test_a_vcek_beside_only_its_ark_uses_the_embedded_ask(tmp_path: Path) -> None:
    d = _write(tmp_path / "c", {"v": vec(GSG + "vcek.testcer"), "root": vec(ROOTS + "milan_ark.pem")})
    r = verify_snp_report_with_certs(vec(GSG + "attestation.bin"), CertStore.from_dir(d), now=NOW)
    assert r.product == "Milan" and not r.simulated


# -- KDS cert_chain bundle under another name; Azure evidence ------------------------------


def test_kds_cert_chain_under_another_name(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "c",
        {
            "Milan.pem": vec("snp/virtee-sev/cert_chain_milan"),
            "vcek-d49554ec.der": vec("snp/virtee-sev/vcek_milan.der"),
        },
    )
    f = tmp_path / "r.hex"
    f.write_bytes(vec("snp/virtee-sev/report_milan.hex"))
    code, out = run(str(f), "--certs", str(d), "--now", "2025-01-01", "--json")
    assert code == 0, out
    assert '"reported_tcb_raw": "0300000000000873"' in out


def test_azure_evidence_with_certs_dir_by_content(tmp_path: Path) -> None:
    """The Genoa Azure vector: its VCEK from the evidence, the Genoa chain from a file of
    any name; a Milan chain instead is named as the mismatch."""
    ev = VECTORS / "trustee-extra/az-snp-vtpm_evidence-genoa.json"
    d = _write(tmp_path / "g", {"whatever": vec(ROOTS + "ask_ark_genoa.pem")})
    code, out = run(str(ev), "--certs", str(d), "--now", "2025-06-01")
    assert code == 0, out
    d2 = _write(tmp_path / "m", {"whatever": vec(ROOTS + "ask_ark_milan.pem")})
    code, out = run(str(ev), "--certs", str(d2), "--now", "2025-06-01")
    assert code == 3 and "product_mismatch" in out and "Milan" in out


def test_crl_found_by_content_is_checked(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    """A CRL under any name, issued by the product's ARK, is checked: revoking the ASK
    fails the report; a clean one sets collateral_issued (for max_collateral_age)."""
    from cryptography import x509 as cx509
    from test_attestation_snp import _crl

    ask = cx509.load_pem_x509_certificate(sim_snp.ask_pem)
    rep = tmp_path / "r.bin"
    rep.write_bytes(sim_snp.report(b"x", measurement=bytes(48)))
    d = _write(tmp_path / "c", {"v": sim_snp.vcek_der, "chain": sim_snp.cert_chain_pem,
                                "kds.bin": _crl(sim_snp, [12345])})
    base = [str(rep), "--kind", "simulated-snp", "--certs", str(d), "--now", "2026-06-01", "--json"]
    code, out = run(*base)
    assert code == 0, out
    assert '"collateral_issued": "2026-05-31T00:00:00Z"' in out
    (d / "kds.bin").write_bytes(_crl(sim_snp, [ask.serial_number]))
    code, out = run(*base)
    assert code == 3 and "certificate_revoked" in out
