"""SGX / TDX DCAP quotes: every vector as its provenance says, negatives, the simulated SGX."""

from __future__ import annotations

import hashlib
import json

import pytest
from attestation_helpers import SIM_NOW, at, hexvec, vec

from duet.attestation import (
    AttestationError,
    CertificateExpired,
    CertificateRevoked,
    CollateralError,
    DebugEnclave,
    ParseError,
    SignatureInvalid,
    SimulatedSgx,
    TcbError,
    UnsupportedVersion,
    UntrustedRoot,
    WrongKind,
    prepare_collateral,
    verify_sgx_quote,
    verify_tdx_quote,
)
from duet.attestation.dcap.abi import parse_quote
from duet.attestation.dcap.verify import converge_tcb_status

SGX_NOW = at("2025-07-01T00:00:00")
TDX_NOW = at("2025-07-01T00:00:00")


def sgx_real() -> tuple[bytes, bytes]:
    return vec("sgx/dcap-qvl/sgx_quote"), vec("sgx/dcap-qvl/sgx_quote_collateral.json")


# -- real vectors ---------------------------------------------------------------------


def test_real_sgx_quote() -> None:
    q, c = sgx_real()
    r = verify_sgx_quote(q, c, now=SGX_NOW)
    assert r.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert r.advisory_ids == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert r.mrenclave == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert r.mrsigner == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert r.report_data == b"Hello, world!".ljust(64, b"\0")
    assert r.attributes == "0500000000000000e700000000000000"
    assert not r.debug and not r.simulated
    assert r.fmspc == "00a067110000"


@pytest.mark.parametrize(
    "now", ["2025-06-19T10:56:11", "2025-07-19T10:01:18"], ids=["window-start", "window-end"]
)
def test_real_sgx_window_edges(now: str) -> None:
    q, c = sgx_real()
    assert verify_sgx_quote(q, c, now=at(now)).tcb_status == "ConfigurationAndSWHardeningNeeded"


@pytest.mark.parametrize("now", ["2025-06-19T10:56:10", "2025-07-19T10:01:19", "2026-07-01"])
def test_real_sgx_outside_window_is_expired(now: str) -> None:
    q, c = sgx_real()
    with pytest.raises(CertificateExpired):
        verify_sgx_quote(q, c, now=at(now))


def test_real_tdx_v4_up_to_date() -> None:
    r = verify_tdx_quote(
        vec("tdx/dcap-qvl/tdx_quote"), vec("tdx/dcap-qvl/tdx_quote_collateral.json"), now=TDX_NOW
    )
    assert r.tcb_status == "UpToDate" and r.advisory_ids == []
    assert r.mrtd.startswith("91eb2b44d141d4ec") and r.mrtd.endswith("873118b7")
    assert r.rtmr3 == "00" * 48
    assert r.report_data.hex().startswith("9a9d48e7") and r.report_data.hex().endswith("2b523f20")
    assert r.tee_tcb_svn.startswith("06010300")
    assert r.td_attributes == "0000001000000000"
    assert not r.debug and r.quote_version == 4 and not r.simulated


def test_real_tdx_near_vector() -> None:
    r = verify_tdx_quote(
        hexvec("tdx/dcap-qvl-near/quote_hex.txt"),
        vec("tdx/dcap-qvl-near/quote_collateral.json"),
        now=at("2025-09-15T00:00:00"),
    )
    assert r.tcb_status == "UpToDate" and r.qe_tcb_status == "UpToDate"
    assert r.mrtd.startswith("f06dfda6dce1cf90") and r.fmspc == "20a06f000000"
    assert r.report_data.hex() == (
        "0001d579ba6e734a1046feb6112f852df5f4f1e44a4e7ce1755ce3b07bd6aaab04e89ca01fdf4956"
        "d2f609c2709731cb813a" + "00" * 14
    )


