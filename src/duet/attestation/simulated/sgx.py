"""Simulated SGX: real-format DCAP quotes v3 plus complete collateral under a dev root.

Everything a DCAP verifier checks is really there and really signed — the PCK chain with
the Intel SGX extension (PPID, TCB components, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type),
a QE report signed by the PCK key and bound to the attestation key, TCB Info v3 and QE
Identity v2 signed by a TCB-signing certificate, a root CA CRL and a PCK CRL — so the very
same ``dcap-qvl`` call verifies it. Only the root differs: "duet simulated SGX Root CA",
made once per directory. A verifier accepts it only when handed ``root_ca_der``.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .. import _der as der
from ..dcap.abi import INTEL_QE_VENDOR_ID
from ._store import (
    DEV_NOT_AFTER,
    DEV_NOT_BEFORE,
    cert_der,
    cert_pem,
    key_pem,
    load_ec_key,
    read_state,
    write_public,
    write_state_once,
)

STATE_FILE = "simulated-sgx.json"
ROOT_FILE = "sgx_root_ca.der"

SGX_EXT_OID = "1.2.840.113741.1.13.1"
FMSPC = bytes.fromhex("00906ed50000")
PCE_ID = bytes.fromhex("0000")
PCE_SVN = 13
CPU_SVN = bytes([5, 5, 2, 2, 4, 1, 0, 5]) + bytes(8)
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
QE_MRENCLAVE = hashlib.sha256(b"duet simulated quoting enclave").digest()
QE_ISV_SVN = 8
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_AUTH_DATA = bytes(range(32))
TCB_EVAL_NUMBER = 17
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "duet development (SIMULATED)"),
        ]
    )


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(DEV_NOT_BEFORE)
        .not_valid_after(DEV_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for ext in extra or []:
        b = b.add_extension(ext, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _sgx_extension(
    ppid: bytes, cpu_svn: bytes, pce_svn: int, *, fmspc: bytes = FMSPC
) -> x509.UnrecognizedExtension:
    """The Intel SGX PCK certificate extension (processor CA form)."""

    def item(suffix: str, value: bytes) -> bytes:
        return der.seq(der.oid(f"{SGX_EXT_OID}.{suffix}"), value)

    tcb = [item(f"2.{i + 1}", der.integer(cpu_svn[i])) for i in range(16)]
    tcb.append(item("2.17", der.integer(pce_svn)))
    tcb.append(item("2.18", der.octets(cpu_svn)))
    value = der.seq(
        item("1", der.octets(ppid)),
        item("2", der.seq(*tcb)),
        item("3", der.octets(PCE_ID)),
        item("4", der.octets(fmspc)),
        item("5", der.enumerated(0)),
    )
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXT_OID), value)


def _crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: list[int]) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(DEV_NOT_BEFORE)
        .next_update(DEV_NOT_AFTER)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(DEV_NOT_BEFORE)
            .build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    n = key.public_key().public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def _report_body(
    *,
    cpu_svn: bytes,
    attributes: bytes,
    mr_enclave: bytes,
    mr_signer: bytes,
    isv_prod_id: int,
    isv_svn: int,
    report_data: bytes,
) -> bytes:
    body = (
        cpu_svn
        + (0).to_bytes(4, "little")  # misc_select
        + bytes(12)
        + bytes(16)  # isv_ext_prod_id
        + attributes
        + mr_enclave
        + bytes(32)
        + mr_signer
        + bytes(32)
        + bytes(64)  # config_id
        + isv_prod_id.to_bytes(2, "little")
        + isv_svn.to_bytes(2, "little")
        + bytes(2)  # config_svn
        + bytes(42)
        + bytes(16)  # isv_family_id
        + report_data
    )
    assert len(body) == 384
    return body


def _tcb_info() -> str:
    def comps(svns: list[int]) -> list[dict[str, int]]:
        return [{"svn": s} for s in svns]

    levels = [
        {
            "tcb": {"sgxtcbcomponents": comps(list(CPU_SVN)), "pcesvn": PCE_SVN},
            "tcbDate": "2025-01-01T00:00:00Z",
            "tcbStatus": "UpToDate",
        },
        {
            "tcb": {
                "sgxtcbcomponents": comps([2, 2, 2, 2, 3, 1, 0, 3] + [0] * 8),
                "pcesvn": 11,
            },
            "tcbDate": "2023-01-01T00:00:00Z",
            "tcbStatus": "OutOfDate",
            "advisoryIDs": ["INTEL-SA-00000"],
        },
    ]
    doc = {
        "id": "SGX",
        "version": 3,
        "issueDate": DEV_NOT_BEFORE.strftime(_ISO),
        "nextUpdate": DEV_NOT_AFTER.strftime(_ISO),
        "fmspc": FMSPC.hex(),
        "pceId": PCE_ID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVAL_NUMBER,
        "tcbLevels": levels,
    }
    return json.dumps(doc, separators=(",", ":"))


def qe_identity(identity_id: str, isv_prod_id: int, isv_svn: int) -> str:
    """A signed-collateral QE identity document (v2) for the simulated quoting enclave: the
    SGX QE (``QE``) and the TDX one (``TD_QE``) differ only in id, product id and SVN."""
    doc = {
        "id": identity_id,
        "version": 2,
        "issueDate": DEV_NOT_BEFORE.strftime(_ISO),
        "nextUpdate": DEV_NOT_AFTER.strftime(_ISO),
        "tcbEvaluationDataNumber": TCB_EVAL_NUMBER,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex().upper(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": isv_prod_id,
        "tcbLevels": [
            {
                "tcb": {"isvsvn": isv_svn},
                "tcbDate": "2025-01-01T00:00:00Z",
                "tcbStatus": "UpToDate",
            }
        ],
    }
    return json.dumps(doc, separators=(",", ":"))


def _qe_identity() -> str:
    return qe_identity("QE", 1, QE_ISV_SVN)


def _collateral(root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey, pck_ca: x509.Certificate,
                pck_ca_key: ec.EllipticCurvePrivateKey, tcb_cert: x509.Certificate,
                tcb_key: ec.EllipticCurvePrivateKey, tcb_info: str, qe_identity: str) -> dict[str, object]:
    """dcap-qvl's QuoteCollateralV3: CRLs, signed TCB Info and QE identity, issuer chains
    (shared by the simulated SGX and TDX platforms; only the JSON documents differ)."""
    return {
        "pck_crl_issuer_chain": cert_pem(pck_ca) + cert_pem(root),
        "root_ca_crl": _crl(root, root_key, []).hex(),
        "pck_crl": _crl(pck_ca, pck_ca_key, []).hex(),
        "tcb_info_issuer_chain": cert_pem(tcb_cert) + cert_pem(root),
        "tcb_info": tcb_info,
        "tcb_info_signature": _raw_sig(tcb_key, tcb_info.encode()).hex(),
        "qe_identity_issuer_chain": cert_pem(tcb_cert) + cert_pem(root),
        "qe_identity": qe_identity,
        "qe_identity_signature": _raw_sig(tcb_key, qe_identity.encode()).hex(),
    }


def _create_state() -> dict[str, Any]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("duet simulated SGX Root CA", root_key, None, root_key, ca=True)
    pck_ca_key = ec.generate_private_key(ec.SECP256R1())
    pck_ca = _cert("duet simulated SGX PCK Processor CA", pck_ca_key, root, root_key, ca=True)
    tcb_key = ec.generate_private_key(ec.SECP256R1())
    tcb_cert = _cert("duet simulated SGX TCB Signing", tcb_key, root, root_key, ca=False)
    pck_key = ec.generate_private_key(ec.SECP256R1())
    ppid = os.urandom(16)
    pck = _cert(
        "duet simulated SGX PCK Certificate",
        pck_key,
        pck_ca,
        pck_ca_key,
        ca=False,
        extra=[_sgx_extension(ppid, CPU_SVN, PCE_SVN)],
    )
    ak = ec.generate_private_key(ec.SECP256R1())

    # The QE report binds the attestation key: report_data = SHA-256(AK || auth data) ‖ 0^32.
    qe_report = _report_body(
        cpu_svn=CPU_SVN,
        attributes=QE_ATTRIBUTES,
        mr_enclave=QE_MRENCLAVE,
        mr_signer=QE_MRSIGNER,
        isv_prod_id=1,
        isv_svn=QE_ISV_SVN,
        report_data=hashlib.sha256(_raw_pub(ak) + QE_AUTH_DATA).digest() + bytes(32),
    )
    chain = (cert_pem(pck) + cert_pem(pck_ca) + cert_pem(root)).encode()
    tail = (
        _raw_pub(ak)
        + qe_report
        + _raw_sig(pck_key, qe_report)
        + len(QE_AUTH_DATA).to_bytes(2, "little")
        + QE_AUTH_DATA
        + (5).to_bytes(2, "little")
        + len(chain).to_bytes(4, "little")
        + chain
    )
    collateral = _collateral(root, root_key, pck_ca, pck_ca_key, tcb_cert, tcb_key, _tcb_info(), _qe_identity())
    return {
        "kind": "duet-simulated-sgx",
        "version": 1,
        "root_ca_der": cert_der(root).hex(),
        "root_key": key_pem(root_key),
        "pck_ca_key": key_pem(pck_ca_key),
        "pck_ca_pem": cert_pem(pck_ca),
        "pck_serial": pck.serial_number,
        "attestation_key": key_pem(ak),
        "signature_tail": tail.hex(),
        "collateral": collateral,
    }


class DcapPlatform:
    """What the simulated SGX and TDX platforms share: a state file made once per directory
    (keys, the QE/PCK tail, the collateral) and the dev root written beside it as DER."""

    STATE_FILE: ClassVar[str] = STATE_FILE
    ROOT_FILE: ClassVar[str] = ROOT_FILE
    LABEL: ClassVar[str] = "SGX"

    def __init__(self, state: dict[str, Any], directory: Path) -> None:
        try:
            self.directory = directory
            self.root_ca_der: bytes = bytes.fromhex(state["root_ca_der"])
            self._ak = load_ec_key(state["attestation_key"])
            self._tail = bytes.fromhex(state["signature_tail"])
            self._collateral: dict[str, object] = dict(state["collateral"])
            self._state = state
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{directory / self.STATE_FILE} is not a simulated {self.LABEL} state: {e}") from e

    @staticmethod
    def _new_state() -> dict[str, Any]:
        return _create_state()

    @classmethod
    def load_or_create(cls, directory: Path) -> Self:
        directory = Path(directory)
        path = directory / cls.STATE_FILE
        state = read_state(path)
        if state is None:
            state = write_state_once(path, cls._new_state())
        sim = cls(state, directory)
        root_path = directory / cls.ROOT_FILE
        if not root_path.exists():
            write_public(root_path, sim.root_ca_der)
        return sim


class SimulatedSgx(DcapPlatform):
    """A development SGX platform: quotes and collateral under a per-directory dev root.

    Every quote it makes is SIMULATED. It verifies only with ``root_ca_der=self.root_ca_der``.
    """

    @property
    def root_ca_path(self) -> Path:
        """The dev root as a DER file, for ``duet attestation verify --certs``."""
        return self.directory / ROOT_FILE

    def quote(
        self,
        report_data: bytes,
        *,
        mrenclave: bytes,
        mrsigner: bytes,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
    ) -> bytes:
        """An SGX DCAP quote v3 (ECDSA P-256, PCK chain embedded) over ``report_data``."""
        if len(report_data) > 64:
            raise ValueError("report_data is at most 64 bytes")
        if len(mrenclave) != 32 or len(mrsigner) != 32:
            raise ValueError("mrenclave and mrsigner are 32 bytes each")
        if not (0 <= isv_prod_id < 1 << 16 and 0 <= isv_svn < 1 << 16):
            raise ValueError("isv_prod_id and isv_svn are 16-bit")
        flags = 0x01 | 0x04 | (0x02 if debug else 0)  # INIT | MODE64BIT | DEBUG
        attributes = flags.to_bytes(8, "little") + (0x07).to_bytes(8, "little")
        header = (
            (3).to_bytes(2, "little")
            + (2).to_bytes(2, "little")  # ECDSA-256-with-P-256
            + (0).to_bytes(4, "little")  # TEE type SGX
            + QE_ISV_SVN.to_bytes(2, "little")
            + PCE_SVN.to_bytes(2, "little")
            + INTEL_QE_VENDOR_ID
            + bytes(20)
        )
        body = _report_body(
            cpu_svn=CPU_SVN,
            attributes=attributes,
            mr_enclave=mrenclave,
            mr_signer=mrsigner,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            report_data=report_data.ljust(64, b"\0"),
        )
        signed = header + body
        sig_data = _raw_sig(self._ak, signed) + self._tail
        return signed + len(sig_data).to_bytes(4, "little") + sig_data

    def collateral(self, *, revoke_pck: bool = False) -> dict[str, object]:
        """dcap-qvl ``QuoteCollateralV3`` JSON, valid 2026-01-01 to 2036-01-01.

        ``revoke_pck=True`` returns collateral whose PCK CRL revokes this platform's PCK
        certificate (for negative tests).
        """
        out = dict(self._collateral)
        if revoke_pck:
            key = load_ec_key(self._state["pck_ca_key"])
            ca = x509.load_pem_x509_certificate(self._state["pck_ca_pem"].encode())
            out["pck_crl"] = _crl(ca, key, [int(self._state["pck_serial"])]).hex()
        return out

    @staticmethod
    def valid_at() -> tuple[datetime, datetime]:
        return DEV_NOT_BEFORE, DEV_NOT_AFTER
