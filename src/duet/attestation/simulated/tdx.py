"""Simulated TDX: real-format DCAP quotes v4 and v5 plus complete collateral under a dev root.

Like the simulated SGX platform (:mod:`.sgx`), everything a DCAP verifier checks is really
there and really signed: a PCK chain whose leaf carries the Intel SGX extension, a TD-QE
report signed by the PCK key and bound to the attestation key, TDX TCB Info v3 (with the
TDX module and its identities) and a TD_QE identity signed by a TCB-signing certificate,
and the root and PCK CRLs. The very same ``dcap-qvl`` call verifies it; only the root
differs ("duet simulated TDX platform SGX Root CA", made once per directory), so a
verifier accepts it only when handed ``root_ca_der`` and then says ``simulated=True``.

Every TD field a verifier or the expectations look at is settable: MRTD, RTMR0-3,
MRCONFIGID, MROWNER, MROWNERCONFIG, REPORTDATA, and the TD attributes. Quotes are v4
(TDREPORT 1.0) or v5 (TD 1.0 or TD 1.5 body).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ..dcap.abi import INTEL_QE_VENDOR_ID, TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE, TEE_TDX
from ._store import (
    DEV_NOT_AFTER,
    DEV_NOT_BEFORE,
    cert_der,
    cert_pem,
    key_pem,
    load_ec_key,
    read_state,
    write_state_once,
)
from .sgx import (
    _ISO,
    CPU_SVN,
    PCE_ID,
    PCE_SVN,
    QE_ATTRIBUTES,
    QE_AUTH_DATA,
    QE_MRSIGNER,
    TCB_EVAL_NUMBER,
    DcapPlatform,
    _cert,
    _collateral,
    _crl,
    _raw_pub,
    _raw_sig,
    _report_body,
    _sgx_extension,
    qe_identity,
)

STATE_FILE = "simulated-tdx.json"
GUEST_FILE = "simulated-tdx-guest.json"
ROOT_FILE = "tdx_root_ca.der"

FMSPC = bytes.fromhex("90c06f000000")
TD_QE_MRENCLAVE = hashlib.sha256(b"duet simulated TD quoting enclave").digest()
TD_QE_ISV_SVN = 4
TD_QE_PROD_ID = 2
# TEE_TCB_SVN: TDX module SVN 6, module major version 1 (identity TDX_01), late microcode 3.
TEE_TCB_SVN = bytes([6, 1, 3]) + bytes(13)
OUTDATED_TEE_TCB_SVN = bytes([2, 1, 3]) + bytes(13)  # module SVN 2: the OutOfDate level
MR_SEAM = hashlib.sha384(b"duet simulated TDX module").digest()
XFAM = bytes.fromhex("e702060000000000")
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6


def _tcb_info() -> str:
    def comps(svns: list[int]) -> list[dict[str, int]]:
        return [{"svn": s} for s in svns]

    tdx_ok = [5, 0, 2] + [0] * 13
    levels = [
        {
            "tcb": {
                "sgxtcbcomponents": comps(list(CPU_SVN)),
                "pcesvn": PCE_SVN,
                "tdxtcbcomponents": comps(tdx_ok),
            },
            "tcbDate": "2025-01-01T00:00:00Z",
            "tcbStatus": "UpToDate",
        },
        {
            "tcb": {
                "sgxtcbcomponents": comps(list(CPU_SVN)),
                "pcesvn": PCE_SVN,
                "tdxtcbcomponents": comps([2, 0, 2] + [0] * 13),
            },
            "tcbDate": "2023-01-01T00:00:00Z",
            "tcbStatus": "OutOfDate",
            "advisoryIDs": ["INTEL-SA-00000"],
        },
    ]
    zeros48 = "00" * 48
    identity = {
        "id": "TDX_01",
        "mrsigner": zeros48,
        "attributes": "0000000000000000",
        "attributesMask": "FFFFFFFFFFFFFFFF",
        "tcbLevels": [
            {"tcb": {"isvsvn": 4}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
            {
                "tcb": {"isvsvn": 2},
                "tcbDate": "2023-01-01T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-00001"],
            },
        ],
    }
    doc = {
        "id": "TDX",
        "version": 3,
        "issueDate": DEV_NOT_BEFORE.strftime(_ISO),
        "nextUpdate": DEV_NOT_AFTER.strftime(_ISO),
        "fmspc": FMSPC.hex().upper(),
        "pceId": PCE_ID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": TCB_EVAL_NUMBER,
        "tdxModule": {
            "mrsigner": zeros48,
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        },
        "tdxModuleIdentities": [identity],
        "tcbLevels": levels,
    }
    return json.dumps(doc, separators=(",", ":"))


def _qe_identity() -> str:
    return qe_identity("TD_QE", TD_QE_PROD_ID, TD_QE_ISV_SVN)


def _create_state() -> dict[str, Any]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("duet simulated TDX platform SGX Root CA", root_key, None, root_key, ca=True)
    pck_ca_key = ec.generate_private_key(ec.SECP256R1())
    pck_ca = _cert("duet simulated SGX PCK Platform CA", pck_ca_key, root, root_key, ca=True)
    tcb_key = ec.generate_private_key(ec.SECP256R1())
    tcb_cert = _cert("duet simulated SGX TCB Signing", tcb_key, root, root_key, ca=False)
    pck_key = ec.generate_private_key(ec.SECP256R1())
    pck = _cert(
        "duet simulated SGX PCK Certificate",
        pck_key,
        pck_ca,
        pck_ca_key,
        ca=False,
        extra=[_sgx_extension(os.urandom(16), CPU_SVN, PCE_SVN, fmspc=FMSPC)],
    )
    ak = ec.generate_private_key(ec.SECP256R1())
    qe_report = _report_body(
        cpu_svn=CPU_SVN,
        attributes=QE_ATTRIBUTES,
        mr_enclave=TD_QE_MRENCLAVE,
        mr_signer=QE_MRSIGNER,
        isv_prod_id=TD_QE_PROD_ID,
        isv_svn=TD_QE_ISV_SVN,
        report_data=hashlib.sha256(_raw_pub(ak) + QE_AUTH_DATA).digest() + bytes(32),
    )
    chain = (cert_pem(pck) + cert_pem(pck_ca) + cert_pem(root)).encode()
    qe_cert_data = (
        qe_report
        + _raw_sig(pck_key, qe_report)
        + len(QE_AUTH_DATA).to_bytes(2, "little")
        + QE_AUTH_DATA
        + CERT_PCK_CHAIN.to_bytes(2, "little")
        + len(chain).to_bytes(4, "little")
        + chain
    )
    tail = (
        _raw_pub(ak)
        + CERT_QE_REPORT.to_bytes(2, "little")
        + len(qe_cert_data).to_bytes(4, "little")
        + qe_cert_data
    )
    collateral = _collateral(root, root_key, pck_ca, pck_ca_key, tcb_cert, tcb_key, _tcb_info(), _qe_identity())
    return {
        "kind": "duet-simulated-tdx",
        "version": 1,
        "root_ca_der": cert_der(root).hex(),
        "pck_ca_key": key_pem(pck_ca_key),
        "pck_ca_pem": cert_pem(pck_ca),
        "pck_serial": pck.serial_number,
        "attestation_key": key_pem(ak),
        "signature_tail": tail.hex(),
        "collateral": collateral,
    }


def _fixed(name: str, value: bytes, n: int) -> bytes:
    if len(value) != n:
        raise ValueError(f"{name} is {n} bytes")
    return value


class SimulatedTdx(DcapPlatform):
    """A development TDX platform: TD quotes and collateral under a per-directory dev root.

    Every quote it makes is SIMULATED. It verifies only with ``root_ca_der=self.root_ca_der``.
    """

    STATE_FILE: ClassVar[str] = STATE_FILE
    ROOT_FILE: ClassVar[str] = ROOT_FILE
    LABEL: ClassVar[str] = "TDX"

    @staticmethod
    def _new_state() -> dict[str, Any]:
        return _create_state()

    @property
    def root_ca_path(self) -> Path:
        """The dev root as a DER file, for ``duet attestation verify --certs``."""
        return self.directory / ROOT_FILE

    def write_guest_bundle(self, directory: Path) -> Path:
        """What a (local, simulated) TD needs to make its own quotes: the attestation key
        and the QE / PCK tail, no CA keys. See :func:`simulated_tdx_quote_from_dir`."""
        keep = ("kind", "version", "root_ca_der", "attestation_key", "signature_tail")
        path = Path(directory) / GUEST_FILE
        write_state_once(path, {k: self._state[k] for k in keep} | {"collateral": {}})
        return path

    def quote(
        self,
        report_data: bytes,
        *,
        mrtd: bytes = bytes(48),
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4,
        mrconfigid: bytes = bytes(48),
        mrowner: bytes = bytes(48),
        mrownerconfig: bytes = bytes(48),
        version: int = 4,
        td15: bool = False,
        debug: bool = False,
        td_attributes: int | None = None,
        tee_tcb_svn: bytes = TEE_TCB_SVN,
    ) -> bytes:
        """A TD quote (ECDSA P-256, PCK chain in the QE certification data).

        ``version`` 4 or 5; ``td15`` (v5 only) gives a TD 1.5 body (TEE_TCB_SVN2 and a zero
        MRSERVICETD). ``td_attributes`` overrides the default (SEPT_VE_DISABLE, plus DEBUG
        when ``debug``) for negative tests.
        """
        if len(report_data) > 64:
            raise ValueError("report_data is at most 64 bytes")
        if version not in (4, 5):
            raise ValueError("simulated TD quotes are version 4 or 5")
        if td15 and version != 5:
            raise ValueError("a TD 1.5 body needs a v5 quote")
        if len(rtmrs) != 4:
            raise ValueError("four RTMRs")
        attrs = td_attributes
        if attrs is None:
            attrs = TD_ATTR_SEPT_VE_DISABLE | (TD_ATTR_DEBUG if debug else 0)
        body = (
            _fixed("tee_tcb_svn", tee_tcb_svn, 16)
            + MR_SEAM
            + bytes(48)  # MRSIGNERSEAM: Intel's module (zero), as TCB Info's tdxModule says
            + bytes(8)  # SEAMATTRIBUTES
            + attrs.to_bytes(8, "little")
            + XFAM
            + _fixed("mrtd", mrtd, 48)
            + _fixed("mrconfigid", mrconfigid, 48)
            + _fixed("mrowner", mrowner, 48)
            + _fixed("mrownerconfig", mrownerconfig, 48)
            + b"".join(_fixed(f"rtmr{i}", r, 48) for i, r in enumerate(rtmrs))
            + report_data.ljust(64, b"\0")
        )
        if td15:
            body += tee_tcb_svn + bytes(48)  # TEE_TCB_SVN2, MRSERVICETD (no service TD)
        header = (
            version.to_bytes(2, "little")
            + (2).to_bytes(2, "little")  # ECDSA-256-with-P-256
            + TEE_TDX.to_bytes(4, "little")
            + bytes(2)  # reserved (QE SVN in v3)
            + bytes(2)  # reserved (PCE SVN in v3)
            + INTEL_QE_VENDOR_ID
            + bytes(20)
        )
        if version == 5:
            signed = header + (3 if td15 else 2).to_bytes(2, "little")
            signed += len(body).to_bytes(4, "little") + body
        else:
            signed = header + body
        sig_data = _raw_sig(self._ak, signed) + self._tail
        return signed + len(sig_data).to_bytes(4, "little") + sig_data

    def collateral(self, *, revoke_pck: bool = False) -> dict[str, object]:
        """dcap-qvl ``QuoteCollateralV3`` JSON (TDX TCB Info), valid 2026-01-01 to 2036-01-01."""
        out = dict(self._collateral)
        if revoke_pck:
            key = load_ec_key(self._state["pck_ca_key"])
            ca = x509.load_pem_x509_certificate(self._state["pck_ca_pem"].encode())
            out["pck_crl"] = _crl(ca, key, [int(self._state["pck_serial"])]).hex()
        return out

    @staticmethod
    def valid_at() -> tuple[datetime, datetime]:
        return DEV_NOT_BEFORE, DEV_NOT_AFTER


def simulated_tdx_quote_from_dir(directory: Path, report_data: bytes, **fields: Any) -> bytes:
    """A simulated TD quote made with the key held in ``directory`` (a guest bundle from
    :meth:`SimulatedTdx.write_guest_bundle`, or the full platform state); ``fields`` are
    :meth:`SimulatedTdx.quote`'s keyword arguments (mrtd, rtmrs, mrconfigid, version...)."""
    directory = Path(directory)
    for name in (GUEST_FILE, STATE_FILE):
        state = read_state(directory / name)
        if state is not None:
            return SimulatedTdx(state, directory).quote(report_data, **fields)
    raise FileNotFoundError(f"no simulated TDX attestation key in {directory}")


