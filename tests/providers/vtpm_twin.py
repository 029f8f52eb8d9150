"""A twin of an Azure confidential VM's vTPM, for tests: a real software TPM (`swtpm`)
driven by the real `tpm2-tools`, provisioned the way Azure's paravisor provisions a CVM's
vTPM, and a local stand-in for Azure's instance metadata service (IMDS/THIM).

- The attestation key (AK): a restricted RSA-2048 signing key under the endorsement
  hierarchy, persisted at 0x81000003, as on Azure.
- The HCL report in NV index 0x01400001: a SIMULATED SEV-SNP report (signed by the dev
  VCEK of `duet.attestation.simulated.snp`, under a dev ARK a verifier must be told to
  trust) whose REPORT_DATA is the SHA-256 of the runtime claims, which carry the AK as the
  JWK `HCLAkPub` and the VM id as `vm-configuration.vmUniqueId`.
- The AK certificate in NV index 0x01C101D0, DER padded with zeros as Azure's is (the
  index is 2048 bytes here, the largest swtpm allows; Azure's is 4096), issued for the AK
  by a SIMULATED "Global Virtual TPM CA - 03" under a SIMULATED vTPM root
  (`tests/vtpm_ca.py`): a verifier pins that root as a user pins Microsoft's.
- A SIMULATED measured boot: the twin extends the SHA-256 PCRs as firmware, shim, grub and
  the kernel would (:data:`BOOT`), and writes the TCG event log of exactly those extends
  where Linux exposes the firmware's log (``binary_bios_measurements``).
- The THIM endpoint serves that VCEK and its chain, as Azure's does for the real one.

Or, made with `tdx=` (a `SimulatedTdx`) instead of `snp`, an Azure TDX CVM's vTPM:

- The HCL report is of the TDX type (4): it carries a SIMULATED TDREPORT (:func:`tdreport`)
  whose REPORTDATA is the SHA-256 of the same runtime claims (zero-padded to 64 bytes).
- IMDS answers `POST /acc/tdquote` (`{"report": base64url(TDREPORT)}`) as Azure's TD quote
  service does, with `{"quote": base64url(TD quote)}`: a SIMULATED DCAP v4 quote under the
  platform's development root (a verifier pins it with `tdx_roots`), whose TD report body
  repeats the TDREPORT's (REPORTDATA, MRTD, RTMRs, attributes, XFAM...); it quotes only
  the TDREPORT it provisioned (the real quoting enclave checks the CPU's MAC). The DCAP
  collateral comes from a PCCS (tests/providers/fake_pccs.py), as on Azure.

`command()` is the controller's own collection command (`collect_command("azure-snp")`, or
`"azure-tdx"`) with exactly three substitutions, all about where things are, not what is done: the TPM is
reached over swtpm's socket (`TPM2TOOLS_TCTI`; a CVM has /dev/tpmrm0), IMDS on a loopback
port (a CVM has 169.254.169.254), and the event log is the twin's file (a CVM's is in
securityfs). Every `tpm2_*` command runs unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from duet.attestation.azure.hcl import REPORT_TYPE_SNP, REPORT_TYPE_TDX, TDREPORT_LEN, parse_tdreport
from duet.attestation.dcap.abi import TD_ATTR_SEPT_VE_DISABLE
from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.simulated.tdx import MR_SEAM, TEE_TCB_SVN, XFAM, SimulatedTdx
from duet.attestation.tcg_eventlog import EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL, EV_SEPARATOR, build_tcg2_log
from duet.cvm.guest.collect import TPM_EVENT_LOG, collect_command
from helpers import free_port
from vtpm_ca import SimulatedVtpmCa

__all__ = ["BOOT", "CMDLINE", "KERNEL_IMAGE", "TD_MRTD", "AzureVtpmTwin", "SimulatedVtpmCa", "have_tools", "td_quote",
           "tdreport"]

AK_HANDLE = "0x81000003"
HCL_INDEX = "0x01400001"
AK_CERT_INDEX = "0x01C101D0"
AK_CERT_INDEX_SIZE = 2048
EV_S_CRTM_VERSION = 0x00000008
KERNEL_IMAGE = b"SIMULATED vmlinuz-6.8.0-azure"
CMDLINE = "/boot/vmlinuz-6.8.0-azure root=PARTUUID=5e3f ro console=ttyS0"
#: The SIMULATED measured boot the twin extends and logs: (PCR, event type, event data);
#: each digest is SHA-256 of the data (a real firmware hashes images Authenticode-style).
BOOT: tuple[tuple[int, int, bytes], ...] = (
    (0, EV_S_CRTM_VERSION, "SIMULATED firmware 1.0".encode("utf-16-le") + b"\0\0"),
    *((pcr, EV_SEPARATOR, bytes(4)) for pcr in range(8)),
    (4, EV_EFI_BOOT_SERVICES_APPLICATION, b"SIMULATED shimx64.efi"),
    (4, EV_EFI_BOOT_SERVICES_APPLICATION, b"SIMULATED grubx64.efi"),
    (9, EV_IPL, b"/boot/vmlinuz-6.8.0-azure\0"),
    (8, EV_IPL, f"kernel_cmdline: {CMDLINE}".encode() + b"\0"),
    (4, EV_EFI_BOOT_SERVICES_APPLICATION, KERNEL_IMAGE),
)
#: The SIMULATED TD's measurements in the TDX twin's TDREPORT (and so in its TD quotes).
TD_MRTD = hashlib.sha384(b"SIMULATED Azure TD firmware").digest()
TD_RTMRS = tuple(hashlib.sha384(f"SIMULATED Azure TD RTMR{i}".encode()).digest() for i in range(4))


def _port_pair() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("swtpm", "tpm2_quote", "tpm2_nvread", "tpm2_createprimary"))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _runtime_claims(ak: rsa.RSAPublicKey, vm_id: str) -> bytes:
    """The HCL report's runtime claims: the AK as the JWK `HCLAkPub`, and the VM id."""
    n = ak.public_numbers()
    return json.dumps({
        "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": _b64url(n.e.to_bytes(3, "big")),
                  "n": _b64url(n.n.to_bytes(256, "big"))}],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True, "vmUniqueId": vm_id},
    }, separators=(",", ":")).encode()


