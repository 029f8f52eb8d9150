"""Evidence collection on real CVMs, with only what a stock Ubuntu 22.04/24.04 guest has.

The controller sends one shell command over its SSH session (logged first, as every
command is) and parses its output. The guest computes the report data itself,
SHA-512(nonce ‖ its SSH host key blob), from /etc/ssh/ssh_host_ed25519_key.pub, so the
evidence binds the host key of the machine that produced it (see docs/invariants.md, invariant 3).

Paths, in order of preference:
- configfs-tsm (`/sys/kernel/config/tsm/report`, Linux ≥ 6.7): SEV-SNP reports (with the
  host's certificate table in `auxblob` when it provides one) and TDX quotes, with the
  TD's CC event log (ACPI CCEL table) when the guest exposes it;
- `/dev/sev-guest` on older SNP kernels: an ioctl is not reachable from a shell, so the
  guest's `python3` issues SNP_GET_REPORT directly (stdlib `fcntl`/`ctypes` only; the
  certificates then come from the provider, not from the guest);
- Azure CVMs: the vTPM (tpm2-tools, from the Ubuntu archive): the HCL report from NV index
  0x01400001 (hardware report + runtime claims carrying the attestation key), a TPM2 quote
  by the attestation key 0x81000003 over all SHA-256 PCRs with qualifying data = the first
  32 bytes of the report data, the AK certificate from NV index 0x01C101D0 when the vTPM
  has one, the TCG event log (`binary_bios_measurements`) when the kernel exposes it, and
  the VCEK chain from Azure's instance metadata service (SEV-SNP) or the TD quote (TDX).

Output format (one `key: base64` line each) is parsed by `parse_output`; anything
missing or malformed is a refusal, never a silent pass.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
import struct
import uuid
from dataclasses import dataclass, field

HOST_KEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

#: Computes SHA-512(nonce ‖ host key blob) on the guest; prints it as hex.
_REPORT_DATA = (
    "python3 -I -S -c 'import base64,hashlib,sys;"
    "k=open(sys.argv[2]).read().split()[1];"
    "print(hashlib.sha512(bytes.fromhex(sys.argv[1])+base64.b64decode(k)).hexdigest())' {nonce} {pub}"
)

#: SNP_GET_REPORT through /dev/sev-guest, for SNP kernels without configfs-tsm. The ioctl
#: is _IOWR('S', 0, struct snp_guest_request_ioctl) = 0xC0205300; the response message
#: carries status (u32), report size (u32), 24 reserved bytes, then the report.
SEV_GUEST = r"""import ctypes, fcntl, sys, base64
rd = bytes.fromhex(sys.argv[1])
req = ctypes.create_string_buffer(rd + bytes(4 + 28))
resp = ctypes.create_string_buffer(4000)
class Io(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64),
                ("resp_data", ctypes.c_uint64), ("exitinfo2", ctypes.c_uint64)]
io = Io(1, ctypes.addressof(req), ctypes.addressof(resp), 0)
with open("/dev/sev-guest", "rb+", buffering=0) as f:
    fcntl.ioctl(f, 0xC0205300, io)
status, size = int.from_bytes(resp.raw[0:4], "little"), int.from_bytes(resp.raw[4:8], "little")
if status != 0 or not 0 < size <= 4000 - 32:
    sys.exit("sev-guest: report request failed, status %d" % status)
print(base64.b64encode(resp.raw[32:32 + size]).decode())
"""

CONFIGFS_TSM = """set -eu
rd=$({report_data})
if [ ! -d /sys/kernel/config/tsm/report ] && [ -c /dev/sev-guest ]; then
  echo "provider: sev_guest"
  echo "report_data: $rd"
  echo "outblob: $(python3 -I -S -c {sev_guest} "$rd")"
  echo "host_key: $(cut -d' ' -f1,2 {pub})"
  exit 0
fi
d=/sys/kernel/config/tsm/report/duet-$$
mkdir "$d"
trap 'rmdir "$d"' EXIT
printf '%s' "$rd" | python3 -I -S -c 'import sys;sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read()))' > "$d/inblob"
echo "provider: $(cat "$d/provider")"
echo "report_data: $rd"
echo "outblob: $(base64 -w0 "$d/outblob")"
if [ -s "$d/auxblob" ]; then echo "auxblob: $(base64 -w0 "$d/auxblob")"; fi
if [ -r {ccel} ]; then echo "ccel: $(base64 -w0 {ccel})"; fi
echo "host_key: $(cut -d' ' -f1,2 {pub})"
"""
#: A TD's CC event log, as its firmware leaves it (ACPI CCEL table); the verifier replays
#: it against the quote's RTMRs.
CCEL_TABLE = "/sys/firmware/acpi/tables/data/CCEL"

AZURE_VTPM = """set -eu
rd=$({report_data})
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
tpm2_nvread -C o 0x01400001 -o "$t/hcl" >/dev/null
tpm2_quote -c 0x81000003 -l sha256:all -q "$(printf '%s' "$rd" | cut -c1-64)" \
  -m "$t/msg" -s "$t/sig" -f plain -o "$t/pcrs" -F values -g sha256 >/dev/null