#: The kernel command line of a SIMULATED TD boot (local CVMs have no real boot).
SIMULATED_CMDLINE = "/boot/vmlinuz-SIMULATED root=/dev/duet-local ro console=ttyS0"


def simulated_boot_log(measurement: bytes, cmdline: str = SIMULATED_CMDLINE) -> tuple[bytes, tuple[bytes, ...]]:
    """A SIMULATED CC event log of a TD boot and the RTMR0..3 it replays to.

    What a TD's firmware and boot loader would leave in the CCEL table, in the shapes a
    verifier reads (:func:`..ccel.named_events`): a firmware configuration event in RTMR0,
    the kernel as an EFI boot-services application in RTMR1 (its digest derived from the
    launch ``measurement``), and grub's ``kernel_cmdline:`` string in RTMR2. Every event's
    data says SIMULATED.
    """
    from ..ccel import EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL, build_ccel, parse_ccel, replay_rtmrs

    ev_event_tag = 0x00000006
    ccel = build_ccel([
        (1, ev_event_tag, b"SIMULATED TD firmware configuration"),
        (2, EV_EFI_BOOT_SERVICES_APPLICATION, b"SIMULATED kernel image " + measurement.hex().encode()),
        (3, EV_IPL, ("kernel_cmdline: " + cmdline).encode()),
    ])
    return ccel, replay_rtmrs(parse_ccel(ccel))
