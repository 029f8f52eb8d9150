"""MAA tokens: the real SGX token for the signature path, synthesised SNP / TDX tokens
(signed by a JWKS this test makes) for the claims, and the MAA enclave quote."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from attestation_helpers import SIM_NOW, VECTORS, vec
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from duet.attestation.azure.maa import (
    KIND_SNP_MAA,
    KIND_TDX_MAA,
    MAA_QUOTE_EXT_OID,
    load_jwks,
    verify_maa_token,
)
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import (
    BindingError,
    ChainInvalid,
    ParseError,
    SignatureInvalid,
    TokenExpired,
    TokenNotYetValid,
    WrongKind,
)
from duet.attestation.simulated import SimulatedSgx
from duet.attestation.validate import Expectations, validate
from duet.cli.attestation_cmd import app

MAA = "azure/maa/"
TOKEN = VECTORS / MAA / "maa_sgx_token.jwt"
JWKS = VECTORS / MAA / "maa_sharedeus_certs.jwks.json"
IN_WINDOW = datetime(2023, 9, 26, 15, 0, tzinfo=UTC)  # iat 14:15:47Z, exp 22:15:47Z
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
NONCE = bytes(range(32))
MEAS = "ab" * 48
MRTD = "cd" * 48
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["verify", *args])
    return res.exit_code, res.output


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# -- the real token (signature path) -------------------------------------------------------


def test_real_sgx_token_verifies_at_fixed_now() -> None:
    r = verify_maa_token(TOKEN.read_bytes(), JWKS.read_bytes(), now=IN_WINDOW)
    assert r.kind == "sgx-maa" and r.issuer == "https://sharedeus.eus.attest.azure.net"
    assert r.mrenclave == "f56735aa42563627a832e0c7ba9911382eb68afed75830b3f97266f3e67bdc99"
    assert r.report_data is not None
    assert r.report_data[:32] == hashlib.sha256(b"This is some runtime data").digest()
    # MAA's signing certificate carries its enclave's SGX quote: parsed, reported, unverified.
    (q,) = r.signer_quotes
    assert q["verified"] is False and q["names_kid"] is True
    assert q["mrsigner"] == "74ba5fba208571cf99e1f7158e6536a05bbb6ce7807eef8f6a97f64a7af64b83"


def test_real_token_fails_after_exp_and_before_nbf() -> None:
    with pytest.raises(TokenExpired):
        verify_maa_token(TOKEN.read_bytes(), JWKS.read_bytes(), now=datetime(2023, 9, 27, tzinfo=UTC))
    with pytest.raises(TokenNotYetValid):
        verify_maa_token(TOKEN.read_bytes(), JWKS.read_bytes(), now=datetime(2023, 9, 26, tzinfo=UTC))


def test_real_token_with_a_changed_byte_fails() -> None:
    h, p, s = TOKEN.read_text().strip().split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["x-ms-sgx-svn"] = 2
    forged = f"{h}.{b64u(json.dumps(claims).encode())}.{s}"
    with pytest.raises(SignatureInvalid):
        verify_maa_token(forged, JWKS.read_bytes(), now=IN_WINDOW)
    sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    sig[10] ^= 1
    with pytest.raises(SignatureInvalid):
        verify_maa_token(f"{h}.{p}.{b64u(bytes(sig))}", JWKS.read_bytes(), now=IN_WINDOW)


def test_real_token_key_must_come_from_the_jwks() -> None:
    jwks = json.loads(JWKS.read_text())
    jwks["keys"] = [k for k in jwks["keys"] if not k["kid"].startswith("rFl9")]
    with pytest.raises(ChainInvalid, match="has no key"):
        verify_maa_token(TOKEN.read_bytes(), jwks, now=IN_WINDOW)


def test_cli_real_token(tmp_path: Path) -> None:
    base = [str(TOKEN), "--jwks", str(JWKS)]
    code, out = run(*base, "--now", "2023-09-26T15:00:00Z")  # kind detected
    assert code == 0, out
    assert "kind: sgx-maa" in out and "CAVEAT trusted party: Microsoft Azure Attestation" in out
    assert "MAA enclave quote parsed, not verified" in out
    code, out = run(*base, "--kind", "maa", "--now", "2023-09-27T00:00:00Z")
    assert code == 3 and "token_expired" in out
    bad = tmp_path / "t.jwt"
    t = bytearray(TOKEN.read_bytes().strip())
    t[-20] = ord("A") if t[-20] != ord("A") else ord("B")
    bad.write_bytes(bytes(t))
    code, out = run(str(bad), "--kind", "maa", "--jwks", str(JWKS), "--now", "2023-09-26T15:00Z")
    assert code == 3 and "signature_invalid" in out
    code, out = run(str(TOKEN), "--kind", "maa", "--now", "2023-09-26T15:00Z")
    assert code == 4 and "--jwks" in out


# -- synthesised tokens (SNP / TDX isolation) ----------------------------------------------


class FakeMaa:
    """An MAA stand-in: an RSA key, its self-signed certificate in a JWKS, RS256 tokens."""

    def __init__(self, quote_ext: bytes | None = None) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = base64.b64encode(hashlib.sha256(b"test kid").digest()).decode()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "https://test.attest.example")])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        )
        if quote_ext is not None:
            b = b.add_extension(x509.UnrecognizedExtension(MAA_QUOTE_EXT_OID, quote_ext), False)
        self.cert = b.sign(self.key, hashes.SHA256())
        from cryptography.hazmat.primitives.serialization import Encoding

        der = self.cert.public_bytes(Encoding.DER)
        self.jwks = {"keys": [{"kty": "RSA", "kid": self.kid, "x5c": [base64.b64encode(der).decode()]}]}

    def token(self, claims: dict[str, Any], *, alg: str = "RS256", kid: str | None = None) -> str:
        header = {"alg": alg, "kid": kid or self.kid, "typ": "JWT", "jku": "https://evil.example/certs"}
        signing = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64u(sig)}"


T0 = int(SIM_NOW.timestamp())


def _times() -> dict[str, int]:
    return {"iat": T0 - 60, "nbf": T0 - 60, "exp": T0 + 3600}


def snp_claims(*, debug: bool = False, user_data: str | None = None) -> dict[str, Any]:
    ud = user_data if user_data is not None else cvm_report_data(NONCE, HOST_KEY).hex()
    return {
        **_times(),
        "iss": "https://test.attest.example",
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "x-ms-sevsnpvm-launchmeasurement": MEAS,
            "x-ms-sevsnpvm-hostdata": "00" * 32,
            "x-ms-sevsnpvm-reportdata": "11" * 64,
            "x-ms-sevsnpvm-is-debuggable": debug,
            "x-ms-sevsnpvm-guestsvn": 2,
            "x-ms-sevsnpvm-vmpl": 0,
            "x-ms-sevsnpvm-bootloader-svn": 3,
            "x-ms-sevsnpvm-tee-svn": 0,
            "x-ms-sevsnpvm-snpfw-svn": 8,
            "x-ms-sevsnpvm-microcode-svn": 115,
            "x-ms-sevsnpvm-smt-allowed": True,
            "x-ms-sevsnpvm-migration-allowed": False,
            "x-ms-runtime": {"user-data": ud.upper(), "keys": []},
        },
    }


def tdx_claims() -> dict[str, Any]:
    return {
        **_times(),
        "iss": "https://test.attest.example",
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": {
            "x-ms-attestation-type": "tdxvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "tdx_mrtd": MRTD,
            "tdx_rtmr0": "00" * 48,
            "tdx_rtmr1": "01" * 48,
            "tdx_rtmr2": "02" * 48,
            "tdx_rtmr3": "03" * 48,
            "tdx_mrconfigid": "00" * 48,
            "tdx_report_data": "22" * 64,
            "tdx_td_attributes_debug": False,
            "x-ms-runtime": {"user-data": cvm_report_data(NONCE, HOST_KEY).hex()},
        },
    }


@pytest.fixture(scope="module")
def maa() -> FakeMaa:
    return FakeMaa()


def test_snp_token_claims_and_binding(maa: FakeMaa) -> None:
    rd = cvm_report_data(NONCE, HOST_KEY)
    r = verify_maa_token(
        maa.token(snp_claims()), maa.jwks, now=SIM_NOW, expected_kind=KIND_SNP_MAA, report_data=rd
    )
    assert r.kind == "azure-snp-maa" and r.tee_type == "sevsnpvm"
    assert r.measurement == MEAS and r.reported_tcb == {
        "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115
    }
    assert r.debug is False and r.compliance_status == "azure-compliant-cvm"
    ok = Expectations(measurement=MEAS, min_tcb={"snp": 8}, no_debug=True, vmpl=0)  # type: ignore[arg-type]
    assert validate(r, ok) == []
    with pytest.raises(BindingError):
        verify_maa_token(
            maa.token(snp_claims()), maa.jwks, now=SIM_NOW,
            report_data=cvm_report_data(b"another nonce", HOST_KEY),
        )
    with pytest.raises(WrongKind):
        verify_maa_token(maa.token(snp_claims()), maa.jwks, now=SIM_NOW, expected_kind=KIND_TDX_MAA)


def test_tdx_token_claims(maa: FakeMaa) -> None:
    r = verify_maa_token(maa.token(tdx_claims()), maa.jwks, now=SIM_NOW, expected_kind=KIND_TDX_MAA,
                         report_data=cvm_report_data(NONCE, HOST_KEY))
    assert r.kind == "azure-tdx-maa" and r.mrtd == MRTD and r.rtmr3 == "03" * 48
    assert validate(r, Expectations(mrtd=MRTD, rtmr1="01" * 48, no_debug=True)) == []
    assert [f.field for f in validate(r, Expectations(mrtd="00" * 48))] == ["mrtd"]


def test_synthesised_tokens_expire_and_resist_forgery(maa: FakeMaa) -> None:
    tok = maa.token(snp_claims())
    with pytest.raises(TokenExpired):
        verify_maa_token(tok, maa.jwks, now=SIM_NOW + timedelta(hours=2))
    other = FakeMaa()
    with pytest.raises(SignatureInvalid):  # same kid, another key: not MAA's signature
        verify_maa_token(other.token(snp_claims(), kid=maa.kid), maa.jwks, now=SIM_NOW)
    for alg in ("none", "HS256", "PS256"):
        with pytest.raises(SignatureInvalid, match="RS256"):
            verify_maa_token(maa.token(snp_claims(), alg=alg), maa.jwks, now=SIM_NOW)
    no_exp = snp_claims()
    del no_exp["exp"]
    with pytest.raises(ParseError, match="exp"):
        verify_maa_token(maa.token(no_exp), maa.jwks, now=SIM_NOW)
    with pytest.raises(WrongKind):
        verify_maa_token(maa.token({**_times(), "iss": "x", "x-ms-attestation-type": "tpm"}),
                         maa.jwks, now=SIM_NOW)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_synthesised_tokens_verify_at_a_fixed_now_and_fail_after_exp_or_with_a_changed_byte(
        maa: FakeMaa, tee: str, tmp_path: Path) -> None:
    """The issue's vectors, one per isolation TEE, on the command line: verified at a fixed
    `--now`, then refused after `exp`, and with one byte of the signed part changed."""
    token = maa.token(snp_claims() if tee == "snp" else tdx_claims())
    (tmp_path / "jwks.json").write_text(json.dumps(maa.jwks))
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    at = datetime.fromtimestamp(exp, UTC)

    def cli(tok: str, now: datetime) -> tuple[int, str]:
        (tmp_path / "t.jwt").write_text(tok)
        return run(str(tmp_path / "t.jwt"), "--kind", "maa", "--jwks", str(tmp_path / "jwks.json"),
                   "--now", now.isoformat())

    code, out = cli(token, SIM_NOW)
    assert code == 0 and f"kind: azure-{tee}-maa" in out, out
    code, out = cli(token, at + timedelta(seconds=1))
    assert code == 3 and "expired" in out.lower(), out
    h, p, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    at_byte = raw.index(b'"x-ms-isolation-tee"') + 3
    raw[at_byte] ^= 0x01  # "x-ms-isolation-tee" -> "x-ls-...": still JSON, no longer signed
    code, out = cli(f"{h}.{b64u(bytes(raw))}.{sig}", SIM_NOW)
    assert code == 3 and "signature_invalid" in out, out


def test_jwks_n_e_must_match_x5c(maa: FakeMaa) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
    jwks = {"keys": [{**maa.jwks["keys"][0], "n": b64u(other.n.to_bytes(256, "big")), "e": "AQAB"}]}
    with pytest.raises(ParseError, match="different keys"):
        load_jwks(jwks)


def _files(tmp_path: Path, maa: FakeMaa, claims: dict[str, Any]) -> tuple[Path, Path]:
    tok = tmp_path / "token.jwt"
    tok.write_text(maa.token(claims))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(maa.jwks))
    return tok, jwks


def test_cli_snp_token_and_one_expectations_schema(maa: FakeMaa, tmp_path: Path) -> None:
    tok, jwks = _files(tmp_path, maa, snp_claims())
    exp = tmp_path / "e.yaml"
    exp.write_text(f"cvm:\n  tee: azure-snp-maa\n  measurement: '{MEAS}'\n  mode: in-service\n")
    code, out = run(str(tok), "--jwks", str(jwks), "--now", "2026-06-01", "--expect", str(exp))
    assert code == 0, out
    assert "kind: azure-snp-maa" in out and "NOT CHECKED cvm.mode" in out
    # A user who asks for the direct vTPM path is never satisfied by MAA.
    exp.write_text(f"cvm:\n  tee: azure-snp\n  measurement: '{MEAS}'\n")
    code, out = run(str(tok), "--jwks", str(jwks), "--now", "2026-06-01", "--expect", str(exp))
    assert code == 3 and "FAILED tee: found azure-snp-maa, expected azure-snp" in out


def test_cli_debug_token_says_debug_enabled(maa: FakeMaa, tmp_path: Path) -> None:
    tok, jwks = _files(tmp_path, maa, snp_claims(debug=True))
    code, out = run(str(tok), "--jwks", str(jwks), "--now", "2026-06-01")
    assert code == 0, out
    assert out.splitlines()[0] == "!!! DEBUG ENABLED !!!" and "CAVEAT DEBUG ENABLED" in out


# -- MAA's own enclave: verified only with --collateral and expectations -------------------


def test_maa_enclave_quote_verified_with_collateral(sim_sgx: SimulatedSgx, tmp_path: Path) -> None:
    kid = base64.b64encode(hashlib.sha256(b"test kid").digest()).decode()
    quote = sim_sgx.quote(base64.b64decode(kid), mrenclave=b"\x05" * 32, mrsigner=b"\x06" * 32,
                          isv_prod_id=1, isv_svn=3)
    ext = (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + len(quote).to_bytes(4, "little")
    maa = FakeMaa(quote_ext=ext + bytes(4) + quote)
    tok, jwks = _files(tmp_path, maa, snp_claims())
    coll = tmp_path / "coll.json"
    coll.write_text(json.dumps(sim_sgx.collateral()))
    exp = tmp_path / "e.yaml"
    base = [str(tok), "--jwks", str(jwks), "--now", "2026-06-01", "--expect", str(exp)]
    sim = ["--collateral", str(coll), "--certs", str(sim_sgx.directory), "--trust-simulated"]

    exp.write_text(f"cvm:\n  maa_enclave: {{mrsigner: '{'06' * 32}', min_isv_svn: 3}}\n")
    code, out = run(*base)  # expectations of the enclave, but no collateral: not verified
    assert code == 3 and "FAILED maa_enclave: found not verified" in out
    code, out = run(*base, *sim)
    assert code == 0, out
    assert "signer_quotes[0].verified: True" in out
    exp.write_text(f"cvm:\n  maa_enclave: {{mrsigner: '{'07' * 32}'}}\n")
    code, out = run(*base, *sim)
    assert code == 3 and "FAILED maa_enclave.mrsigner" in out
    exp.write_text("cvm: {}\n")
    code, out = run(*base, *sim)  # collateral without enclave expectations: refused
    assert code == 4 and "maa_enclave" in out


def test_maa_enclave_quote_must_name_the_kid(sim_sgx: SimulatedSgx, tmp_path: Path) -> None:
    quote = sim_sgx.quote(b"some other key", mrenclave=bytes(32), mrsigner=bytes(32))
    ext = (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + len(quote).to_bytes(4, "little")
    maa = FakeMaa(quote_ext=ext + bytes(4) + quote)
    tok, jwks = _files(tmp_path, maa, snp_claims())
    coll = tmp_path / "coll.json"
    coll.write_text(json.dumps(sim_sgx.collateral()))
    exp = tmp_path / "e.yaml"
    exp.write_text(f"cvm:\n  maa_enclave: {{mrsigner: '{'00' * 32}'}}\n")
    code, out = run(str(tok), "--jwks", str(jwks), "--now", "2026-06-01", "--expect", str(exp),
                    "--collateral", str(coll), "--certs", str(sim_sgx.directory), "--trust-simulated")
    assert code == 3 and "binding_mismatch" in out


def test_vector_provenance_kept() -> None:
    assert "maa_sgx_token.jwt" in vec("PROVENANCE.md").decode()


# -- CVM evidence kinds for the registry ---------------------------------------------------


def test_evidence_kinds_verify_offline_and_never_cross(maa: FakeMaa) -> None:
    """The azurevm token shape (x-ms-isolation-tee) as CVM evidence: each MAA kind accepts
    only its own TEE, under keys the verifier pins."""
    from duet.attestation.azure.maa import pinned_maa_keys, verify_maa_cvm_token

    keys = pinned_maa_keys(jwks=maa.jwks, key_sha256=None, logged_jwks=None)
    rd = cvm_report_data(NONCE, HOST_KEY)
    iss = "https://test.attest.example"
    r = verify_maa_cvm_token(maa.token(snp_claims()), keys, kind=KIND_SNP_MAA, issuer=iss, report_data=rd,
                             now=SIM_NOW)
    assert r.measurement == MEAS and r.kind == "azure-snp-maa"
    with pytest.raises(WrongKind):
        verify_maa_cvm_token(maa.token(snp_claims()), keys, kind=KIND_TDX_MAA, issuer=iss, report_data=rd,
                             now=SIM_NOW)
    t = verify_maa_cvm_token(maa.token(tdx_claims()), keys, kind=KIND_TDX_MAA, issuer=iss, report_data=rd,
                             now=SIM_NOW)
    assert t.mrtd == MRTD
    # A user asking for the direct vTPM path is never satisfied by an MAA token.
    assert [f.field for f in validate(r, Expectations(kind="azure-snp"))] == ["kind"]
    with pytest.raises(WrongKind):
        verify_maa_cvm_token(maa.token(snp_claims()), keys, kind="sgx-maa", issuer=iss, report_data=rd,
                             now=SIM_NOW)


def test_jwks_beside_the_token_must_be_pinned(maa: FakeMaa) -> None:
    """Whoever made the evidence chose the JWKS: only a pinned key makes it MAA's."""
    from duet.attestation.azure.maa import key_fingerprint, pinned_maa_keys

    mallory = FakeMaa()
    pin = (key_fingerprint(maa.key.public_key()),)
    with pytest.raises(ChainInvalid):
        pinned_maa_keys(jwks=None, key_sha256=pin, logged_jwks=mallory.jwks)
    with pytest.raises(ChainInvalid):
        pinned_maa_keys(jwks=None, key_sha256=None, logged_jwks=maa.jwks)
    assert list(pinned_maa_keys(jwks=None, key_sha256=pin, logged_jwks=maa.jwks)) == [maa.kid]


def test_cli_logged_evidence_uses_its_jwks_and_says_so(maa: FakeMaa, tmp_path: Path) -> None:
    from duet.attestation.azure.maa import encode_maa_evidence, key_fingerprint

    f = tmp_path / "evidence.json"
    f.write_bytes(encode_maa_evidence(maa.token(snp_claims()), maa.jwks))
    exp = tmp_path / "e.yaml"
    exp.write_text(f"cvm:\n  maa_signing_keys: ['{key_fingerprint(maa.key.public_key())}']\n")
    code, out = run(str(f), "--now", "2026-06-01", "--expect", str(exp))  # kind detected
    assert code == 0, out
    assert "CAVEAT the JWKS came with the evidence" in out
    exp.write_text(f"cvm:\n  maa_signing_keys: ['{'00' * 32}']\n")
    code, out = run(str(f), "--now", "2026-06-01", "--expect", str(exp))
    assert code == 3 and "FAILED maa_signing_key" in out