@pytest.mark.parametrize(
    ("quote", "collateral", "now"),
    [
        (
            "tdx/dcap-qvl/tdx_quote_outdated",
            "tdx/dcap-qvl/tdx_quote_outdated_collateral.json",
            "2026-03-01",
        ),
        (
            "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
            "tdx/go-tdx-guest/collateral_SPR_E4.dcap-qvl.json",
            "2023-07-01",
        ),
        ("hex:tdx/dcap-qvl/tdx-quote.hex", "tdx/dcap-qvl/tdx_quote_collateral.json", "2025-07-01"),
        (
            "hex:tdx/dcap-qvl/quote-from-tappd.hex",
            "tdx/dcap-qvl/tdx_quote_collateral.json",
            "2025-07-01",
        ),
    ],
)
def test_real_tdx_no_matching_tcb_level(quote: str, collateral: str, now: str) -> None:
    q = hexvec(quote[4:]) if quote.startswith("hex:") else vec(quote)
    with pytest.raises(TcbError, match="No matching TCB level"):
        verify_tdx_quote(q, vec(collateral), now=at(now))


def test_tdx_v5_parses() -> None:
    q = parse_quote(vec("tdx/dcap-qvl/tdx_quote_outdated"))
    assert q.header.version == 5 and q.body_type == 3 and q.is_tdx


def test_tdx_hex_quotes_parse() -> None:
    assert parse_quote(hexvec("tdx/dcap-qvl/tdx-quote.hex")).body.mr_td.hex().startswith("7ba9e262")
    q = parse_quote(hexvec("tdx/dcap-qvl/quote-from-tappd.hex"))
    assert q.body.mr_td.hex().startswith("c68518a0")


def test_tdx_spr_outside_window() -> None:
    with pytest.raises(CertificateExpired):
        verify_tdx_quote(
            vec("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"),
            vec("tdx/go-tdx-guest/collateral_SPR_E4.dcap-qvl.json"),
            now=at("2023-08-01"),
        )


# -- simulated vectors from the shared set -------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "adv"),
    [("uptodate", "UpToDate", []), ("outofdate", "OutOfDate", ["INTEL-SA-00000"])],
)
def test_shared_simulated_vectors(name: str, status: str, adv: list[str]) -> None:
    q = vec(f"sgx/simulated/sim_sgx_{name}_quote.dat")
    c = vec(f"sgx/simulated/sim_sgx_{name}_collateral.json")
    root = vec(f"sgx/simulated/sim_sgx_{name}_root_ca.der")
    r = verify_sgx_quote(q, c, now=SIM_NOW, root_ca_der=root)
    assert (r.tcb_status, r.advisory_ids, r.simulated) == (status, adv, True)
    assert r.mrenclave == hashlib.sha256(b"duet-controller-enclave").hexdigest()
    assert r.report_data == hashlib.sha512(b"duet tls key").digest()
    with pytest.raises(UntrustedRoot):
        verify_sgx_quote(q, c, now=SIM_NOW)  # not without the root passed explicitly


def test_shared_simulated_debug_is_refused() -> None:
    with pytest.raises(DebugEnclave):
        verify_sgx_quote(
            vec("sgx/simulated/sim_sgx_debug_quote.dat"),
            vec("sgx/simulated/sim_sgx_debug_collateral.json"),
            now=SIM_NOW,
            root_ca_der=vec("sgx/simulated/sim_sgx_debug_root_ca.der"),
        )


# -- negatives -------------------------------------------------------------------------


def test_flipped_body_byte() -> None:
    q, c = sgx_real()
    b = bytearray(q)
    b[100] ^= 1
    with pytest.raises(SignatureInvalid, match="ISV enclave report signature"):
        verify_sgx_quote(bytes(b), c, now=SGX_NOW)


def test_flipped_signature_byte() -> None:
    q, c = sgx_real()
    b = bytearray(q)
    b[436 + 4 + 10] ^= 1  # inside the ISV report signature
    with pytest.raises(SignatureInvalid):
        verify_sgx_quote(bytes(b), c, now=SGX_NOW)


def test_truncated_quote() -> None:
    q, c = sgx_real()
    with pytest.raises(ParseError):
        verify_sgx_quote(q[:1000], c, now=SGX_NOW)


def test_unknown_quote_version() -> None:
    q, c = sgx_real()
    with pytest.raises(UnsupportedVersion):
        verify_sgx_quote(b"\x07\x00" + q[2:], c, now=SGX_NOW)


def test_tdx_quote_given_as_sgx() -> None:
    _, c = sgx_real()
    with pytest.raises(WrongKind):
        verify_sgx_quote(vec("tdx/dcap-qvl/tdx_quote"), c, now=SGX_NOW)


