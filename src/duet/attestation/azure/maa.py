"""Microsoft Azure Attestation (MAA) tokens: a JWT, verified offline against a JWKS.

MAA adds Microsoft's attestation service as a trusted party: it verified the hardware
evidence, and its signature is all a token holder can check. That is why the direct vTPM
path (``azure-snp`` / ``azure-tdx``) is the default and MAA is a kind of its own
(``azure-snp-maa`` / ``azure-tdx-maa``): a user who asks for the direct path is never
satisfied by a token.

Checks, in order:

1. the token is three base64url parts, the header says ``alg: RS256`` and names a ``kid``
   (``jku`` / ``x5c`` in the header are ignored: keys come only from the JWKS given);
2. the ``kid`` is in the JWKS; its key (``x5c[0]``, or ``n``/``e``, which must agree when
   both are present) is RSA of at least 2048 bits, and the RS256 signature verifies;
3. ``exp`` (required) and ``nbf`` against ``now``;
4. the claims: ``x-ms-attestation-type`` (``azurevm`` with ``x-ms-isolation-tee``, or
   ``sevsnpvm`` / ``tdxvm`` / ``sgx`` directly) decide the kind; the TEE's SNP / TDX
   claims become the same claim names as the direct path (``measurement``, ``mrtd``...);
   the TEE's ``x-ms-runtime`` ``user-data`` must carry the binding of nonce and host key
   when the caller gives it (the same formula as every CVM report: :mod:`..binding`).

MAA's signing certificates carry an SGX quote of MAA's own enclave (extension
1.3.6.1.4.1.311.105.1). :func:`maa_signer_quotes` parses and reports it; verifying it
needs DCAP collateral and expectations of MAA's enclave, and the caller decides
(:func:`verify_maa_signer_quote`). Its report data names the key id (the ``kid`` bytes);
how the kid derives from the key is MAA's construction and is not checked here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..dcap.abi import SgxReportBody, parse_sgx_quote
from ..dcap.verify import CollateralInput, SgxReport, verify_sgx_quote
from ..errors import (
    BindingError,
    ChainInvalid,
    ParseError,
    SignatureInvalid,
    TokenExpired,
    TokenNotYetValid,
    WrongKind,
)

KIND_SNP_MAA = "azure-snp-maa"
KIND_TDX_MAA = "azure-tdx-maa"
KIND_SGX_MAA = "sgx-maa"
MAA_KINDS = (KIND_SNP_MAA, KIND_TDX_MAA, KIND_SGX_MAA)
CVM_MAA_KINDS = (KIND_SNP_MAA, KIND_TDX_MAA)

MAA_QUOTE_EXT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.105.1")
MAX_TOKEN_BYTES = 64 * 1024
_MIN_RSA_BITS = 2048


def _b64url(s: str, what: str) -> bytes:
    if not isinstance(s, str) or any(c in s for c in "+/= \n\t"):
        raise ParseError(f"{what}: not base64url")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise ParseError(f"{what}: not base64url") from None


def _json_obj(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ParseError(f"{what}: not JSON") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{what}: not a JSON object")
    return obj


@dataclass(frozen=True)
class Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse_jwt(token: bytes | str) -> Jwt:
    """Split and decode a compact JWS (no trust decisions)."""
    if isinstance(token, bytes):
        if len(token) > MAX_TOKEN_BYTES:
            raise ParseError("token larger than 64 KiB")
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise ParseError("a JWT is ASCII text") from None
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise ParseError(f"a JWT has 3 dot-separated parts, this has {len(parts)}")
    header = _json_obj(_b64url(parts[0], "JWT header"), "JWT header")
    claims = _json_obj(_b64url(parts[1], "JWT payload"), "JWT payload")
    sig = _b64url(parts[2], "JWT signature")
    return Jwt(header, claims, f"{parts[0]}.{parts[1]}".encode(), sig)


def looks_like_jwt(data: bytes) -> bool:
    """A compact JWS, or MAA CVM evidence (the token with its JWKS, JSON)."""
    s = data.strip()
    if s[:1] == b"{" and b'"maa_token"' in s[:MAX_TOKEN_BYTES * 2]:
        try:
            parse_maa_evidence(s)
        except ParseError:
            return False
        return True
    return s.count(b".") == 2 and s[:3] == b"eyJ" and len(s) <= MAX_TOKEN_BYTES


# -- JWKS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jwk:
    kid: str
    key: rsa.RSAPublicKey
    certs: list[x509.Certificate]


def _b64_std(s: Any, what: str) -> bytes:
    if not isinstance(s, str):
        raise ParseError(f"{what}: not a string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"{what}: not base64") from None


def load_jwks(data: bytes | str | Mapping[str, Any]) -> dict[str, Jwk]:
    """RSA keys of a JWKS by kid (``x5c`` certificates and / or ``n``/``e``)."""
    if isinstance(data, bytes | str):
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            raise ParseError("JWKS: not JSON") from None
    else:
        doc = dict(data)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ParseError("JWKS: no 'keys' list")
    out: dict[str, Jwk] = {}
    for i, k in enumerate(keys):
        if not isinstance(k, dict) or not isinstance(k.get("kid"), str):
            raise ParseError(f"JWKS key {i}: no kid")
        kid = k["kid"]
        if k.get("kty", "RSA") != "RSA":
            continue  # MAA signs with RSA only; other key types cannot verify RS256
        certs: list[x509.Certificate] = []
        for j, c in enumerate(k.get("x5c") or []):
            try:
                cert = x509.load_der_x509_certificate(_b64_std(c, f"JWKS {kid} x5c[{j}]"))
                # Parsed lazily by cryptography: touch the key too, so that a certificate
                # whose key does not parse is refused here, as a certificate error.
                _ = (cert.subject, cert.extensions, cert.public_key())
            except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):
                raise ParseError(f"JWKS {kid}: x5c[{j}] is not a certificate (or its key does not parse)") from None
            certs.append(cert)
        key_n = None
        if "n" in k or "e" in k:
            n = int.from_bytes(_b64url(str(k.get("n", "")), f"JWKS {kid} n"), "big")
            e = int.from_bytes(_b64url(str(k.get("e", "")), f"JWKS {kid} e"), "big")
            try:
                key_n = rsa.RSAPublicNumbers(e, n).public_key()
            except ValueError:
                raise ParseError(f"JWKS {kid}: n/e are not an RSA key") from None
        key = certs[0].public_key() if certs else key_n
        if not isinstance(key, rsa.RSAPublicKey):
            raise ParseError(f"JWKS {kid}: no RSA key (x5c[0] or n/e)")
        if key_n is not None and key_n.public_numbers() != key.public_numbers():
            raise ParseError(f"JWKS {kid}: n/e and x5c[0] are different keys")
        if kid in out:
            raise ParseError(f"JWKS: kid {kid!r} appears twice")
        out[kid] = Jwk(kid, key, certs)
    return out


JwksInput = bytes | str | Mapping[str, Any]


def key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo: what an expectation pins (a kid is a
    name anyone can give their own key)."""
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def _keys(jwks: JwksInput | dict[str, Jwk]) -> dict[str, Jwk]:
    if isinstance(jwks, dict) and jwks and all(isinstance(v, Jwk) for v in jwks.values()):
        return {str(k): v for k, v in jwks.items()}
    return load_jwks(jwks)


