"""AMD SEV-SNP: real reports per provenance, every negative, the simulated chain."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from attestation_helpers import SIM_NOW, at, hexvec, vec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from duet.attestation.errors import (
    CertificateExpired,
    CertificateRevoked,
    ChainInvalid,
    ParseError,
    SignatureInvalid,
    TcbError,
    UnsupportedVersion,
    UntrustedRoot,
)
from duet.attestation.simulated import SimulatedSnp, simulated_snp_report_from_dir
from duet.attestation.simulated._store import load_rsa_key
from duet.attestation.snp.abi import TcbVersion, parse_report
from duet.attestation.snp.certs import amd_roots, check_pss_sha384, load_cert
from duet.attestation.snp.verify import verify_snp_report

NOW = at("2025-01-01T00:00:00")
GSG = "snp/go-sev-guest/"


def gsg() -> tuple[bytes, bytes, bytes]:
    return vec(GSG + "attestation.bin"), vec(GSG + "vcek.testcer"), vec(GSG + "milan.testcer")


def test_go_sev_guest_report() -> None:
    rep, vcek, chain = gsg()
    r = verify_snp_report(rep, vcek_der=vcek, ask_pem=chain, now=NOW)
    assert r.product_name == "Milan-B0" and not r.simulated
    assert r.chip_id.startswith("3ac3fe21") and r.chip_id.endswith("8b006b5d")
    assert r.reported_tcb == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert r.reported_tcb_raw == "0200000000000544"
    assert (r.policy, r.vmpl, r.platform_info, r.current_version) == (0xB0000, 0, 1, "1.49.3")
    assert r.measurement == (
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert r.report_data == bytes([1, 2, 3, 4, 5]).ljust(64, b"\0")
    assert r.host_data == "00" * 32


def test_go_sev_guest_with_embedded_chain() -> None:
    rep, vcek, _ = gsg()
    assert verify_snp_report(rep, vcek_der=vcek, now=NOW).product == "Milan"


def test_virtee_report() -> None:
    r = verify_snp_report(
        hexvec("snp/virtee-sev/report_milan.hex"),
        vcek_der=vec("snp/virtee-sev/vcek_milan.der"),
        ask_pem=vec("snp/virtee-sev/cert_chain_milan"),
        now=NOW,
    )
    assert r.reported_tcb_raw == "0300000000000873"
    assert (r.policy, r.current_version) == (0x30000, "1.52.4")
    assert r.measurement.startswith("7a1e5c266c0108db") and r.chip_id.startswith("d49554ec")
    assert r.report_data.hex().startswith("d447b55d")


def test_trustee_report() -> None:
    r = verify_snp_report(
        vec("snp/trustee/test-report.bin"), vcek_der=vec("snp/trustee/test-vcek.der"), now=NOW
    )
    assert r.reported_tcb_raw == "0300000000000873"


@pytest.mark.parametrize("bad", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_trustee_invalid_vceks(bad: str) -> None:
    with pytest.raises(ChainInvalid):
        verify_snp_report(
            vec("snp/trustee/test-report.bin"), vcek_der=vec("snp/trustee/" + bad), now=NOW
        )


def test_amd_roots_self_signed_and_pss() -> None:
    roots = amd_roots()
    assert set(roots) == {"Milan", "Genoa", "Turin"}
    for ark, ask in roots.values():
        for cert in (ark, ask):
            check_pss_sha384(cert.public_bytes(serialization.Encoding.DER), "cert")


def test_vcek_serial_zero_verifies_quietly() -> None:
    rep, vcek, chain = gsg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_cert(vcek, "VCEK")
        assert verify_snp_report(rep, vcek_der=vcek, ask_pem=chain, now=NOW).product == "Milan"


# -- negatives ---------------------------------------------------------------------------


def flip(data: bytes, off: int) -> bytes:
    b = bytearray(data)
    b[off] ^= 1
    return bytes(b)


def test_flipped_body_byte() -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(SignatureInvalid):
        verify_snp_report(flip(rep, 0x90), vcek_der=vcek, now=NOW)


def test_flipped_signature_byte() -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(SignatureInvalid):
        verify_snp_report(flip(rep, 0x2A0), vcek_der=vcek, now=NOW)


def test_vcek_of_another_chip() -> None:
    rep, _, _ = gsg()
    with pytest.raises(SignatureInvalid):
        verify_snp_report(rep, vcek_der=vec("snp/trustee/test-vcek.der"), now=NOW)


def test_wrong_chain() -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(ChainInvalid):
        verify_snp_report(rep, vcek_der=vcek, ask_pem=vec("snp/amd-roots/genoa_ask.pem"), now=NOW)


def test_foreign_ark_is_untrusted(sim_snp: SimulatedSnp) -> None:
    rep = sim_snp.report(b"x", measurement=bytes(48))
    with pytest.raises(UntrustedRoot):
        verify_snp_report(
            rep, vcek_der=sim_snp.vcek_der, ask_pem=sim_snp.cert_chain_pem, now=SIM_NOW
        )
    with pytest.raises(UntrustedRoot):
        verify_snp_report(rep, vcek_der=sim_snp.vcek_der, now=SIM_NOW)


def test_expired_vcek() -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(CertificateExpired):
        verify_snp_report(rep, vcek_der=vcek, now=at("2030-01-01"))


def test_not_yet_valid_vcek() -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(CertificateExpired):
        verify_snp_report(rep, vcek_der=vcek, now=at("2022-01-01"))


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unknown_report_version(version: int) -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(UnsupportedVersion):
        verify_snp_report(version.to_bytes(4, "little") + rep[4:], vcek_der=vcek, now=NOW)


@pytest.mark.parametrize("n", [0, 3, 100, 1183])
def test_truncated_report(n: int) -> None:
    rep, vcek, _ = gsg()
    with pytest.raises(ParseError):
        verify_snp_report(rep[:n], vcek_der=vcek, now=NOW)


def test_other_kind_of_file() -> None:
    _, vcek, _ = gsg()
    with pytest.raises(ParseError):
        verify_snp_report(vec("sgx/dcap-qvl/sgx_quote"), vcek_der=vcek, now=NOW)


def test_garbage_vcek() -> None:
    rep, _, _ = gsg()
    with pytest.raises(ParseError):
        verify_snp_report(rep, vcek_der=b"not a cert", now=NOW)


# -- CRLs --------------------------------------------------------------------------------


def _crl(sim: SimulatedSnp, revoked: list[int], *, next_update_days: int = 30) -> bytes:
    ark = x509.load_pem_x509_certificate(sim.ark_pem)
    key = load_rsa_key(sim._state["ark_key"])
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(SIM_NOW - timedelta(days=1))
        .next_update(SIM_NOW + timedelta(days=next_update_days))
    )
    for s in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(SIM_NOW).build()
        )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return b.sign(key, hashes.SHA384(), rsa_padding=pss).public_bytes(serialization.Encoding.DER)


def _sim_verify(sim: SimulatedSnp, rep: bytes, **kw: object) -> object:
    return verify_snp_report(
        rep,
        vcek_der=sim.vcek_der,
        ask_pem=sim.ask_pem,
        ark_pem=sim.ark_pem,
        trusted_arks=[sim.ark_pem],
        now=kw.pop("now", SIM_NOW),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_crl_clean(sim_snp: SimulatedSnp) -> None:
    rep = sim_snp.report(b"x", measurement=bytes(48))
    assert _sim_verify(sim_snp, rep, crl_der=_crl(sim_snp, [12345]))


def test_crl_revokes_ask(sim_snp: SimulatedSnp) -> None:
    ask = x509.load_pem_x509_certificate(sim_snp.ask_pem)
    rep = sim_snp.report(b"x", measurement=bytes(48))
    with pytest.raises(CertificateRevoked):
        _sim_verify(sim_snp, rep, crl_der=_crl(sim_snp, [ask.serial_number]))


def test_crl_expired(sim_snp: SimulatedSnp) -> None:
    rep = sim_snp.report(b"x", measurement=bytes(48))
    with pytest.raises(CertificateExpired):
        _sim_verify(sim_snp, rep, crl_der=_crl(sim_snp, [], next_update_days=-1))


def test_crl_from_another_issuer(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    other = SimulatedSnp.load_or_create(tmp_path)
    rep = sim_snp.report(b"x", measurement=bytes(48))
    with pytest.raises(ChainInvalid):
        _sim_verify(sim_snp, rep, crl_der=_crl(other, []))


# -- simulated generator -----------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 5])
def test_simulated_round_trip(sim_snp: SimulatedSnp, version: int) -> None:
    rep = sim_snp.report(
        b"nonce", measurement=b"\x07" * 48, host_data=b"\x09" * 32, policy=0x30000, version=version
    )
    assert len(rep) == 0x4A0
    r = _sim_verify(sim_snp, rep)
    assert r.simulated and r.version == version  # type: ignore[attr-defined]
    assert r.measurement == "07" * 48 and r.host_data == "09" * 32  # type: ignore[attr-defined]
    assert r.report_data == b"nonce".ljust(64, b"\0")  # type: ignore[attr-defined]


def test_simulated_tcb_mismatch(sim_snp: SimulatedSnp) -> None:
    t = sim_snp.tcb
    higher = TcbVersion.build(
        bootloader=t.bootloader, tee=t.tee, snp=t.snp + 1, microcode=t.microcode
    )
    rep = sim_snp.report(b"x", measurement=bytes(48), reported_tcb=higher)
    with pytest.raises(TcbError, match="snp"):
        _sim_verify(sim_snp, rep)


def test_guest_bundle(sim_snp: SimulatedSnp, tmp_path: Path) -> None:
    path = sim_snp.write_guest_bundle(tmp_path)
    assert "ark_key" not in path.read_text() and "ask_key" not in path.read_text()
    rep = simulated_snp_report_from_dir(tmp_path, b"hi", measurement=b"\x01" * 48)
    assert _sim_verify(sim_snp, rep).report_data.startswith(b"hi")  # type: ignore[attr-defined]


def test_report_from_dir_without_bundle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        simulated_snp_report_from_dir(tmp_path, b"", measurement=bytes(48))


def test_parse_turin_layout_forced() -> None:
    rep, _, _ = gsg()
    r = parse_report(rep, turin=True)
    assert r.reported_tcb.fmc == 0x02 and r.turin_layout