def test_snp_report_given_as_sgx() -> None:
    _, c = sgx_real()
    with pytest.raises(AttestationError):
        verify_sgx_quote(vec("snp/go-sev-guest/attestation.bin"), c, now=SGX_NOW)


def test_collateral_for_another_platform() -> None:
    with pytest.raises(CollateralError, match="FMSPC"):
        verify_tdx_quote(
            vec("azure/az-tdx-vtpm/td-quote.bin"),
            vec("tdx/dcap-qvl/tdx_quote_collateral.json"),
            now=TDX_NOW,
        )


def test_tdx_collateral_for_sgx_quote() -> None:
    q, _ = sgx_real()
    with pytest.raises(CollateralError):
        verify_sgx_quote(q, vec("tdx/dcap-qvl/tdx_quote_collateral.json"), now=SGX_NOW)


@pytest.mark.parametrize("bad", [b"not json", b"[]", b'{"tcb_info": "x"}'])
def test_malformed_collateral(bad: bytes) -> None:
    q, _ = sgx_real()
    with pytest.raises(CollateralError):
        verify_sgx_quote(q, bad, now=SGX_NOW)


def test_wrong_root_for_real_quote(sim_sgx: SimulatedSgx) -> None:
    q, c = sgx_real()
    with pytest.raises(UntrustedRoot):
        verify_sgx_quote(q, c, now=SGX_NOW, root_ca_der=sim_sgx.root_ca_der)


def test_naive_now_is_refused() -> None:
    q, c = sgx_real()
    with pytest.raises(ValueError):
        verify_sgx_quote(q, c, now=SGX_NOW.replace(tzinfo=None))


# -- TCB status convergence (Intel QVL rule added on top of dcap-qvl) -----------------


@pytest.mark.parametrize(
    ("platform", "qe", "want"),
    [
        ("UpToDate", "UpToDate", "UpToDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "UpToDate", "OutOfDate"),
        ("UpToDate", "Revoked", "Revoked"),
    ],
)
def test_converge(platform: str, qe: str, want: str) -> None:
    assert converge_tcb_status(platform, qe) == want


# -- the simulated SGX generator -------------------------------------------------------


def test_simulated_sgx_round_trip(sim_sgx: SimulatedSgx) -> None:
    rd = hashlib.sha512(b"nonce").digest()
    q = sim_sgx.quote(rd, mrenclave=b"\x11" * 32, mrsigner=b"\x22" * 32, isv_prod_id=3, isv_svn=7)
    r = verify_sgx_quote(q, sim_sgx.collateral(), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)
    assert r.simulated and r.tcb_status == "UpToDate"
    assert (r.mrenclave, r.mrsigner) == ("11" * 32, "22" * 32)
    assert (r.isv_prod_id, r.isv_svn, r.report_data) == (3, 7, rd)


def test_simulated_sgx_json_collateral_and_reload(sim_sgx: SimulatedSgx) -> None:
    again = SimulatedSgx.load_or_create(sim_sgx.directory)
    assert again.root_ca_der == sim_sgx.root_ca_der
    assert sim_sgx.root_ca_path.read_bytes() == sim_sgx.root_ca_der
    q = again.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    coll = json.dumps(sim_sgx.collateral())
    assert verify_sgx_quote(q, coll, now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der).simulated


def test_simulated_sgx_needs_explicit_root(sim_sgx: SimulatedSgx) -> None:
    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    with pytest.raises(UntrustedRoot):
        verify_sgx_quote(q, sim_sgx.collateral(), now=SIM_NOW)


def test_simulated_sgx_debug_refused(sim_sgx: SimulatedSgx) -> None:
    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32), debug=True)
    with pytest.raises(DebugEnclave):
        verify_sgx_quote(q, sim_sgx.collateral(), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)


def test_simulated_sgx_revoked_pck(sim_sgx: SimulatedSgx) -> None:
    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    with pytest.raises(CertificateRevoked):
        verify_sgx_quote(
            q, sim_sgx.collateral(revoke_pck=True), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der
        )


