"""Azure CVM evidence: hardware report → runtime claims → AK → TPM quote → nonce.

Accepted envelopes (JSON), as the Confidential Containers attesters emit them for
``az-snp-vtpm`` and ``az-tdx-vtpm`` (trustee ``deps/verifier/src/az_*_vtpm/compat.rs``):

* v0 (no ``version``): SNP ``{"quote": {signature, message, pcrs}, "report", "vcek": PEM}``,
  TDX ``{"tpm_quote": {...}, "hcl_report", "td_quote"}`` — every byte string a list of ints;
* v1 / v2 (``"version": 1|2``): ``tpm_quote`` with hex ``signature``, ``message`` and
  ``pcrs``; ``hcl_report``, ``vcek`` (DER), ``td_quote`` base64url. In v2 the runtime
  claims' ``user-data`` carries the report data the attester was asked to bind.

duet collects Azure evidence in the v1 shape, optionally with ``"cert_chain"`` (ASK +
ARK PEM), and two fields of its own, both base64url and both optional:

* ``"ak_cert"``: the contents of the vTPM's NV index 0x01C101D0, where Azure keeps the AK
  certificate (DER, zero-padded). It is judged only against vTPM roots the verifier pins
  (:func:`judge_ak_certificate`): the AK is already bound by the hardware-signed HCL
  report, so the evidence is sound without it; with roots pinned, a missing, foreign or
  unchained certificate fails the evidence.
* ``"event_log"``: the guest's TCG event log (``binary_bios_measurements``), replayed to
  the quoted SHA-256 PCRs (:mod:`..tcg_eventlog`); a log that does not replay fails.

Decoding is per field as specified, with a lenient fallback between byte lists,
base64url, standard base64 and hex.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from ..certstore import CertStore
from ..dcap.abi import TdReportBody, parse_tdx_quote
from ..dcap.verify import CollateralInput, TdxReport, tdx_report_from_body, verify_tdx_quote
from ..errors import (
    BindingError,
    ChainInvalid,
    CollateralError,
    MissingCertificate,
    ParseError,
    UnsupportedVersion,
)
from ..snp.verify import SnpReport, verify_snp_report, verify_snp_report_with_certs
from ..tcg_eventlog import event_log_claims
from .akcert import (
    AK_CERT_NV_INDEX,
    is_ak_certificate,
    load_pins,
    name_of,
    parse_nv_certificate,
    verify_ak_chain,
)
from .hcl import REPORT_TYPE_SNP, HclReport, b64url_decode, parse_hcl_report, parse_tdreport
from .tpm import TpmQuoteInfo, verify_tpm_quote


@dataclass(frozen=True)
class AzureEvidence:
    envelope_version: int
    hcl_report: bytes
    tpm_message: bytes
    tpm_signature: bytes
    pcrs: list[bytes]
    vcek: bytes | None = None
    cert_chain: bytes | None = None
    td_quote: bytes | None = None
    ak_cert: bytes | None = None
    event_log: bytes | None = None


def _decode(value: Any, field: str, prefer: str) -> bytes:
    if isinstance(value, list):
        if not all(isinstance(b, int) and 0 <= b < 256 for b in value):
            raise ParseError(f"{field}: a byte list must hold integers 0..255")
        return bytes(value)
    if not isinstance(value, str):
        raise ParseError(f"{field}: expected bytes as a list, base64url or hex string")
    s = value.strip()
    order = [prefer] + [e for e in ("hex", "b64url", "b64") if e != prefer]
    for enc in order:
        try:
            if enc == "hex":
                return bytes.fromhex(s.removeprefix("0x"))
            if enc == "b64url":
                return b64url_decode(s)
            return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
        except (ValueError, ParseError, binascii.Error):
            continue
    raise ParseError(f"{field}: neither base64url nor hex")


def _tpm_quote(obj: Any, prefer: str) -> tuple[bytes, bytes, list[bytes]]:
    if not isinstance(obj, Mapping):
        raise ParseError("tpm_quote must be an object")
    try:
        msg = _decode(obj["message"], "tpm_quote.message", prefer)
        sig = _decode(obj["signature"], "tpm_quote.signature", prefer)
        raw_pcrs = obj["pcrs"]
    except KeyError as e:
        raise ParseError(f"tpm_quote lacks {e}") from None
    if isinstance(raw_pcrs, Mapping):
        items = sorted((int(k), v) for k, v in raw_pcrs.items())
        pcrs = [b""] * (items[-1][0] + 1 if items else 0)
        for k, v in items:
            pcrs[k] = _decode(v, f"pcr[{k}]", prefer)
    elif isinstance(raw_pcrs, list):
        pcrs = [_decode(p, f"pcr[{i}]", prefer) for i, p in enumerate(raw_pcrs)]
    else:
        raise ParseError("tpm_quote.pcrs must be a list")
    if len(pcrs) > 24:
        raise ParseError("more than 24 PCRs")
    return msg, sig, pcrs


def parse_azure_evidence(data: bytes | str | Mapping[str, Any]) -> AzureEvidence:
    """Read any envelope version (see the module docstring)."""
    if isinstance(data, bytes | str):
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise ParseError(f"Azure evidence is not JSON: {e}") from None
    else:
        obj = dict(data)
    if not isinstance(obj, dict):
        raise ParseError("Azure evidence must be a JSON object")
    version = obj.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ParseError("Azure evidence version must be an integer")
    if version not in (0, 1, 2):
        raise UnsupportedVersion(f"Azure evidence envelope version {version} is not 0, 1 or 2")
    prefer_bytes = "b64url"
    if version == 0:
        if "quote" in obj:  # az-snp-vtpm v0
            msg, sig, pcrs = _tpm_quote(obj["quote"], "hex")
            hcl_raw = obj.get("report")
        else:  # az-tdx-vtpm v0
            msg, sig, pcrs = _tpm_quote(obj.get("tpm_quote"), "hex")
            hcl_raw = obj.get("hcl_report")
    else:
        msg, sig, pcrs = _tpm_quote(obj.get("tpm_quote"), "hex")
        hcl_raw = obj.get("hcl_report")
    if hcl_raw is None:
        raise ParseError("Azure evidence has no HCL report")
    hcl = _decode(hcl_raw, "hcl_report", prefer_bytes)
    vcek = None
    if obj.get("vcek") is not None:
        v = obj["vcek"]
        if isinstance(v, str) and v.lstrip().startswith("-----BEGIN"):
            vcek = v.encode()
        else:
            vcek = _decode(v, "vcek", prefer_bytes)
    chain = obj.get("cert_chain")
    td_quote = None
    if obj.get("td_quote") is not None:
        td_quote = _decode(obj["td_quote"], "td_quote", prefer_bytes)
    ak_cert = _decode(obj["ak_cert"], "ak_cert", prefer_bytes) if obj.get("ak_cert") is not None else None
    log = _decode(obj["event_log"], "event_log", prefer_bytes) if obj.get("event_log") is not None else None
    return AzureEvidence(
        envelope_version=version,
        hcl_report=hcl,
        tpm_message=msg,
        tpm_signature=sig,
        pcrs=pcrs,
        vcek=vcek,
        cert_chain=chain.encode() if isinstance(chain, str) else None,
        td_quote=td_quote,
        ak_cert=ak_cert,
        event_log=log,
    )


def looks_like_azure_evidence(data: bytes) -> bool:
    head = data.lstrip()[:1]
    if head != b"{":
        return False
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and ("hcl_report" in obj or ("report" in obj and "quote" in obj))


@dataclass(frozen=True)
class AzureReport:
    """Verified Azure CVM evidence. ``hardware`` is the verified SNP / TDX claims."""

    kind: str  # "azure-snp" or "azure-tdx"
    hardware: SnpReport | TdxReport
    tpm: TpmQuoteInfo
    runtime_claims: dict[str, Any]
    vm_id: str | None
    user_data: str | None
    envelope_version: int
    simulated: bool
    #: The replayed TCG event log (:func:`..tcg_eventlog.event_log_claims`): None when the
    #: evidence carries no log.
    event_log: dict[str, Any] | None = None
    #: The AK certificate as judged: ``status`` (``verified``, ``not checked (no roots
    #: pinned)``, ``absent``), and when present its ``subject``, ``issuer`` and, verified,
    #: the ``chain`` and the pinned ``root_sha256`` it ends at.
    ak_certificate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hardware"] = self.hardware.to_dict()
        d["tpm"]["nonce"] = self.tpm.nonce.hex()
        d["tpm"]["pcrs"] = {str(k): v for k, v in self.tpm.pcrs.items()}
        return d


@dataclass(frozen=True)
class AzureBindings:
    """The links checked without the hardware signature (for parse-only inspection)."""

    hcl: HclReport
    tpm: TpmQuoteInfo
    hardware_report_data: bytes
    event_log: dict[str, Any] | None = None


def check_azure_bindings(ev: AzureEvidence, *, nonce: bytes | None = None) -> AzureBindings:
    """hardware REPORT_DATA ↔ runtime claims hash, AK → TPM quote → PCRs → nonce, and the
    event log (when present) → PCRs.

    For TDX also: the TD quote body repeats the TDREPORT inside the HCL report.
    """
    hcl = parse_hcl_report(ev.hcl_report)
    if hcl.report_type == REPORT_TYPE_SNP:
        hw_rd = hcl.hardware_report[0x50:0x90]
    else:
        td = parse_tdreport(hcl.hardware_report)
        hw_rd = td.report_data
        if ev.td_quote is None:
            raise ParseError("Azure TDX evidence has no TD quote")
        q = parse_tdx_quote(ev.td_quote)
        body = q.body
        assert isinstance(body, TdReportBody)
        pairs = [
            ("report_data", td.report_data, body.report_data),
            ("mr_td", td.mr_td, body.mr_td),
            ("td_attributes", td.td_attributes, body.td_attributes),
            ("xfam", td.xfam, body.xfam),
            ("mr_config_id", td.mr_config_id, body.mr_config_id),
            ("mr_owner", td.mr_owner, body.mr_owner),
            ("mr_owner_config", td.mr_owner_config, body.mr_owner_config),
        ] + [(f"rtmr{i}", td.rtmrs[i], body.rtmrs[i]) for i in range(4)]
        for name, a, b in pairs:
            if a != b:
                raise BindingError(f"the TD quote's {name} differs from the HCL TDREPORT's")
    digest = hcl.var_data_digest()
    if not hmac.compare_digest(hw_rd[: len(digest)], digest):
        raise BindingError(
            "the hardware report's REPORT_DATA is not the hash of the runtime claims"
        )
    tpm = verify_tpm_quote(ev.tpm_message, ev.tpm_signature, ev.pcrs, hcl.ak_pub())
    if nonce is not None and not hmac.compare_digest(tpm.nonce, nonce):
        raise BindingError(f"the TPM quote's nonce is {tpm.nonce.hex()}, expected {nonce.hex()}")
    log = event_log_claims(ev.event_log, tpm.pcrs) if ev.event_log is not None else None
    return AzureBindings(hcl, tpm, hw_rd, log)


def judge_ak_certificate(
    ev: AzureEvidence, hcl: HclReport, *, now: datetime, ak_roots: Sequence[bytes] | None,
    certs: CertStore | None = None,
) -> dict[str, Any]:
    """The AK certificate (the evidence's, else one in ``certs``) against the pinned vTPM
    roots. Without roots it is shown, "not checked": the AK is already bound by the
    hardware-signed runtime claims (``HCLAkPub``), so nothing rests on it. With roots,
    fails closed: a missing certificate, one for another key than ``HCLAkPub``, or one that
    does not chain to a pinned root raises."""
    ak = parse_nv_certificate(ev.ak_cert) if ev.ak_cert is not None else None
    # Where each certificate came from, for errors that name the file and the certificate.
    where = {}
    if ak is not None:
        where[id(ak)] = f"the evidence's ak_cert (NV index {AK_CERT_NV_INDEX:#010x}): {name_of(ak.subject)}"
    # The evidence's own AK certificate is the one judged; one from `certs` only stands in
    # for a missing one (CA certificates from `certs` may serve as intermediates either way).
    roles = ("azure-vtpm-ca",) if ak is not None else ("azure-vtpm-ak", "azure-vtpm-ca")
    found = [c for c in certs.certs if c.role in roles] if certs else []
    where.update({id(c.cert): c.describe() for c in found})
    if ak is None:
        ak = next((c.cert for c in found if is_ak_certificate(c.cert)), None)
    if not ak_roots:
        if ak is None:
            return {"status": "absent"}
        return {"status": "not checked (no roots pinned)", "subject": name_of(ak.subject),
                "issuer": name_of(ak.issuer)}
    roots, intermediates = load_pins(ak_roots)
    where.update({id(c): f"azure_ak_roots: {name_of(c.subject)}" for c in (*roots, *intermediates)})
    if ak is None:
        raise MissingCertificate(
            f"vTPM roots are pinned, but the evidence carries no AK certificate (NV index {AK_CERT_NV_INDEX:#010x})"
            + (f"; found: {'; '.join(c.describe() for c in found)}" if found else ""))
    considered = [ak, *intermediates, *(c.cert for c in found if c.cert is not ak)]
    try:
        chain = verify_ak_chain(considered, roots=roots, now=now, ak_public_key=hcl.ak_pub())
    except (ChainInvalid, MissingCertificate) as exc:
        listed = "; ".join(where[id(c)] for c in (*considered, *roots))
        raise type(exc)(f"{exc} (certificates considered: {listed})") from None
    return {"status": "verified", "subject": name_of(ak.subject), "issuer": name_of(ak.issuer),
            "chain": chain.describe(), "root_sha256": hashlib.sha256(chain.root.public_bytes(Encoding.DER)).hexdigest()}


def verify_azure_evidence(
    evidence: bytes | str | Mapping[str, Any] | AzureEvidence,
    *,
    now: datetime,
    nonce: bytes | None = None,
    report_data: bytes | None = None,
    vcek_der: bytes | None = None,
    ask_pem: bytes | None = None,
    ark_pem: bytes | None = None,
    trusted_arks: Sequence[bytes] | None = None,
    crl_der: bytes | None = None,
    tdx_collateral: CollateralInput | None = None,
    root_ca_der: bytes | None = None,
    certs: CertStore | None = None,
    ak_roots: Sequence[bytes] | None = None,
) -> AzureReport:
    """Verify the whole chain. SNP: the VCEK comes from the evidence unless ``vcek_der``.

    TDX needs ``tdx_collateral`` for the TD quote (there is no way to verify it without);
    without it a :class:`CollateralError` is raised. ``nonce`` (optional) must equal the TPM
    quote's extraData; ``report_data`` (optional, v2 envelopes) must prefix the claims'
    ``user-data``. With ``certs`` (and no ``vcek_der``), the SNP chain is picked by content
    from those certificates together with the evidence's own VCEK and ``cert_chain``.
    ``ak_roots``: the vTPM root (and intermediate) certificates the user pins for the AK
    certificate (:func:`judge_ak_certificate`).
    """
    ev = evidence if isinstance(evidence, AzureEvidence) else parse_azure_evidence(evidence)
    b = check_azure_bindings(ev, nonce=nonce)
    hcl = b.hcl
    if hcl.report_type == REPORT_TYPE_SNP and certs is not None and vcek_der is None:
        store = CertStore(list(certs.certs), list(certs.skipped), list(certs.crls))
        for blob, source in ((ev.vcek, "the evidence's vcek"), (ev.cert_chain, "cert_chain")):
            if blob is not None:
                store.add(blob, source, strict=True)
        for blob, source in ((ask_pem, "ask_pem"), (ark_pem, "ark_pem")):
            if blob is not None:
                store.add(blob, source, strict=True)
        hw = verify_snp_report_with_certs(
            hcl.hardware_report, store, now=now, trusted_arks=trusted_arks, crl_der=crl_der
        )
        if hw.vmpl != 0:
            raise BindingError(f"the HCL's SNP report is from VMPL {hw.vmpl}, expected 0")
        hardware: SnpReport | TdxReport = hw
    elif hcl.report_type == REPORT_TYPE_SNP:
        vek = vcek_der or ev.vcek
        if vek is None:
            raise ParseError("Azure SNP evidence has no VCEK; pass vcek_der")
        chain = ask_pem or ev.cert_chain
        if chain is None and vek.lstrip().startswith(b"-----BEGIN") and vek.count(b"BEGIN") > 1:
            chain = vek[vek.index(b"-----END CERTIFICATE-----") + 25 :]
        hw = verify_snp_report(
            hcl.hardware_report,
            vcek_der=vek,
            ask_pem=chain,
            ark_pem=ark_pem,
            now=now,
            trusted_arks=trusted_arks,
            crl_der=crl_der,
        )
        if hw.vmpl != 0:
            raise BindingError(f"the HCL's SNP report is from VMPL {hw.vmpl}, expected 0")
        hardware = hw
    else:
        if ev.td_quote is None:
            raise ParseError("Azure TDX evidence has no TD quote")
        if tdx_collateral is None:
            raise CollateralError("verifying an Azure TDX CVM's TD quote needs its collateral")
        hardware = verify_tdx_quote(ev.td_quote, tdx_collateral, now=now, root_ca_der=root_ca_der)
    if report_data is not None:
        ud = hcl.user_data
        if ud is None or not ud.startswith(report_data.hex()):
            raise BindingError("the runtime claims' user-data does not carry the report data")
    ak_certificate = judge_ak_certificate(ev, hcl, now=now, ak_roots=ak_roots, certs=certs)
    return AzureReport(
        kind="azure-" + hcl.kind,
        hardware=hardware,
        tpm=b.tpm,
        runtime_claims=hcl.claims,
        vm_id=hcl.vm_id,
        user_data=hcl.user_data,
        envelope_version=ev.envelope_version,
        simulated=hardware.simulated,
        event_log=b.event_log,
        ak_certificate=ak_certificate,
    )


def azure_tdx_claims_unverified(ev: AzureEvidence) -> TdxReport:
    """TD quote claims without signature checks (``tcb_status='Unverified'``)."""
    if ev.td_quote is None:
        raise ParseError("no TD quote")
    return tdx_report_from_body(parse_tdx_quote(ev.td_quote), tcb=None, simulated=False)
