"""Mutations of real vectors never crash the parsers / verifiers: only typed errors."""

from __future__ import annotations

import json

from attestation_helpers import at, vec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duet.attestation.azure.evidence import parse_azure_evidence, verify_azure_evidence
from duet.attestation.azure.hcl import parse_hcl_report
from duet.attestation.azure.tpm import parse_tpms_attest
from duet.attestation.dcap.abi import parse_quote
from duet.attestation.dcap.verify import prepare_collateral, verify_sgx_quote, verify_tdx_quote
from duet.attestation.detect import detect_kind
from duet.attestation.errors import AttestationError
from duet.attestation.snp.abi import parse_report
from duet.attestation.snp.verify import verify_snp_report

SGX = vec("sgx/dcap-qvl/sgx_quote")
SGX_COLL = prepare_collateral(vec("sgx/dcap-qvl/sgx_quote_collateral.json"))
TDX = vec("tdx/dcap-qvl/tdx_quote")
TDX_COLL = prepare_collateral(vec("tdx/dcap-qvl/tdx_quote_collateral.json"))
SNP = vec("snp/go-sev-guest/attestation.bin")
VCEK = vec("snp/go-sev-guest/vcek.testcer")
HCL = vec("azure/az-snp-vtpm/hcl-report.bin")
TPM = bytes.fromhex(json.loads(vec("azure/az-snp-vtpm/tpm-quote-v1.json"))["message"])
EV0 = vec("azure/az-snp-vtpm/evidence-v0.json")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i : i + draw(st.integers(1, 16))]
    return bytes(data)


def typed_only(fn, *args, **kw) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kw)
    except AttestationError:
        pass


@FUZZ
@given(mutated(SGX))
def test_fuzz_sgx(data: bytes) -> None:
    typed_only(parse_quote, data)
    typed_only(verify_sgx_quote, data, SGX_COLL, now=at("2025-07-01"))


@FUZZ
@given(mutated(TDX))
def test_fuzz_tdx(data: bytes) -> None:
    typed_only(verify_tdx_quote, data, TDX_COLL, now=at("2025-07-01"))


@FUZZ
@given(mutated(SNP))
def test_fuzz_snp(data: bytes) -> None:
    typed_only(parse_report, data)
    typed_only(verify_snp_report, data, vcek_der=VCEK, now=at("2025-01-01"))


@FUZZ
@given(mutated(VCEK))
def test_fuzz_vcek(data: bytes) -> None:
    typed_only(verify_snp_report, SNP, vcek_der=data, now=at("2025-01-01"))


@FUZZ
@given(mutated(HCL))
def test_fuzz_hcl(data: bytes) -> None:
    typed_only(parse_hcl_report, data)


@FUZZ
@given(mutated(TPM))
def test_fuzz_tpms_attest(data: bytes) -> None:
    typed_only(parse_tpms_attest, data)


@FUZZ
@given(mutated(EV0))
def test_fuzz_azure_envelope(data: bytes) -> None:
    typed_only(parse_azure_evidence, data)
    typed_only(verify_azure_evidence, data, now=at("2025-06-01"))


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_detect(data: bytes) -> None:
    typed_only(detect_kind, data)


# -- MAA tokens, certificate directories, CC event logs ------------------------------------

MAA_TOKEN = vec("azure/maa/maa_sgx_token.jwt")
MAA_JWKS = vec("azure/maa/maa_sharedeus_certs.jwks.json")


@FUZZ
@given(mutated(MAA_TOKEN))
def test_maa_token_mutations(data: bytes) -> None:
    from duet.attestation.azure.maa import verify_maa_token

    typed_only(verify_maa_token, data, MAA_JWKS, now=at("2023-09-26T15:00:00"))


@FUZZ
@given(mutated(MAA_JWKS))
def test_maa_jwks_mutations(data: bytes) -> None:
    from duet.attestation.azure.maa import verify_maa_token

    typed_only(verify_maa_token, MAA_TOKEN, data, now=at("2023-09-26T15:00:00"))


@FUZZ
@given(mutated(vec("snp/amd-roots/ask_ark_milan.pem")), mutated(VCEK))
def test_certstore_mutations(chain: bytes, vcek: bytes) -> None:
    from duet.attestation.certstore import CertStore
    from duet.attestation.snp.verify import verify_snp_report_with_certs

    store = CertStore()
    store.add(chain, "chain")
    store.add(vcek, "vcek")
    typed_only(verify_snp_report_with_certs, SNP, store, now=at("2025-01-01T00:00:00"))


@FUZZ
@given(st.binary(max_size=400))
def test_ccel_garbage(tail: bytes) -> None:
    from duet.attestation.ccel import build_ccel, parse_ccel

    typed_only(parse_ccel, build_ccel([(1, 13, b"kernel")])[: len(tail)] + tail)


def test_a_jwks_certificate_whose_key_does_not_parse_is_a_typed_error() -> None:
    """Found by the mutation test above: cryptography parses a certificate's key lazily, so
    an x5c whose SubjectPublicKeyInfo is damaged (an unknown algorithm OID) loaded as a
    certificate and then raised an untyped error from `public_key()`; and an unknown X.509
    version raises `InvalidVersion`, which is no ValueError."""
    import base64

    import pytest

    from duet.attestation.azure.maa import verify_maa_token

    doc = json.loads(MAA_JWKS)
    der = base64.b64decode(doc["keys"][0]["x5c"][0])
    rsa_encryption = bytes.fromhex("06092a864886f70d0101010500")  # OID 1.2.840.113549.1.1.1, NULL
    assert der.count(rsa_encryption) == 1
    version_3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (X.509 v3)
    assert der.startswith(version_3, 8)
    for bad in (der.replace(rsa_encryption, bytes.fromhex("060926") + rsa_encryption[3:]),  # OID 0.38.840…
                der[:8] + bytes.fromhex("a00302010a") + der[13:]):  # version 10: cryptography's InvalidVersion
        doc["keys"][0]["x5c"][0] = base64.b64encode(bad).decode()
        with pytest.raises(AttestationError, match="x5c"):
            verify_maa_token(MAA_TOKEN, json.dumps(doc).encode(), now=at("2023-09-26T15:00:00"))