@pytest.mark.parametrize("now", ["2025-12-31T23:59:59", "2036-01-01T00:00:01"])
def test_simulated_sgx_validity(sim_sgx: SimulatedSgx, now: str) -> None:
    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    with pytest.raises(CertificateExpired):
        verify_sgx_quote(q, sim_sgx.collateral(), now=at(now), root_ca_der=sim_sgx.root_ca_der)


def test_prepared_collateral_is_reusable(sim_sgx: SimulatedSgx) -> None:
    coll = prepare_collateral(sim_sgx.collateral())
    for i in range(3):
        q = sim_sgx.quote(bytes([i]), mrenclave=bytes(32), mrsigner=bytes(32))
        assert verify_sgx_quote(q, coll, now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der).simulated


def test_simulated_sgx_rejects_bad_arguments(sim_sgx: SimulatedSgx) -> None:
    with pytest.raises(ValueError):
        sim_sgx.quote(bytes(65), mrenclave=bytes(32), mrsigner=bytes(32))
    with pytest.raises(ValueError):
        sim_sgx.quote(b"", mrenclave=bytes(31), mrsigner=bytes(32))


def _self_signed_ca_pem() -> str:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    start = datetime(2018, 1, 1, tzinfo=UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + timedelta(days=365 * 30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.PEM).decode()


@pytest.mark.parametrize("chain", ["pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"])
def test_a_collateral_chain_whose_root_was_changed_is_refused(chain: str) -> None:
    """dcap-qvl anchors each chain at the root it is given and never reads the root a chain
    carries: a changed root certificate in the evidence must still be refused (attack: the
    real Intel root at the end of one issuer chain replaced by another self-signed CA with
    the same name)."""
    q, c = sgx_real()
    doc = json.loads(c)
    verify_sgx_quote(q, json.dumps(doc), now=SGX_NOW)  # the real vector passes as it is
    end = "-----END CERTIFICATE-----"
    pems = [p for p in doc[chain].split(end) if "BEGIN" in p]
    assert len(pems) >= 2
    swapped = dict(doc, **{chain: "".join(p + end for p in pems[:-1]) + "\n" + _self_signed_ca_pem()})
    with pytest.raises(UntrustedRoot):
        verify_sgx_quote(q, json.dumps(swapped), now=SGX_NOW)


def _reissued_by_another_key(pem: str) -> str:
    """The certificate `pem` re-issued by a key that is not its issuer's: the same subject,
    issuer name, public key, validity and extensions, a well-formed X.509 certificate in
    every respect but its signature, which another (freshly made) CA key made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(pem.encode())
    rogue = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
         .public_key(cert.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for ext in cert.extensions:
        b = b.add_extension(ext.value, critical=ext.critical)
    return b.sign(rogue, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


@pytest.mark.parametrize("chain", ["pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain"])
def test_a_collateral_chain_whose_intermediate_was_swapped_is_refused(sim_sgx: SimulatedSgx, chain: str) -> None:
    """Attack: the certificate below the root in an issuer chain is replaced by another one,
    properly formed, with the same name and public key (so the CRL, TCB Info and QE
    identity signatures it vouches for still verify), but issued by another key than the
    root's. Every chain still ends in the trusted root. dcap-qvl checks the TCB Info and
    QE identity chains itself, but not the PCK CRL issuer chain: that one only the
    link-by-link check (`_check_chain_roots`: each certificate issued by the next)
    refuses, and this test fails without it."""
    from duet.attestation import ChainInvalid

    q = sim_sgx.quote(b"x", mrenclave=bytes(32), mrsigner=bytes(32))
    doc = sim_sgx.collateral()
    verify_sgx_quote(q, json.dumps(doc), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)  # as issued: passes
    end = "-----END CERTIFICATE-----"
    pems = [p.strip() + "\n" + end + "\n" for p in str(doc[chain]).split(end) if "BEGIN" in p]
    assert len(pems) == 2  # intermediate, root
    swapped = dict(doc, **{chain: _reissued_by_another_key(pems[0]) + pems[1]})
    refused = ChainInvalid if chain == "pck_crl_issuer_chain" else AttestationError
    with pytest.raises(refused) as info:
        verify_sgx_quote(q, json.dumps(swapped), now=SIM_NOW, root_ca_der=sim_sgx.root_ca_der)
    if chain == "pck_crl_issuer_chain":
        assert "is not issued by the next certificate" in str(info.value)
