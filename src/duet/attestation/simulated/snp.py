"""Simulated SEV-SNP: real 1184-byte reports signed by a development ARK → ASK → VCEK.

The development chain mirrors AMD's (RSASSA-PSS SHA-384 / salt 48 for the ARK and ASK,
an EC P-384 VCEK carrying AMD's TCB / hwID / productName extensions) so the very same
:func:`verify_snp_report` checks it. The ARK and ASK are RSA-2048, not 4096, to keep
creation fast; nothing in verification depends on the modulus size. Reports verify only
when the caller passes ``trusted_arks=[ark_pem]``, and then say ``simulated=True``.

The local CVM produces its own reports: :meth:`SimulatedSnp.write_guest_bundle` writes
just the VCEK private key, its certificate and the public chain into a directory, and
:func:`simulated_snp_report_from_dir` makes a report from such a directory (it needs only
``cryptography``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .. import _der as der
from ..snp.abi import ReportFields, TcbVersion, encode_report_body, encode_signature
from ..snp.certs import (
    OID_BL_SPL,
    OID_CSP_ID,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
)
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

STATE_FILE = "simulated-snp.json"
GUEST_FILE = "simulated-snp-guest.json"
ARK_FILE = "snp_ark.pem"
PRODUCT = "Milan"
DEFAULT_TCB = TcbVersion.build(bootloader=4, tee=0, snp=22, microcode=213)
VLEK_CSP_ID = "duet-simulated-csp"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "duet development (SIMULATED)"),
        ]
    )


def _ca(
    cn: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None, issuer_key: rsa.RSAPrivateKey
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer or _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(DEV_NOT_BEFORE)
        .not_valid_after(DEV_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, hashes.SHA384(), rsa_padding=_PSS)
    )


def _amd_ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _vcek(
    key: ec.EllipticCurvePrivateKey,
    ask: x509.Certificate,
    ask_key: rsa.RSAPrivateKey,
    chip_id: bytes | None,
    tcb: TcbVersion,
    *,
    csp_id: str | None = None,
) -> x509.Certificate:
    """A VCEK (``chip_id``: AMD's hwID extension) or, with ``csp_id``, a VLEK."""
    b = (
        x509.CertificateBuilder()
        .subject_name(_name("SEV-VCEK" if csp_id is None else "SEV-VLEK"))
        .issuer_name(ask.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(DEV_NOT_BEFORE)
        .not_valid_after(DEV_NOT_AFTER)
    )
    exts = [
        (OID_STRUCT_VERSION, der.integer(0)),
        (OID_PRODUCT_NAME, der.tlv(der.TAG_IA5STRING, f"{PRODUCT}-B0".encode())),
        (OID_BL_SPL, der.integer(tcb.bootloader)),
        (OID_TEE_SPL, der.integer(tcb.tee)),
        (OID_SNP_SPL, der.integer(tcb.snp)),
        (OID_UCODE_SPL, der.integer(tcb.microcode)),
    ]
    if chip_id is not None:
        exts.append((OID_HWID, chip_id))  # raw, as AMD's KDS issues it
    if csp_id is not None:
        exts.append((OID_CSP_ID, der.tlv(0x0C, csp_id.encode())))
    for oid, value in exts:
        b = b.add_extension(_amd_ext(oid, value), critical=False)
    return b.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)


def _create_state() -> dict[str, Any]:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ark = _ca(f"ARK-{PRODUCT}", ark_key, None, ark_key)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask = _ca(f"SEV-{PRODUCT}", ask_key, ark.subject, ark_key)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    chip_id = os.urandom(64)
    vcek = _vcek(vcek_key, ask, ask_key, chip_id, DEFAULT_TCB)
    # The VLEK side: an ASVK under the same ARK, and a VLEK that names a (made-up) CSP.
    asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    asvk = _ca(f"SEV-VLEK-{PRODUCT}", asvk_key, ark.subject, ark_key)
    vlek_key = ec.generate_private_key(ec.SECP384R1())
    vlek = _vcek(vlek_key, asvk, asvk_key, None, DEFAULT_TCB, csp_id=VLEK_CSP_ID)
    return {
        "kind": "duet-simulated-snp",
        "version": 1,
        "ark_pem": cert_pem(ark),
        "ask_pem": cert_pem(ask),
        "ark_key": key_pem(ark_key),
        "ask_key": key_pem(ask_key),
        "vcek_der": cert_der(vcek).hex(),
        "vcek_key": key_pem(vcek_key),
        "chip_id": chip_id.hex(),
        "tcb": DEFAULT_TCB.raw,
        "asvk_pem": cert_pem(asvk),
        "vlek_der": cert_der(vlek).hex(),
        "vlek_key": key_pem(vlek_key),
    }


def _guest_view(state: dict[str, Any]) -> dict[str, Any]:
    """What a guest needs to sign its own reports: no ARK / ASK private keys."""
    keep = ("kind", "version", "ark_pem", "ask_pem", "vcek_der", "vcek_key", "chip_id", "tcb")
    # (no VLEK key: the guest signs with the VCEK; the VLEK exists for verifier tests)
    return {k: state[k] for k in keep}


class _Signer:
    def __init__(self, state: dict[str, Any], where: Path) -> None:
        try:
            self.vcek_der: bytes = bytes.fromhex(state["vcek_der"])
            self.ask_pem: bytes = str(state["ask_pem"]).encode()
            self.ark_pem: bytes = str(state["ark_pem"]).encode()
            self.chip_id = bytes.fromhex(state["chip_id"])
            self.tcb = TcbVersion.decode(int(state["tcb"]), turin=False)
            self._key = load_ec_key(state["vcek_key"])
            # VLEK material is absent from states made before VLEK support, and from
            # guest bundles: only reports signed by the VCEK are possible then.
            self.asvk_pem: bytes | None = (
                str(state["asvk_pem"]).encode() if "asvk_pem" in state else None
            )
            self.vlek_der: bytes | None = (
                bytes.fromhex(state["vlek_der"]) if "vlek_der" in state else None
            )
            self._vlek_key = load_ec_key(state["vlek_key"]) if "vlek_key" in state else None
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{where} does not hold a simulated SNP VCEK: {e}") from e

    def report(
        self,
        report_data: bytes,
        *,
        measurement: bytes,
        host_data: bytes = bytes(32),
        policy: int = 0x30000,
        vmpl: int = 0,
        reported_tcb: TcbVersion | int | None = None,
        version: int = 3,
        guest_svn: int = 0,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        signing_key: str = "vcek",
        committed_tcb: TcbVersion | None = None,
        launch_tcb: TcbVersion | None = None,
    ) -> bytes:
        """A signed report. ``signing_key="vlek"`` signs with the VLEK (SIGNING_KEY=1)."""
        if signing_key not in ("vcek", "vlek"):
            raise ValueError("signing_key is vcek or vlek")
        key = self._key
        if signing_key == "vlek":
            if self._vlek_key is None:
                raise ValueError("this simulated SNP state has no VLEK (made before VLEK support)")
            key = self._vlek_key
        if len(report_data) > 64:
            raise ValueError("report_data is at most 64 bytes")
        if len(measurement) != 48:
            raise ValueError("measurement is 48 bytes")
        if len(host_data) != 32:
            raise ValueError("host_data is 32 bytes")
        if version not in (2, 3, 5):
            raise ValueError("simulated reports are version 2, 3 or 5")
        if len(family_id) != 16 or len(image_id) != 16:
            raise ValueError("family_id and image_id are 16 bytes")
        tcb = self.tcb.raw
        if isinstance(reported_tcb, TcbVersion):
            tcb = reported_tcb.raw
        elif isinstance(reported_tcb, int):
            tcb = reported_tcb
        fields = ReportFields(
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            family_id=family_id,
            image_id=image_id,
            vmpl=vmpl,
            current_tcb=self.tcb.raw,
            platform_info=1,
            flags=(1 if signing_key == "vlek" else 0) << 2,
            report_data=report_data.ljust(64, b"\0"),
            measurement=measurement,
            host_data=host_data,
            report_id=os.urandom(32),
            reported_tcb=tcb,
            chip_id=self.chip_id,
            committed_tcb=(committed_tcb or self.tcb).raw,
            launch_tcb=(launch_tcb or self.tcb).raw,
        )
        body = encode_report_body(fields)
        r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
        return body + encode_signature(r, s)


class SimulatedSnp(_Signer):
    """A development SEV-SNP platform (dev ARK / ASK / VCEK kept under ``directory``).

    ``vcek_der``, ``ask_pem``, ``ark_pem``: the dev chain. A verifier must be told
    explicitly to trust ``ark_pem`` (``trusted_arks=[sim.ark_pem]``).
    """

    def __init__(self, state: dict[str, Any], directory: Path) -> None:
        super().__init__(state, directory / STATE_FILE)
        self.directory = directory
        self._state = state

    @classmethod
    def load_or_create(cls, directory: Path) -> SimulatedSnp:
        directory = Path(directory)
        path = directory / STATE_FILE
        state = read_state(path)
        if state is None:
            state = write_state_once(path, _create_state())
        sim = cls(state, directory)
        if not (directory / ARK_FILE).exists():
            write_public(directory / ARK_FILE, sim.ark_pem)
        return sim

    @property
    def cert_chain_pem(self) -> bytes:
        """ASK then ARK, like AMD KDS ``cert_chain``."""
        return self.ask_pem + self.ark_pem

    @property
    def vlek_cert_chain_pem(self) -> bytes:
        """ASVK then ARK, like AMD KDS ``/vlek/v1/<product>/cert_chain``."""
        if self.asvk_pem is None:
            raise ValueError("this simulated SNP state has no VLEK (made before VLEK support)")
        return self.asvk_pem + self.ark_pem

    def write_guest_bundle(self, directory: Path) -> Path:
        """Write what a guest needs to sign its own reports (VCEK key + public chain)."""
        path = Path(directory) / GUEST_FILE
        write_state_once(path, _guest_view(self._state))
        return path


def simulated_snp_report_from_dir(
    directory: Path,
    report_data: bytes,
    *,
    measurement: bytes,
    host_data: bytes = bytes(32),
    policy: int = 0x30000,
    vmpl: int = 0,
    reported_tcb: TcbVersion | int | None = None,
    version: int = 3,
) -> bytes:
    """Make a simulated SNP report with the VCEK held in ``directory``.

    ``directory`` holds either a guest bundle (:meth:`SimulatedSnp.write_guest_bundle`) or
    the full simulated platform state.
    """
    directory = Path(directory)
    for name in (GUEST_FILE, STATE_FILE):
        state = read_state(directory / name)
        if state is not None:
            return _Signer(state, directory / name).report(
                report_data,
                measurement=measurement,
                host_data=host_data,
                policy=policy,
                vmpl=vmpl,
                reported_tcb=reported_tcb,
                version=version,
            )
    raise FileNotFoundError(f"no simulated SNP VCEK in {directory}")
