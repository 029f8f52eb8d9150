"""Azure vTPM AK certificates by content: the TCG AIK key usage makes a certificate an AK
certificate, and only a chain by name, authority key id and signature to a pinned root
makes it Azure's; its key must be the evidence's attestation key.

The attestation keys are real: ``HCLAkPub`` from the real Azure SEV-SNP and TDX HCL
reports (tests/attestation/vectors/azure, see PROVENANCE.md), the keys whose signatures
over the real vTPM quotes verify. The test vectors hold no Azure-issued AK certificate or
vTPM root, so the certificates certifying those keys are made here, under a test root,
with the names and extensions Azure's carry."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from duet.attestation.azure.akcert import TCG_KP_AIK_CERTIFICATE, verify_ak_chain
from duet.attestation.azure.hcl import parse_hcl_report
from duet.attestation.certstore import CertStore, classify
from duet.attestation.errors import CertificateExpired, ChainInvalid, MissingCertificate, UntrustedRoot

VEC = Path(__file__).resolve().parent / "vectors" / "azure"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
DOC_SIGNING = x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.12")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, public: rsa.RSAPublicKey, issuer: str, signer: rsa.RSAPrivateKey, *, ca: bool,
          eku: list[x509.ObjectIdentifier] | None = None, issuer_key: rsa.RSAPublicKey | None = None,
          days: int = 3650) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(public)
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key or signer.public_key()),
                        critical=False)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(signer, hashes.SHA256())


class Pki:
    """A vTPM root and intermediate with Azure's names, under test keys."""

    def __init__(self) -> None:
        self.root_key, self.ca_key = _key(), _key()
        self.root = _cert("Azure Virtual TPM Root Certificate Authority 2023", self.root_key.public_key(),
                          "Azure Virtual TPM Root Certificate Authority 2023", self.root_key, ca=True)
        self.ca = _cert("Global Virtual TPM CA - 03", self.ca_key.public_key(),
                        "Azure Virtual TPM Root Certificate Authority 2023", self.root_key, ca=True)

    def ak(self, public: rsa.RSAPublicKey, **kw: object) -> x509.Certificate:
        kw.setdefault("eku", [TCG_KP_AIK_CERTIFICATE, DOC_SIGNING])
        return _cert("911b0ef8-9dba.TrustedVM.Azure.windows.net", public, "Global Virtual TPM CA - 03",
                     self.ca_key, ca=False, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _real_ak(tee: str) -> rsa.RSAPublicKey:
    return parse_hcl_report((VEC / f"az-{tee}-vtpm" / "hcl-report.bin").read_bytes()).ak_pub()


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_the_ak_certificate_of_the_real_attestation_key_verifies_from_a_directory(
        pki: Pki, tee: str, tmp_path: Path) -> None:
    ak_key = _real_ak(tee)
    (tmp_path / "0x01C101D0.der").write_bytes(pki.ak(ak_key).public_bytes(Encoding.DER))
    (tmp_path / "intermediate.crt").write_bytes(_pem(pki.ca))
    store = CertStore.from_dir(tmp_path)
    assert {c.role for c in store.certs} == {"azure-vtpm-ak", "azure-vtpm-ca"}
    chain = store.azure_ak(roots=[pki.root.public_bytes(Encoding.DER)], now=NOW, ak_public_key=ak_key)
    assert chain.describe() == ("911b0ef8-9dba.TrustedVM.Azure.windows.net <- Global Virtual TPM CA - 03 <- "
                                "Azure Virtual TPM Root Certificate Authority 2023")
    # The SNP and TDX CVMs have different attestation keys: each certificate is for one.
    other = "tdx" if tee == "snp" else "snp"
    with pytest.raises(ChainInvalid, match="attestation key"):
        store.azure_ak(roots=[pki.root.public_bytes(Encoding.DER)], now=NOW, ak_public_key=_real_ak(other))


def test_the_right_names_under_another_key_are_refused(pki: Pki) -> None:
    ak_key = _real_ak("snp")
    roots = [pki.root]
    # An attacker's CA with Azure's intermediate name, and the AK certificate it signs.
    evil = Pki()
    forged = evil.ak(ak_key)
    with pytest.raises(ChainInvalid, match="authority key id"):
        verify_ak_chain([forged, pki.ca], roots=roots, now=NOW, ak_public_key=ak_key)
    with pytest.raises(ChainInvalid, match="does not chain to a pinned"):
        verify_ak_chain([forged, evil.ca], roots=roots, now=NOW, ak_public_key=ak_key)
    # Key ids copied from the genuine CA (they are public): the signature still fails.
    copied = _cert("911b0ef8-9dba.TrustedVM.Azure.windows.net", ak_key, "Global Virtual TPM CA - 03",
                   evil.ca_key, ca=False, eku=[TCG_KP_AIK_CERTIFICATE], issuer_key=pki.ca_key.public_key())
    with pytest.raises(ChainInvalid, match="signature does not verify"):
        verify_ak_chain([copied, pki.ca], roots=roots, now=NOW, ak_public_key=ak_key)
    # The genuine chain, but for another key than the evidence's attestation key.
    with pytest.raises(ChainInvalid, match="attestation key"):
        verify_ak_chain([pki.ak(_key().public_key()), pki.ca], roots=roots, now=NOW, ak_public_key=ak_key)
    # An intermediate that is not a CA cannot issue.
    leafy = _cert("Global Virtual TPM CA - 03", pki.ca_key.public_key(),
                  "Azure Virtual TPM Root Certificate Authority 2023", pki.root_key, ca=False)
    with pytest.raises(ChainInvalid):
        verify_ak_chain([pki.ak(ak_key), leafy], roots=roots, now=NOW, ak_public_key=ak_key)
    # Another root than the one pinned; no root at all.
    with pytest.raises(ChainInvalid):
        verify_ak_chain([pki.ak(ak_key), pki.ca], roots=[evil.root], now=NOW)
    with pytest.raises(UntrustedRoot):
        verify_ak_chain([pki.ak(ak_key), pki.ca], roots=[], now=NOW)


def test_classified_by_key_usage_not_by_name(pki: Pki) -> None:
    ak_key = _real_ak("snp")
    assert classify(pki.ak(ak_key))[0] == "azure-vtpm-ak"
    # The vTPM names without the AIK key usage: not an AK certificate.
    named = pki.ak(ak_key, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert classify(named)[0] == "other"
    with pytest.raises(MissingCertificate, match="not the TCG AIK"):
        verify_ak_chain([named, pki.ca], roots=[pki.root], now=NOW)
    # The AIK key usage under any name is one (its chain decides whose it is).
    plain = _cert("some key", ak_key, "Global Virtual TPM CA - 03", pki.ca_key, ca=False,
                  eku=[TCG_KP_AIK_CERTIFICATE])
    assert classify(plain)[0] == "azure-vtpm-ak"
    assert verify_ak_chain([plain, pki.ca], roots=[pki.root], now=NOW, ak_public_key=ak_key).ak == plain


def test_validity_is_judged_at_the_time_given(pki: Pki) -> None:
    ak_key = _real_ak("snp")
    short = pki.ak(ak_key, days=1)
    assert verify_ak_chain([short, pki.ca], roots=[pki.root], now=NOW, ak_public_key=ak_key)
    with pytest.raises(CertificateExpired):
        verify_ak_chain([short, pki.ca], roots=[pki.root], now=NOW + timedelta(days=2), ak_public_key=ak_key)


# -- `duet attestation verify`: the AK certificate in the evidence, the roots in --expect ----------


def _azure_cli(tmp_path: Path, *, ak_cert: bytes | None, pins: list[bytes] | None,
               files: dict[str, bytes] | None = None) -> tuple[int, str]:
    """The real Genoa Azure evidence (its HCLAkPub) with an AK certificate added as the
    guest collects it (NV contents: DER, zero-padded), verified from the command line."""
    import base64
    import json

    from typer.testing import CliRunner

    from duet.cli.attestation_cmd import app

    doc = json.loads((VEC.parent / "trustee-extra" / "az-snp-vtpm_evidence-genoa.json").read_text())
    if ak_cert is not None:
        doc["ak_cert"] = base64.urlsafe_b64encode(ak_cert.ljust(4096, b"\0")).decode().rstrip("=")
    (tmp_path / "ev.json").write_text(json.dumps(doc))
    certs = tmp_path / "certs"
    shutil.rmtree(certs, ignore_errors=True)
    certs.mkdir()
    (certs / "chain").write_bytes((VEC.parent / "snp" / "amd-roots" / "ask_ark_genoa.pem").read_bytes())
    for name, blob in (files or {}).items():
        (certs / name).write_bytes(blob)
    args = ["verify", str(tmp_path / "ev.json"), "--certs", str(certs), "--now", "2026-06-01"]
    if pins is not None:
        names = []
        for i, pin in enumerate(pins):
            (tmp_path / f"pin{i}.crt").write_bytes(pin)
            names.append(f"pin{i}.crt")
        (tmp_path / "exp.yaml").write_text(f"cvm:\n  tee: azure-snp\n  azure_ak_roots: {json.dumps(names)}\n")
        args += ["--expect", str(tmp_path / "exp.yaml")]
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def test_the_cli_shows_the_ak_certificate_and_judges_it_against_the_pinned_roots(tmp_path: Path) -> None:
    from vtpm_ca import SimulatedVtpmCa

    genoa = (VEC.parent / "trustee-extra" / "az-snp-vtpm_evidence-genoa.json").read_text()
    from duet.attestation.azure.evidence import parse_azure_evidence

    ak_key = parse_hcl_report(parse_azure_evidence(genoa).hcl_report).ak_pub()
    ca = SimulatedVtpmCa(now=NOW)
    der = ca.ak_certificate(ak_key, "390cbcf5").public_bytes(Encoding.DER)
    root_der = ca.root.public_bytes(Encoding.DER)
    # Pinned (the root as DER, the intermediate as PEM, files named in the expectations).
    code, out = _azure_cli(tmp_path, ak_cert=der, pins=[root_der, _pem(ca.ca)])
    assert code == 0, out
    lines = out.splitlines()
    assert "ak_certificate.status: verified" in lines
    assert "ak_certificate.subject: CN=390cbcf5.TrustedVM.SIMULATED,O=SIMULATED (duet tests)" in lines
    assert "ak_certificate.issuer: CN=SIMULATED Global Virtual TPM CA - 03,O=SIMULATED (duet tests)" in lines
    # Not pinned: shown, not judged.
    code, out = _azure_cli(tmp_path, ak_cert=der, pins=None)
    assert code == 0 and "ak_certificate.status: not checked (no roots pinned)" in out.splitlines(), out
    # Another root pinned: verification failed (3), naming the chain.
    other = SimulatedVtpmCa(now=NOW)
    code, out = _azure_cli(tmp_path, ak_cert=der, pins=[other.pins])
    assert code == 3 and "chain_invalid" in out and "does not chain to a pinned vTPM root" in out, out
    # The errors name each certificate considered and where it came from.
    assert "the evidence's ak_cert (NV index 0x01c101d0): CN=390cbcf5.TrustedVM.SIMULATED" in out
    assert "azure_ak_roots: CN=SIMULATED Azure Virtual TPM Root Certificate Authority" in out
    # The AK certificate may come from --certs instead (any name): a mismatch names that file.
    code, out = _azure_cli(tmp_path, ak_cert=None, pins=[other.pins], files={"from-portal.der": der})
    assert code == 3 and "from-portal.der: AZURE-VTPM-AK (CN=390cbcf5.TrustedVM.SIMULATED)" in out, out
    code, out = _azure_cli(tmp_path, ak_cert=None, pins=[ca.pins], files={"from-portal.der": der})
    assert code == 0 and "ak_certificate.status: verified" in out, out
    # ... but never instead of the evidence's own certificate, when it carries one.
    stranger = ca.ak_certificate(_key().public_key(), "x").public_bytes(Encoding.DER)
    code, out = _azure_cli(tmp_path, ak_cert=stranger, pins=[ca.pins], files={"from-portal.der": der})
    assert code == 3 and "attestation key" in out, out
    # A certificate for another key than the HCL report's AK: 3.
    code, out = _azure_cli(tmp_path, ak_cert=ca.ak_certificate(_key().public_key(), "x").public_bytes(Encoding.DER),
                           pins=[ca.pins])
    assert code == 3 and "attestation key" in out, out
    # Roots pinned, no certificate in the evidence: the certificate it needs is missing (4).
    code, out = _azure_cli(tmp_path, ak_cert=None, pins=[ca.pins])
    assert code == 4 and "certificate_missing" in out and "0x01c101d0" in out, out
    # NV contents that are not one certificate and padding: malformed (4).
    code, out = _azure_cli(tmp_path, ak_cert=der + b"junk", pins=None)
    assert code == 4 and "malformed_evidence" in out, out


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_the_evidence_ak_certificate_is_judged_for_both_vtpm_kinds(tee: str) -> None:
    """`judge_ak_certificate`, which every Azure verifier runs, on the real SEV-SNP and TDX
    HCL reports: verified under the pinned roots, refused under others, for another key, or
    missing; shown but not judged without roots."""
    from dataclasses import replace

    from duet.attestation.azure.evidence import AzureEvidence, judge_ak_certificate
    from vtpm_ca import SimulatedVtpmCa

    hcl_raw = (VEC / f"az-{tee}-vtpm" / "hcl-report.bin").read_bytes()
    hcl = parse_hcl_report(hcl_raw)
    ca = SimulatedVtpmCa(now=NOW)
    ev = AzureEvidence(envelope_version=1, hcl_report=hcl_raw, tpm_message=b"", tpm_signature=b"", pcrs=[],
                       ak_cert=ca.ak_certificate(hcl.ak_pub(), tee).public_bytes(Encoding.DER).ljust(4096, b"\0"))
    assert judge_ak_certificate(ev, hcl, now=NOW, ak_roots=[ca.pins])["status"] == "verified"
    assert judge_ak_certificate(ev, hcl, now=NOW, ak_roots=None)["status"] == "not checked (no roots pinned)"
    with pytest.raises(ChainInvalid, match="does not chain"):
        judge_ak_certificate(ev, hcl, now=NOW, ak_roots=[SimulatedVtpmCa(now=NOW).pins])
    foreign = replace(ev, ak_cert=ca.ak_certificate(_key().public_key(), tee).public_bytes(Encoding.DER))
    with pytest.raises(ChainInvalid, match="attestation key"):
        judge_ak_certificate(foreign, hcl, now=NOW, ak_roots=[ca.pins])
    with pytest.raises(MissingCertificate):
        judge_ak_certificate(replace(ev, ak_cert=None), hcl, now=NOW, ak_roots=[ca.pins])
    assert judge_ak_certificate(replace(ev, ak_cert=None), hcl, now=NOW, ak_roots=None) == {"status": "absent"}
    with pytest.raises(CertificateExpired):
        judge_ak_certificate(ev, hcl, now=NOW + timedelta(days=400), ak_roots=[ca.pins])


def test_nv_contents_are_one_certificate_and_padding(pki: Pki) -> None:
    from duet.attestation.azure.akcert import parse_nv_certificate
    from duet.attestation.errors import ParseError

    der = pki.ak(_real_ak("snp")).public_bytes(Encoding.DER)
    for padding in (b"", bytes(1596), b"\xff" * 100):
        assert parse_nv_certificate(der + padding).public_bytes(Encoding.DER) == der
    for bad in (der + b"\0\0x", der + b"\xff\0", der[:-1], b"", bytes(4096), b"\x30\x84\xff\xff\xff\xff",
                der + der, b"\x30\x03abc" + bytes(10), bytes(20 * 1024)):
        with pytest.raises(ParseError):
            parse_nv_certificate(bad)