def _hcl(hw: bytes, report_type: int, claims: bytes) -> bytes:
    """Azure's layout (`duet.attestation.azure.hcl`): header, the hardware report padded to
    1184 bytes, the IGVM request-data header (report type, hash type 1 = SHA-256), claims."""
    header = b"HCLA" + (2).to_bytes(4, "little") + len(hw).to_bytes(4, "little") + bytes(20)
    igvm = b"".join(v.to_bytes(4, "little") for v in (20 + len(claims), 1, report_type, 1, len(claims)))
    return header + hw.ljust(1184, b"\0") + igvm + claims


def hcl_report(snp: SimulatedSnp, ak: rsa.RSAPublicKey, vm_id: str) -> bytes:
    """An HCL report in Azure's layout (`duet.attestation.azure.hcl`), SNP type, SHA-256."""
    claims = _runtime_claims(ak, vm_id)
    return _hcl(snp.report(hashlib.sha256(claims).digest(), measurement=bytes(48)), REPORT_TYPE_SNP, claims)


def tdreport(report_data: bytes, *, mrtd: bytes = TD_MRTD, rtmrs: tuple[bytes, ...] = TD_RTMRS) -> bytes:
    """A SIMULATED TDREPORT_STRUCT (1024 bytes), as the TDX module writes one for
    TDG.MR.REPORT: REPORTMACSTRUCT (report type 0x81, CPUSVN, the hashes of TEE_TCB_INFO and
    TDINFO, REPORTDATA at 128, a MAC only the platform could check: random here),
    TEE_TCB_INFO at 256 (the SIMULATED TDX module of `duet.attestation.simulated.tdx`), and
    TDINFO at 512 (attributes SEPT_VE_DISABLE, XFAM, MRTD, MRCONFIGID, MROWNER,
    MROWNERCONFIG, RTMR0-3, SERVTD_HASH) — the fields a TD quote repeats
    (`duet.attestation.azure.hcl.parse_tdreport`)."""
    assert len(report_data) == 64 and len(mrtd) == 48 and len(rtmrs) == 4
    tdinfo = (TD_ATTR_SEPT_VE_DISABLE.to_bytes(8, "little") + XFAM + mrtd + bytes(48 * 3) + b"".join(rtmrs)
              + bytes(48)).ljust(512, b"\0")
    tee_tcb_info = ((0x301FF).to_bytes(8, "little") + TEE_TCB_SVN + MR_SEAM + bytes(48) + bytes(8)).ljust(239, b"\0")
    mac_struct = (bytes([0x81, 0, 0, 0]) + bytes(12) + bytes(16) + hashlib.sha384(tee_tcb_info).digest()
                  + hashlib.sha384(tdinfo).digest() + report_data + bytes(32) + os.urandom(32))
    report = mac_struct + tee_tcb_info + bytes(17) + tdinfo
    assert len(report) == TDREPORT_LEN
    return report