# -- claims --------------------------------------------------------------------------------


def _hex(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    s = v.strip().lower()
    try:
        bytes.fromhex(s)
    except ValueError:
        return None
    return s


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


@dataclass(frozen=True)
class MaaReport:
    """A verified MAA token: the kind, the hardware claims under duet's names, the rest raw.

    ``report_data`` is the hardware report data MAA saw; ``user_data`` the TEE runtime
    claims' ``user-data`` (hex), which carries duet's binding of nonce and host key.
    """

    kind: str
    issuer: str
    kid: str
    issued_at: int | None
    not_before: int | None
    expires: int
    attestation_type: str
    tee_type: str
    compliance_status: str | None
    user_data: str | None
    report_data: bytes | None
    debug: bool | None
    # SEV-SNP
    measurement: str | None = None
    host_data: str | None = None
    id_key_digest: str | None = None
    author_key_digest: str | None = None
    family_id: str | None = None
    image_id: str | None = None
    guest_svn: int | None = None
    vmpl: int | None = None
    reported_tcb: dict[str, int] | None = None
    smt_allowed: bool | None = None
    migrate_ma: bool | None = None
    # TDX
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    mrconfigid: str | None = None
    mrowner: str | None = None
    mrownerconfig: str | None = None
    mrseam: str | None = None
    # SGX
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    # TDX TCB as MAA judged it (its collateral, not ours): ``attester_tcb_status``
    tcb_status: str | None = None
    advisory_ids: list[str] | None = None
    #: The VM id (``x-ms-runtime`` ``vm-configuration.vmUniqueId``, from Azure's HCL claims)
    vm_id: str | None = None
    runtime_claims: dict[str, Any] = field(default_factory=dict)
    signer_quotes: list[dict[str, Any]] = field(default_factory=list)
    signing_key_sha256: str = ""  # SHA-256 of the signing key's SubjectPublicKeyInfo (DER)
    simulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report_data"] = self.report_data.hex() if self.report_data is not None else None
        return d


def _tee_claims(claims: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(kind, tee type, the dict with the TEE's claims)."""
    atype = claims.get("x-ms-attestation-type")
    if not isinstance(atype, str):
        raise ParseError("MAA token: no x-ms-attestation-type claim")
    tee: Any = claims
    tee_type = atype
    if atype == "azurevm":
        tee = claims.get("x-ms-isolation-tee")
        if not isinstance(tee, dict):
            raise ParseError("MAA azurevm token: no x-ms-isolation-tee object")
        inner = tee.get("x-ms-attestation-type")
        if not isinstance(inner, str):
            raise ParseError("MAA token: x-ms-isolation-tee has no x-ms-attestation-type")
        tee_type = inner
    kinds = {"sevsnpvm": KIND_SNP_MAA, "tdxvm": KIND_TDX_MAA, "sgx": KIND_SGX_MAA}
    kind = kinds.get(tee_type)
    if kind is None:
        raise WrongKind(f"MAA token attests {tee_type!r}, not an SNP / TDX CVM or SGX enclave")
    if kind == KIND_SGX_MAA and atype != "sgx":
        raise WrongKind("an SGX attestation inside an azurevm token is not meaningful")
    return kind, tee_type, tee


def _report_fields(kind: str, tee: dict[str, Any]) -> dict[str, Any]:
    g = tee.get
    if kind == KIND_SNP_MAA:
        p = "x-ms-sevsnpvm-"
        tcb = {
            "bootloader": _int(g(p + "bootloader-svn")),
            "tee": _int(g(p + "tee-svn")),
            "snp": _int(g(p + "snpfw-svn")),
            "microcode": _int(g(p + "microcode-svn")),
        }
        rd = _hex(g(p + "reportdata"))
        return {
            "measurement": _hex(g(p + "launchmeasurement")),
            "host_data": _hex(g(p + "hostdata")),
            "id_key_digest": _hex(g(p + "idkeydigest")),
            "author_key_digest": _hex(g(p + "authorkeydigest")),
            "family_id": _hex(g(p + "familyId")),
            "image_id": _hex(g(p + "imageId")),
            "guest_svn": _int(g(p + "guestsvn")),
            "vmpl": _int(g(p + "vmpl")),
            "reported_tcb": (
                {k: v for k, v in tcb.items() if v is not None}
                if all(v is not None for v in tcb.values())
                else None
            ),
            "debug": _bool(g(p + "is-debuggable")),
            "smt_allowed": _bool(g(p + "smt-allowed")),
            "migrate_ma": _bool(g(p + "migration-allowed")),
            "report_data": bytes.fromhex(rd) if rd else None,
        }
    if kind == KIND_TDX_MAA:
        rd = _hex(g("tdx_report_data"))
        return {
            "mrtd": _hex(g("tdx_mrtd")),
            "rtmr0": _hex(g("tdx_rtmr0")),
            "rtmr1": _hex(g("tdx_rtmr1")),
            "rtmr2": _hex(g("tdx_rtmr2")),
            "rtmr3": _hex(g("tdx_rtmr3")),
            "mrconfigid": _hex(g("tdx_mrconfigid")),
            "mrowner": _hex(g("tdx_mrowner")),
            "mrownerconfig": _hex(g("tdx_mrownerconfig")),
            "mrseam": _hex(g("tdx_mrseam")),
            "debug": _bool(g("tdx_td_attributes_debug")),
            "report_data": bytes.fromhex(rd) if rd else None,
            "tcb_status": g("attester_tcb_status") if isinstance(g("attester_tcb_status"), str) else None,
            "advisory_ids": _strings(g("attester_advisory_ids")),
        }
    rd = _hex(g("x-ms-sgx-report-data"))
    return {
        "mrenclave": _hex(g("x-ms-sgx-mrenclave")),
        "mrsigner": _hex(g("x-ms-sgx-mrsigner")),
        "isv_prod_id": _int(g("x-ms-sgx-product-id")),
        "isv_svn": _int(g("x-ms-sgx-svn")),
        "debug": _bool(g("x-ms-sgx-is-debuggable")),
        "report_data": bytes.fromhex(rd) if rd else None,
    }


def _strings(v: Any) -> list[str] | None:
    return [str(x) for x in v] if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def _vm_id(runtime: dict[str, Any]) -> str | None:
    cfg = runtime.get("vm-configuration")
    vm_id = cfg.get("vmUniqueId") if isinstance(cfg, dict) else None
    return vm_id if isinstance(vm_id, str) else None


def _kid_bytes(kid: str) -> bytes:
    try:
        return base64.b64decode(kid, validate=True)
    except (binascii.Error, ValueError):
        return b""


def maa_signer_quotes(certs: list[x509.Certificate], kid: str = "") -> list[dict[str, Any]]:
    """Parse (not verify: ``verified`` is False) the SGX quote in MAA's signing certs."""
    out = []
    kid_raw = _kid_bytes(kid)
    for i, cert in enumerate(certs):
        try:
            ext = cert.extensions.get_extension_for_oid(MAA_QUOTE_EXT_OID).value
        except x509.ExtensionNotFound:
            continue
        raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
        entry: dict[str, Any] = {"cert": i, "verified": False}
        try:
            quote = _maa_ext_quote(raw)
            q = parse_sgx_quote(quote)
            body = q.body
            assert isinstance(body, SgxReportBody)
            entry.update(
                mrenclave=body.mr_enclave.hex(),
                mrsigner=body.mr_signer.hex(),
                isv_prod_id=body.isv_prod_id,
                isv_svn=body.isv_svn,
                debug=body.debug,
                report_data=body.report_data.hex(),
                names_kid=bool(kid_raw) and body.report_data.startswith(kid_raw),
            )
        except ParseError as e:
            entry["error"] = e.message
        out.append(entry)
    return out


def _maa_ext_quote(raw: bytes) -> bytes:
    """The extension value: u32 version (1), u32 type, u32 quote size, u32 reserved, quote."""
    if len(raw) < 16:
        raise ParseError("MAA quote extension shorter than its 16-byte header")
    size = int.from_bytes(raw[8:12], "little")
    if 16 + size != len(raw):
        raise ParseError(f"MAA quote extension: header says {size} bytes, holds {len(raw) - 16}")
    return raw[16:]


def verify_maa_token(
    token: bytes | str,
    jwks: JwksInput | dict[str, Jwk],
    *,
    now: datetime,
    expected_kind: str | None = None,
    report_data: bytes | None = None,
    issuer: str | None = None,
) -> MaaReport:
    """Verify an MAA token (see the module docstring). ``report_data`` (e.g.
    :func:`duet.attestation.binding.cvm_report_data`) must prefix the TEE's ``user-data``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    jwt = parse_jwt(token)
    keys = _keys(jwks)
    alg = jwt.header.get("alg")
    if alg != "RS256":
        raise SignatureInvalid(f"MAA token alg is {alg!r}, only RS256 is accepted")
    kid = jwt.header.get("kid")
    if not isinstance(kid, str):
        raise ParseError("MAA token header has no kid")
    jwk = keys.get(kid)
    if jwk is None:
        raise ChainInvalid(f"the JWKS has no key {kid!r} (it has: {', '.join(sorted(keys))})")
    if jwk.key.key_size < _MIN_RSA_BITS:
        raise ChainInvalid(f"JWKS key {kid!r} is {jwk.key.key_size}-bit RSA, below 2048")
    try:
        jwk.key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureInvalid(f"MAA token signature does not verify with JWKS key {kid!r}") from None

    c = jwt.claims
    exp = _int(c.get("exp"))
    if exp is None:
        raise ParseError("MAA token has no numeric exp claim")
    nbf = _int(c.get("nbf"))
    t = int(now.timestamp())
    if t >= exp:
        raise TokenExpired(f"MAA token expired at {datetime.fromtimestamp(exp, UTC).isoformat()}")
    if nbf is not None and t < nbf:
        raise TokenNotYetValid(
            f"MAA token is not valid before {datetime.fromtimestamp(nbf, UTC).isoformat()}"
        )
    iss = c.get("iss")
    if not isinstance(iss, str):
        raise ParseError("MAA token has no iss claim")
    if issuer is not None and iss.rstrip("/") != issuer.rstrip("/"):
        raise WrongKind(f"MAA token issued by {iss!r}, expected {issuer!r}")

    kind, tee_type, tee = _tee_claims(c)
    if expected_kind is not None and kind != expected_kind:
        raise WrongKind(f"the MAA token is {kind}, expected {expected_kind}")
    runtime = tee.get("x-ms-runtime")
    runtime = runtime if isinstance(runtime, dict) else {}
    user_data = _hex(runtime.get("user-data"))
    if report_data is not None:
        want = report_data.hex()
        if user_data is None or not hmac.compare_digest(user_data[: len(want)], want):
            raise BindingError(
                "the MAA token's x-ms-runtime user-data does not carry the expected binding"
            )
    fields = _report_fields(kind, tee)
    compliance = tee.get("x-ms-compliance-status")
    return MaaReport(
        kind=kind,
        issuer=iss,
        kid=kid,
        issued_at=_int(c.get("iat")),
        not_before=nbf,
        expires=exp,
        attestation_type=str(c.get("x-ms-attestation-type")),
        tee_type=tee_type,
        compliance_status=compliance if isinstance(compliance, str) else None,
        user_data=user_data,
        runtime_claims=runtime,
        vm_id=_vm_id(runtime),
        signer_quotes=maa_signer_quotes(jwk.certs, kid),
        signing_key_sha256=key_fingerprint(jwk.key),
        **fields,
    )


def verify_maa_signer_quote(
    jwks: JwksInput | dict[str, Jwk],
    kid: str,
    collateral: CollateralInput,
    *,
    now: datetime,
    root_ca_der: bytes | None = None,
) -> SgxReport:
    """Verify the SGX quote in the signing certificate of ``kid`` (DCAP, via dcap-qvl).

    Its report data must begin with the kid's bytes (base64), which is how MAA's quote
    names its key. The caller then holds the result against its expectations of MAA's
    enclave (MRSIGNER, MRENCLAVE, ISV SVN): that judgement is the point of this check.
    """
    keys = _keys(jwks)
    jwk = keys.get(kid)
    if jwk is None or not jwk.certs:
        raise ChainInvalid(f"the JWKS has no certificate for key {kid!r}")
    try:
        ext = jwk.certs[0].extensions.get_extension_for_oid(MAA_QUOTE_EXT_OID).value
    except x509.ExtensionNotFound:
        raise ParseError(f"the signing certificate of {kid!r} has no SGX quote extension") from None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    report = verify_sgx_quote(_maa_ext_quote(raw), collateral, now=now, root_ca_der=root_ca_der)
    kid_bytes = _kid_bytes(kid)
    if not kid_bytes or report.report_data[: len(kid_bytes)] != kid_bytes:
        raise BindingError(f"MAA's enclave quote does not name key {kid!r} in its report data")
    return report



# -- CVM evidence kinds (azure-snp-maa, azure-tdx-maa) --------------------------------------


def pinned_maa_keys(
    *,
    jwks: JwksInput | None,
    key_sha256: tuple[str, ...] | None,
    logged_jwks: JwksInput | None,
) -> dict[str, Jwk]:
    """The MAA signing keys a verifier of CVM evidence accepts: only keys its user pinned.

    ``jwks`` is the user's own copy of MAA's keys; ``key_sha256`` pins keys by the SHA-256
    of their SubjectPublicKeyInfo, and then the key material may come from the JWKS the
    controller logged beside the token, since only the pinned keys among it are kept.
    With both, a key must be in ``jwks`` *and* pinned. A key named in the token's own
    header (``jku``, ``x5c``, ``jwk``) is never used: whoever made the token chose it.
    """
    if jwks is None and key_sha256 is None:
        raise ChainInvalid(
            "MAA evidence is only as good as the MAA signing keys its verifier pins; none are "
            "pinned (expectations cvm.maa_jwks or cvm.maa_signing_keys)"
        )
    source = jwks if jwks is not None else logged_jwks
    keys = _keys(source) if source is not None else {}
    if key_sha256 is not None:
        pins = {k.strip().lower().removeprefix("0x") for k in key_sha256}
        keys = {kid: k for kid, k in keys.items() if key_fingerprint(k.key) in pins}
    if not keys:
        raise ChainInvalid("none of the MAA signing keys the verifier pins is available to check the token")
    return keys


def verify_maa_cvm_token(
    token: str,
    keys: dict[str, Jwk],
    *,
    kind: str,
    issuer: str | None,
    report_data: bytes,
    now: datetime,
) -> MaaReport:
    """An MAA token as CVM evidence of ``kind``: signed by one of ``keys`` (see
    :func:`pinned_maa_keys`), issued by ``issuer`` (required: the MAA instance the user
    trusts), valid at ``now``, and its TEE runtime ``user-data`` exactly ``report_data``
    (duet's binding of the challenge nonce and the SSH host key)."""
    if kind not in CVM_MAA_KINDS:
        raise WrongKind(f"{kind!r} is not an MAA CVM evidence kind")
    if not issuer:
        raise ChainInvalid("MAA evidence needs the MAA instance its verifier trusts (cvm.maa_issuer)")
    report = verify_maa_token(token, keys, now=now, expected_kind=kind, report_data=report_data,
                              issuer=issuer)
    if report.user_data is None or not hmac.compare_digest(report.user_data, report_data.hex()):
        raise BindingError("the MAA token's runtime user-data is not exactly the binding of this challenge")
    return report


def encode_maa_evidence(token: str, jwks: Mapping[str, Any]) -> bytes:
    """A token with the JWKS beside it (JSON), as `duet attestation verify` reads it."""
    return json.dumps({"maa_token": token, "jwks": dict(jwks)}, sort_keys=True).encode()


def parse_maa_evidence(evidence: bytes | str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(token, jwks) of :func:`encode_maa_evidence` output."""
    if isinstance(evidence, bytes | str):
        try:
            obj = json.loads(evidence)
        except (UnicodeDecodeError, ValueError):
            raise ParseError("MAA evidence is not JSON") from None
    else:
        obj = dict(evidence)
    if not isinstance(obj, dict):
        raise ParseError("MAA evidence must be a JSON object")
    token, jwks = obj.get("maa_token"), obj.get("jwks")
    if not isinstance(token, str) or not isinstance(jwks, dict):
        raise ParseError("MAA evidence needs 'maa_token' (string) and 'jwks' (object)")
    return token, jwks