echo "provider: azure_vtpm"
echo "report_data: $rd"
echo "hcl_report: $(base64 -w0 "$t/hcl")"
echo "tpm_message: $(base64 -w0 "$t/msg")"
echo "tpm_signature: $(base64 -w0 "$t/sig")"
echo "tpm_pcrs: $(base64 -w0 "$t/pcrs")"
if tpm2_nvreadpublic {ak_cert_index} >/dev/null 2>&1; then
  tpm2_nvread -C o {ak_cert_index} -o "$t/akcert" >/dev/null
  echo "ak_cert: $(base64 -w0 "$t/akcert")"
fi
if [ -r {event_log} ]; then echo "event_log: $(base64 -w0 {event_log})"; fi
{hardware}echo "host_key: $(cut -d' ' -f1,2 {pub})"
"""
#: Where Azure's vTPM keeps the AK certificate (DER, zero-padded), and where Linux exposes
#: the firmware's TCG event log: both optional, both judged by the verifier
#: (`duet.attestation.azure.evidence`).
AK_CERT_INDEX = "0x01C101D0"
TPM_EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"

#: SEV-SNP: the VCEK chain from Azure's certificate service (THIM).
AZURE_SNP_CERTS = """echo "vcek_json: $(curl -sf -m 10 -H Metadata:true http://169.254.169.254/metadata/THIM/amd/certification | base64 -w0)"
"""  # noqa: E501 - the exact text older logs carry

#: TDX: the HCL report carries a TDREPORT (1024 bytes after its 32-byte header), which only
#: the platform's quoting service turns into a TD quote; Azure serves it on the instance
#: metadata endpoint. The quote travels beside the HCL report and is verified with DCAP
#: collateral (`evidence_remote`), its REPORTDATA tied to the HCL report's runtime claims.
AZURE_TDX_QUOTE = """tdr=$(python3 -I -S -c 'import base64,sys;d=open(sys.argv[1],"rb").read()[32:32+1024];\
print(base64.urlsafe_b64encode(d).decode().rstrip("="))' "$t/hcl")
echo "td_quote_json: $(printf '{"report":"%s"}' "$tdr" | curl -sf -m 30 -H Content-Type:application/json \
  -d @- http://169.254.169.254/acc/tdquote | base64 -w0)"
"""


#: MAA (Microsoft Azure Attestation) kinds: the guest writes its report data (the binding
#: of nonce and host key) into the vTPM's user-data index 0x01400002, so that the HCL
#: report read next carries it in its runtime claims (`user-data`), whose hash the hardware
#: report signs; then it asks the owner's MAA instance for a token over the hardware
#: evidence with those claims as runtime data. MAA checks the evidence and the claims'
#: hash, and signs the token; the verifier checks the token against MAA keys it pins.
AZURE_MAA = """set -eu
rd=$({report_data})
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
printf '%s' "$rd" | python3 -I -S -c 'import sys;sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read()))' > "$t/ud"
tpm2_nvreadpublic 0x01400002 >/dev/null 2>&1 || \
  tpm2_nvdefine -C o -s 64 -a 'ownerread|ownerwrite|authread|authwrite' 0x01400002 >/dev/null
tpm2_nvwrite -C o -i "$t/ud" 0x01400002 >/dev/null
tpm2_nvread -C o 0x01400001 -o "$t/hcl" >/dev/null
{hardware}python3 -I -S -c {request} {tee} "$t" > "$t/req"
echo "provider: azure_maa"
echo "report_data: $rd"
echo "maa_response: $(curl -sf -m 30 -H Content-Type:application/json --data-binary @"$t/req" \
  "{endpoint}" | base64 -w0)"
echo "host_key: $(cut -d' ' -f1,2 {pub})"
"""

#: SEV-SNP: the VCEK chain MAA needs with the report, from Azure's certificate service.
AZURE_MAA_SNP_CERTS = """curl -sf -m 10 -H Metadata:true http://169.254.169.254/metadata/THIM/amd/certification > "$t/certs"
"""  # noqa: E501

#: TDX: the TD quote of the HCL report's TDREPORT, from Azure's TD quote service.
AZURE_MAA_TDX_QUOTE = """python3 -I -S -c 'import base64,sys;d=open(sys.argv[1],"rb").read()[32:32+1024];\
print(base64.urlsafe_b64encode(d).decode().rstrip("="))' "$t/hcl" > "$t/tdr"
printf '{"report":"%s"}' "$(cat "$t/tdr")" | curl -sf -m 30 -H Content-Type:application/json \
  -d @- http://169.254.169.254/acc/tdquote > "$t/tdq"