def hcl_tdx_report(ak: rsa.RSAPublicKey, vm_id: str) -> tuple[bytes, bytes]:
    """An HCL report in Azure's layout, TDX type, SHA-256, and the TDREPORT it carries,
    whose REPORTDATA is the SHA-256 of the runtime claims (zero-padded to 64 bytes)."""
    claims = _runtime_claims(ak, vm_id)
    td = tdreport(hashlib.sha256(claims).digest().ljust(64, b"\0"))
    return _hcl(td, REPORT_TYPE_TDX, claims), td


def td_quote(tdx: SimulatedTdx, report: bytes) -> bytes:
    """What Azure's TD quote service makes of a TDREPORT: a TD quote (SIMULATED, under
    `tdx`'s development DCAP root) whose body repeats the report's TDINFO and REPORTDATA."""
    td = parse_tdreport(report)
    return tdx.quote(td.report_data, mrtd=td.mr_td, rtmrs=td.rtmrs, mrconfigid=td.mr_config_id,
                     mrowner=td.mr_owner, mrownerconfig=td.mr_owner_config,
                     td_attributes=int.from_bytes(td.td_attributes, "little"))


class AzureVtpmTwin:
    """`snp`: an Azure SEV-SNP CVM's vTPM (the HCL report's SNP report signed by its dev
    VCEK, THIM serving its chain); or `tdx` (and `snp` None): an Azure TDX CVM's (the HCL
    report carries a TDREPORT, and IMDS's TD quote service turns it into a TD quote under
    that platform's dev DCAP root)."""

    def __init__(self, workdir: Path, snp: SimulatedSnp | None, vm_id: str, *, event_log: Path | None = None,
                 tdx: SimulatedTdx | None = None) -> None:
        if (snp is None) == (tdx is None):
            raise ValueError("an Azure vTPM twin is either SEV-SNP (snp) or TDX (tdx)")
        self.dir = workdir
        self.snp = snp
        self.tdx = tdx
        self.kind = "azure-tdx" if tdx is not None else "azure-snp"
        #: TDX: the TDREPORT the HCL report carries (set by provisioning); the TD quote
        #: service quotes this report only, as the platform's quoting enclave accepts only
        #: reports whose MAC the CPU made.
        self.tdreport: bytes | None = None
        #: TDX, an attack: the TD quote service answers with this quote (another TD's)
        #: instead of one of the report it was sent.
        self.answer_with: bytes | None = None
        self.vm_id = vm_id
        # The swtpm TCTI finds the control channel at the server port + 1.
        self.port = _port_pair()
        self.ctrl_port = self.port + 1
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.imds: ThreadingHTTPServer | None = None
        self.imds_requests: list[dict[str, str]] = []
        self.vtpm_ca = SimulatedVtpmCa()
        self.event_log = event_log or self.dir / "binary_bios_measurements"

    def tpm(self, *args: str) -> bytes:
        r = subprocess.run(list(args), capture_output=True, env={**os.environ, "TPM2TOOLS_TCTI": self.tcti},
                           cwd=self.dir, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {r.stderr.decode(errors='replace')[-500:]}")
        return r.stdout

    def start(self, *, ak_in_claims: rsa.RSAPublicKey | None = None, ak_cert_for: rsa.RSAPublicKey | None = None,
              ak_cert: bool = True) -> AzureVtpmTwin:
        """`ak_in_claims`: put another key than the TPM's AK in the runtime claims (an attack);
        `ak_cert_for`: certify another key than the AK in NV 0x01C101D0 (an attack);
        `ak_cert`: False leaves that index undefined."""
        try:
            self._provision(ak_in_claims, ak_cert_for, ak_cert)
            self._boot()
            self.serve_imds()
            return self
        except BaseException:
            self.stop()
            raise

    def provision(self) -> None:
        """Provision the vTPM as Azure's paravisor does, then stop this swtpm: its state
        directory is then a machine's TPM (tests/providers/azure_machine.py), whose firmware
        and kernel measure the boot themselves."""
        try:
            self._provision(None, None, True)
        finally:
            proc, self.proc = self.proc, None
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)

    def _provision(self, ak_in_claims: rsa.RSAPublicKey | None, ak_cert_for: rsa.RSAPublicKey | None,
                   ak_cert: bool) -> None:
        state = self.dir / "tpmstate"
        state.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server", f"type=tcp,port={self.port}",
             "--ctrl", f"type=tcp,port={self.ctrl_port}", "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.tpm("tpm2_getcap", "properties-fixed")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # No resource manager between tpm2-tools and swtpm: flush transient objects after
        # each step, as the kernel's /dev/tpmrm0 would.
        self.tpm("tpm2_createprimary", "-C", "e", "-g", "sha256", "-G", "rsa", "-c", "primary.ctx")
        self.tpm("tpm2_flushcontext", "-t")
        self.tpm("tpm2_create", "-C", "primary.ctx", "-G", "rsa2048:rsassa:null", "-g", "sha256", "-a",
                 "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
                 "-u", "ak.pub", "-r", "ak.priv")
        self.tpm("tpm2_flushcontext", "-t")
        self.tpm("tpm2_flushcontext", "-s")
        self.tpm("tpm2_load", "-C", "primary.ctx", "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx")
        self.tpm("tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", AK_HANDLE)
        self.tpm("tpm2_flushcontext", "-t")
        self.tpm("tpm2_readpublic", "-c", AK_HANDLE, "-f", "pem", "-o", "ak.pem")
        ak = serialization.load_pem_public_key((self.dir / "ak.pem").read_bytes())
        assert isinstance(ak, rsa.RSAPublicKey)
        if self.tdx is not None:
            report, self.tdreport = hcl_tdx_report(ak_in_claims or ak, self.vm_id)
        else:
            assert self.snp is not None
            report = hcl_report(self.snp, ak_in_claims or ak, self.vm_id)
        (self.dir / "hcl.bin").write_bytes(report)
        self.tpm("tpm2_nvdefine", HCL_INDEX, "-C", "o", "-s", str(len(report)), "-a",
                 "ownerread|ownerwrite|authread|authwrite")
        self.tpm("tpm2_nvwrite", HCL_INDEX, "-C", "o", "-i", "hcl.bin")
        if ak_cert:
            der = self.vtpm_ca.ak_certificate(ak_cert_for or ak, self.vm_id).public_bytes(serialization.Encoding.DER)
            (self.dir / "akcert.bin").write_bytes(der.ljust(AK_CERT_INDEX_SIZE, b"\0"))
            self.tpm("tpm2_nvdefine", AK_CERT_INDEX, "-C", "o", "-s", str(AK_CERT_INDEX_SIZE), "-a",
                     "ownerread|ownerwrite|authread|authwrite")
            self.tpm("tpm2_nvwrite", AK_CERT_INDEX, "-C", "o", "-i", "akcert.bin")

    def _boot(self) -> None:
        """Extend the PCRs as the SIMULATED boot did, and write its event log."""
        for pcr, etype, data in BOOT:
            self.tpm("tpm2_pcrextend", f"{pcr}:sha256={hashlib.sha256(data).hexdigest()}")
        self.event_log.write_bytes(build_tcg2_log(BOOT))
        self.event_log.chmod(0o644)

    def serve_imds(self) -> None:
        """IMDS on a loopback port: SEV-SNP, THIM's `GET /metadata/THIM/amd/certification`
        (with `Metadata: true`) serves the VCEK chain; TDX, `POST /acc/tdquote`
        (`{"report": base64url(TDREPORT)}`) answers `{"quote": base64url(TD quote)}`, as
        Azure's TD quote service does. Every request is recorded."""
        twin = self
        thim = json.dumps({"vcekCert": self._pem(self.snp.vcek_der).decode(),
                           "certificateChain": self.snp.cert_chain_pem.decode()}).encode() if self.snp else None

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                twin.imds_requests.append({"path": self.path, "metadata": self.headers.get("Metadata", "")})
                ok = thim is not None and self.path == "/metadata/THIM/amd/certification" \
                    and self.headers.get("Metadata") == "true"
                self._send(200 if ok else 400, thim if ok and thim is not None else b"{}")

            def do_POST(self) -> None:
                twin.imds_requests.append({"path": self.path, "metadata": self.headers.get("Metadata", "")})
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                quote = twin._td_quote(raw) if self.path == "/acc/tdquote" else None
                self._send(200 if quote is not None else 400,
                           json.dumps({"quote": _b64url(quote)}).encode() if quote is not None else b"{}")

        self.imds = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.imds.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _td_quote(self, request: bytes) -> bytes | None:
        """The TD quote service: a quote of the TDREPORT in the request, if it is this
        twin's (else None: refused, as a report the CPU did not MAC is)."""
        if self.tdx is None or self.tdreport is None:
            return None
        try:
            body = json.loads(request)
            report = base64.urlsafe_b64decode(str(body["report"]) + "=" * (-len(str(body["report"])) % 4))
        except (ValueError, KeyError, TypeError):
            return None
        if report != self.tdreport:
            return None
        return self.answer_with if self.answer_with is not None else td_quote(self.tdx, report)

    @staticmethod
    def _pem(der: bytes) -> bytes:

        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)

    def command(self, nonce: bytes, pub: Path) -> str:
        cmd = collect_command(self.kind, nonce, sudo=False, pub=str(pub))
        assert self.imds is not None
        for real, twin, n in (("env -i PATH=", f"env -i TPM2TOOLS_TCTI={self.tcti} PATH=", 1),
                              ("http://169.254.169.254", f"http://127.0.0.1:{self.imds.server_address[1]}", 1),
                              (TPM_EVENT_LOG, str(self.event_log), 2)):
            assert cmd.count(real) == n, real
            cmd = cmd.replace(real, twin)
        return cmd

    def run(self, nonce: bytes, pub: Path) -> str:
        r = subprocess.run(["sh", "-c", self.command(nonce, pub)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"collection failed: {r.stderr[-800:]}")
        return r.stdout

    def stop(self) -> None:
        if self.imds is not None:
            self.imds.shutdown()
            self.imds.server_close()
            self.imds = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None
