"""Azure TDX evidence as the guest collects it: the HCL report from the vTPM, its TDREPORT
sent to Azure's TD quote service, the TD quote beside it. Recorded outputs of a real Azure
TDX CVM (tests/attestation/vectors/azure/az-tdx-vtpm) stand in for the guest."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from duet.attestation.azure.evidence import check_azure_bindings, parse_azure_evidence
from duet.cvm.guest.collect import AZURE_TDX_QUOTE, azure_envelope, collect_command, parse_output

VEC = Path(__file__).resolve().parents[1] / "attestation" / "vectors" / "azure" / "az-tdx-vtpm"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _guest_output(td_quote_reply: bytes) -> str:
    q = json.loads((VEC / "tpm-quote-v1.json").read_text())
    pcrs = b"".join(bytes.fromhex(p) for p in q["pcrs"])
    lines = {
        "provider": "azure_vtpm",
        "report_data": "00" * 64,
        "hcl_report": base64.b64encode((VEC / "hcl-report.bin").read_bytes()).decode(),
        "tpm_message": base64.b64encode(bytes.fromhex(q["message"])).decode(),
        "tpm_signature": base64.b64encode(bytes.fromhex(q["signature"])).decode(),
        "tpm_pcrs": base64.b64encode(pcrs).decode(),
        "td_quote_json": base64.b64encode(td_quote_reply).decode(),
        "host_key": "ssh-ed25519 AAAA",
    }
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


def test_the_td_quote_travels_beside_the_hcl_report_and_binds() -> None:
    td_quote = (VEC / "td-quote.bin").read_bytes()
    envelope = azure_envelope(parse_output(_guest_output(json.dumps({"quote": _b64url(td_quote)}).encode())))
    ev = parse_azure_evidence(envelope)
    assert ev.td_quote == td_quote
    assert check_azure_bindings(ev, nonce=b"challenge").hcl.kind == "tdx"


def test_the_collection_command_asks_for_the_td_quote_only_on_tdx() -> None:
    tdx, snp = collect_command("azure-tdx", bytes(32)), collect_command("azure-snp", bytes(32))
    assert "/acc/tdquote" in tdx and "THIM" not in tdx
    assert "THIM" in snp and "/acc/tdquote" not in snp


def test_the_guest_sends_exactly_the_tdreport(tmp_path: Path) -> None:
    """The script's own extraction (run here with a stand-in curl) sends the 1024-byte
    TDREPORT that follows the HCL report's 32-byte header, base64url without padding."""
    hcl = (VEC / "hcl-report.bin").read_bytes()
    (tmp_path / "hcl").write_bytes(hcl)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "curl").write_text(f"#!/bin/sh\ncat > {tmp_path}/sent\necho '{{\"quote\":\"AAAA\"}}'\n")
    (bindir / "curl").chmod(0o755)
    script = AZURE_TDX_QUOTE.replace("$t/hcl", str(tmp_path / "hcl"))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    sent = json.loads((tmp_path / "sent").read_text())
    assert base64.urlsafe_b64decode(sent["report"] + "==") == hcl[32:32 + 1024]
    assert out.stdout.startswith("td_quote_json: ")


def test_both_vtpm_kinds_collect_the_ak_certificate_and_the_event_log() -> None:
    """SEV-SNP and TDX share the vTPM part of the collection: the AK certificate from NV
    0x01C101D0 when the vTPM has one, the TCG event log when the kernel exposes it."""
    from duet.cvm.guest.collect import AK_CERT_INDEX, TPM_EVENT_LOG

    for kind in ("azure-snp", "azure-tdx"):
        cmd = collect_command(kind, bytes(32)).replace("'\"'\"'", "'")
        assert f"tpm2_nvreadpublic {AK_CERT_INDEX}" in cmd and f"tpm2_nvread -C o {AK_CERT_INDEX}" in cmd
        assert f"[ -r {TPM_EVENT_LOG} ]" in cmd


def test_the_tdx_envelope_carries_them_and_a_log_that_does_not_replay_fails() -> None:
    """On the real Azure TDX vector: the envelope keeps the AK certificate and the event log
    as the guest sent them, and the log is replayed against the vTPM quote's PCRs like on
    SEV-SNP (a SIMULATED log that does not match the real PCRs is refused, naming the PCR)."""
    import pytest

    from duet.attestation.errors import BindingError
    from duet.attestation.tcg_eventlog import EV_SEPARATOR, build_tcg2_log

    td_quote = (VEC / "td-quote.bin").read_bytes()
    log = build_tcg2_log([(0, EV_SEPARATOR, bytes(4))])
    out = _guest_output(json.dumps({"quote": _b64url(td_quote)}).encode())
    out += f"ak_cert: {base64.b64encode(b'0' * 8).decode()}\nevent_log: {base64.b64encode(log).decode()}\n"
    envelope = azure_envelope(parse_output(out))
    ev = parse_azure_evidence(envelope)
    assert ev.event_log == log and ev.ak_cert == b"0" * 8
    with pytest.raises(BindingError, match="PCR 0: the event log replays to"):
        check_azure_bindings(ev, nonce=b"challenge")