"""

#: The MAA request body (stdlib only): the runtime claims are the HCL report's variable
#: data (length at 1232, bytes from 1236), exactly as the hardware report hashed them.
#: SEV-SNP (`attest/SevSnpVm`): the 1184-byte report after the 32-byte header and its VCEK
#: chain; TDX (`attest/TdxVm`): the TD quote.
MAA_REQUEST = r"""import base64, json, sys
tee, d = sys.argv[1], sys.argv[2]
hcl = open(d + "/hcl", "rb").read()
n = int.from_bytes(hcl[1232:1236], "little")
if hcl[:4] != b"HCLA" or len(hcl) < 1236 + n:
    sys.exit("the HCL report from the vTPM is malformed")
def u(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")
runtime = {"data": u(hcl[1236:1236 + n]), "dataType": "JSON"}
if tee == "snp":
    c = json.load(open(d + "/certs"))
    chain = (c["vcekCert"] + c["certificateChain"]).encode()
    report = json.dumps({"SnpReport": u(hcl[32:32 + 1184]), "VcekCertChain": u(chain)})
    body = {"report": u(report.encode()), "runtimeData": runtime}
else:
    body = {"quote": str(json.load(open(d + "/tdq"))["quote"]).rstrip("="), "runtimeData": runtime}
print(json.dumps(body))
"""

MAA_ENDPOINTS = {
    "azure-snp-maa": "/attest/SevSnpVm?api-version=2022-08-01",
    "azure-tdx-maa": "/attest/TdxVm?api-version=2023-04-01-preview",
}
#: An MAA instance URL as the owner configures it: it is written into a logged shell
#: command, so only these characters (and a verifier's builtin check can find it).
MAA_URL = re.compile(r"https://[a-z0-9](?:[a-z0-9.-]{0,250}[a-z0-9])?(?::[0-9]{1,5})?")


def maa_url(url: object) -> str:
    """The owner's MAA instance URL, checked (lowercase https origin, no path)."""
    text = str(url).rstrip("/")
    if not MAA_URL.fullmatch(text):
        raise ValueError(f"MAA instance URL {str(url)[:100]!r} is not an https origin such as "
                         "https://myinstance.weu.attest.azure.net")
    return text


def collect_command(kind: str, nonce: bytes, *, sudo: bool = True, pub: str = HOST_KEY_PUB,
                    maa: str | None = None) -> str:
    """The command the controller logs and runs to collect evidence of `kind`. `maa`: the
    owner's MAA instance URL, for the MAA kinds."""
    rd = _REPORT_DATA.format(nonce=nonce.hex(), pub=pub)
    if kind in MAA_ENDPOINTS:
        if maa is None:
            raise ValueError(f"{kind} evidence needs the MAA instance URL in the provider's settings (maa_url)")
        tee = "snp" if kind == "azure-snp-maa" else "tdx"
        script = AZURE_MAA.format(
            report_data=rd, pub=pub, tee=tee, request=shlex.quote(MAA_REQUEST),
            hardware=AZURE_MAA_SNP_CERTS if tee == "snp" else AZURE_MAA_TDX_QUOTE,
            endpoint=maa_url(maa) + MAA_ENDPOINTS[kind])
    elif kind in ("snp", "tdx"):
        script = CONFIGFS_TSM.format(report_data=rd, pub=pub, sev_guest=shlex.quote(SEV_GUEST), ccel=CCEL_TABLE)
    elif kind in ("azure-snp", "azure-tdx"):
        hardware = AZURE_SNP_CERTS if kind == "azure-snp" else AZURE_TDX_QUOTE
        script = AZURE_VTPM.format(report_data=rd, pub=pub, hardware=hardware, ak_cert_index=AK_CERT_INDEX,
                                   event_log=TPM_EVENT_LOG)
    else:
        raise ValueError(f"no evidence collection for TEE kind {kind!r}")
    quoted = script.replace("'", "'\"'\"'")
    # A clean run: no environment of the SSH session (env -i), no start-up files (sh -c is
    # neither a login nor an interactive shell), an isolated Python (-I -S: no PYTHON*
    # variables, no site or user site, so no .pth file runs).
    return f"{'sudo -n ' if sudo else ''}env -i PATH={CLEAN_PATH} LANG=C sh -c '{quoted}'"


class CollectError(ValueError):
    code = "evidence_unavailable"


@dataclass
class Collected:
    provider: str
    report_data: bytes
    host_key: str
    blobs: dict[str, bytes] = field(default_factory=dict)


_LINE = re.compile(r"^([a-z_]+): ?(.*)$")


def parse_output(text: str) -> Collected:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            fields[m.group(1)] = m.group(2).strip()
    for needed in ("provider", "report_data", "host_key"):
        if not fields.get(needed):
            raise CollectError(f"the guest's evidence output lacks {needed!r}")
    try:
        report_data = bytes.fromhex(fields["report_data"])
        blobs = {
            k: base64.b64decode(v, validate=True)
            for k, v in fields.items()
            if k not in ("provider", "report_data", "host_key") and v
        }
    except (ValueError, binascii.Error):
        raise CollectError("the guest's evidence output is not valid hex/base64") from None
    if len(report_data) != 64:
        raise CollectError("the guest's report data is not 64 bytes")
    return Collected(provider=fields["provider"], report_data=report_data, host_key=fields["host_key"], blobs=blobs)


def maa_token(got: Collected) -> str:
    """The token of MAA's reply (`{"token": "<JWT>"}`), as ASCII text."""
    from duet.ledger import strictjson

    raw = got.blobs.get("maa_response")
    if not raw:
        raise CollectError("the guest got no reply from the MAA instance")
    try:
        token = strictjson.loads_object(raw, what="MAA's reply")["token"]
    except (strictjson.JsonInputError, KeyError, TypeError):
        raise CollectError("MAA's reply holds no token") from None
    if not isinstance(token, str) or not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", token):
        raise CollectError("MAA's reply holds no compact JWT")
    return token


def azure_envelope(got: Collected) -> dict[str, object]:
    """The collected vTPM outputs as the v1 evidence envelope `duet.attestation` verifies
    (the Confidential Containers `az-*-vtpm` shape), plus the VCEK chain, the AK
    certificate and the TCG event log when present."""
    from duet.ledger import strictjson

    pcrs = got.blobs["tpm_pcrs"]
    if len(pcrs) != 24 * 32:
        raise CollectError(f"expected 24 SHA-256 PCR values, got {len(pcrs)} bytes")
    envelope: dict[str, object] = {
        "version": 1,
        "tpm_quote": {
            "signature": got.blobs["tpm_signature"].hex(),
            "message": got.blobs["tpm_message"].hex(),
            "pcrs": [pcrs[i:i + 32].hex() for i in range(0, len(pcrs), 32)],
        },
        "hcl_report": base64.urlsafe_b64encode(got.blobs["hcl_report"]).decode().rstrip("="),
    }
    for name in ("ak_cert", "event_log"):
        if got.blobs.get(name):
            envelope[name] = base64.urlsafe_b64encode(got.blobs[name]).decode().rstrip("=")
    if got.blobs.get("td_quote_json"):
        try:
            reply = strictjson.loads_object(got.blobs["td_quote_json"], what="the TD quote service's reply")
            envelope["td_quote"] = str(reply["quote"]).rstrip("=")
        except (strictjson.JsonInputError, KeyError, TypeError):
            raise CollectError("Azure's TD quote service returned no quote") from None
    if got.blobs.get("vcek_json"):
        try:
            thim = strictjson.loads_object(got.blobs["vcek_json"], what="the VCEK document")
            envelope["vcek"] = str(thim["vcekCert"])
            envelope["cert_chain"] = str(thim["certificateChain"])
        except (strictjson.JsonInputError, KeyError, TypeError):
            raise CollectError("Azure's certificate service returned no usable VCEK chain") from None
    return envelope


# ---------------------------------------------------------------- SEV-SNP certificate table

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_NAMES = {VCEK_GUID: "vcek", VLEK_GUID: "vlek", ASK_GUID: "ask", ARK_GUID: "ark"}


def parse_cert_table(aux: bytes) -> dict[str, bytes]:
    """The GHCB extended-report certificate table: (GUID, offset, length) entries ending
    with an all-zero entry; offsets are from the start of the table (SEV-SNP ABI)."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + 24 > len(aux):
            raise CollectError("SNP certificate table is truncated")
        guid = uuid.UUID(bytes_le=aux[pos:pos + 16])
        offset, length = struct.unpack_from("<II", aux, pos + 16)
        if guid.int == 0 and offset == 0 and length == 0:
            return out
        if offset + length > len(aux):
            raise CollectError("SNP certificate table entry points outside the table")
        name = _NAMES.get(guid)
        if name is not None:
            out[name] = aux[offset:offset + length]
        pos += 24


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """The inverse of `parse_cert_table` (used by tests and the simulated platform)."""
    guids = {v: k for k, v in _NAMES.items()}
    header = 24 * (len(certs) + 1)
    table, body = b"", b""
    for name, der in certs.items():
        table += guids[name].bytes_le + struct.pack("<II", header + len(body), len(der))
        body += der
    return table + bytes(24) + body
