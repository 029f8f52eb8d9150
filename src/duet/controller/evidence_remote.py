"""Evidence and lockdown for real CVMs (qemu, Azure, Google Cloud), over the SSH session.

Same contract as the local collector: every command sent to the CVM is logged first;
lockdown checks run under `sudo -n` as the provisioning user; evidence is collected with
`duet.cvm.guest.collect` and verified here before it is logged: signature chain with
AMD's / Intel's roots, report data = SHA-512(nonce ‖ the pinned host key blob) and, where
the platform sets it at launch (qemu's SNP HOST_DATA), the controller's per-CVM value.
Whatever cannot be checked is refused, and the CVM is not made usable (fail closed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from duet.attestation import AttestationError, verify_azure_evidence, verify_snp_report, verify_tdx_quote
from duet.attestation.binding import cvm_report_data
from duet.controller.evidence import Collector
from duet.cvm.guest.collect import (
    Collected,
    CollectError,
    azure_envelope,
    collect_command,
    parse_cert_table,
    parse_output,
)
from duet.cvm.lockdown import Lockdown, remote_params, run_remote
from duet.tee.clock import TrustedClock

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.state import CvmRecord

#: Fetches DCAP collateral for a TDX quote (e.g. from a PCCS); None: TDX is refused.
CollateralSource = Callable[[bytes], Any]


def _pem(der: bytes) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


class RemoteEvidence(Collector):
    lockdown_where = "over the controller's SSH session, with sudo"

    def __init__(
        self, *, tdx_collateral: CollateralSource | None = None, trusted_arks: list[bytes] | None = None
    ) -> None:
        """`trusted_arks`: other SNP roots than AMD's built-in ones (tests, private roots)."""
        self.tdx_collateral = tdx_collateral
        self.trusted_arks = trusted_arks

    async def run_lockdown(self, ctl: Controller, rec: CvmRecord, intent_index: int | None) -> Lockdown:
        """The gatherer runs in the guest as one logged builtin command; its output is the facts.
        Azure's osProfile can only put a key in the user's home: cloud-init moves it to the
        root-owned file and removes it, and the judge checks that it is gone (every provider)."""

        async def runner(command: str) -> tuple[int, str]:
            outcome = await ctl.execute(rec, None, command, timeout=120.0, action="lockdown",
                                        intent_index=intent_index, builtin=True)
            r = outcome.result
            assert r is not None
            return (r.exit_status if r.exit_status is not None else 255), r.stdout.decode("utf-8", "replace")

        params = remote_params(user=str(rec.user), controller_key=ctl.client_public_line(rec.id),
                               must_be_absent=[f"/home/{rec.user}/.ssh/authorized_keys"])
        return await run_remote(params, runner)

    async def attest(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None, purpose: str) -> int:
        kind = rec.tee
        if kind == "none":
            # A plain VM (the owner allowed it explicitly): nothing to attest. The log says
            # so, and every verifier fails the evidence check on it.
            return ctl.append(rec, [{
                "type": "evidence", "kind": "none", "purpose": purpose, "nonce": secrets.token_bytes(32).hex(),
                "evidence": "", "binds": {}, "reason": "launched without a TEE: no hardware evidence exists",
            }])
        if kind not in ("snp", "tdx", "azure-snp"):
            raise self.refuse(ctl, rec, f"no verifiable evidence for TEE kind {kind!r} on this provider")
        nonce = secrets.token_bytes(32)
        outcome = await ctl.execute(rec, None, collect_command(kind, nonce), timeout=120.0, action="attest",
                                    intent_index=intent_index, builtin=True)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(ctl, rec, "the guest produced no evidence" + (
                f": {r.stderr.decode('utf-8', 'replace').strip()[:300]}" if r else ""))
        assert rec.host_key is not None
        try:
            got = parse_output(r.stdout.decode("utf-8", "replace"))
            entry = self.verify_collected(kind, got, nonce=nonce, host_key=rec.host_key,
                                          host_data=rec.host_data if rec.provider == "qemu" else None,
                                          instance_id=rec.instance_id if rec.provider == "azure" else None,
                                          clock=ctl.clock)
        except (KeyError, CollectError, AttestationError, ValueError) as exc:
            raise self.refuse(ctl, rec, f"the evidence does not verify: {exc}") from None
        entry.update(purpose=purpose, command_index=outcome.command_index)
        return ctl.append(rec, [entry])

    def verify_collected(
        self, kind: str, got: Collected, *, nonce: bytes, host_key: str, host_data: str | None,
        instance_id: str | None = None, clock: TrustedClock | None = None,
    ) -> dict[str, Any]:
        """Check collected evidence and build its log entry (raises on any failure).

        `host_data`: the launch value to demand, where the platform sets it (qemu SNP);
        `instance_id`: the VM id the evidence must name, where it names one (Azure);
        `clock`: the controller's trusted clock, whose lower bound validity checks use
        and which learns the issue dates of what verified."""
        clock = clock or TrustedClock()
        expected_rd = cvm_report_data(nonce, host_key)
        if got.report_data != expected_rd or got.host_key.split()[:2] != host_key.split()[:2]:
            raise CollectError("it is not bound to the SSH host key the controller is connected to "
                               "(a man in the middle, or another machine, answered)")
        entry: dict[str, Any] = {
            "type": "evidence", "kind": kind, "nonce": nonce.hex(), "report_data": expected_rd.hex(),
            "binds": {"report_data": "SHA-512(nonce || SSH host key blob)",
                      "host_key_sha256": hashlib.sha256(host_key.encode()).hexdigest()},
        }
        if kind == "snp":
            raw = got.blobs["outblob"]
            certs = parse_cert_table(got.blobs["auxblob"]) if "auxblob" in got.blobs else {}
            vcek = certs.get("vcek") or certs.get("vlek")
            if vcek is None:
                raise CollectError("the host supplied no VCEK/VLEK with the report (extended report); "
                                   "without it the report cannot be verified offline")
            chain = b"".join(_pem(certs[n]) for n in ("ask", "ark") if n in certs) or None
            report = verify_snp_report(raw, vcek_der=vcek, ask_pem=chain, now=clock.now(),
                                       trusted_arks=self.trusted_arks)
            if report.report_data != expected_rd:
                raise CollectError("the report's REPORT_DATA is not what the guest said it asked for")
            if host_data is not None and report.host_data != host_data:
                raise CollectError("HOST_DATA is not the value the controller set at this CVM's launch")
            entry["collateral"] = {
                "vcek": base64.b64encode(vcek).decode(),
                "cert_chain": chain.decode() if chain else "",
            }
            entry["binds"]["host_data"] = report.host_data
            clock.observe_certificate(vcek, "VCEK notBefore")
        elif kind == "tdx":
            raw = got.blobs["outblob"]
            if self.tdx_collateral is None:
                raise CollectError("no collateral source (PCCS) is configured, so a TDX quote cannot be verified")
            collateral = self.tdx_collateral(raw)
            tdx = verify_tdx_quote(raw, collateral, now=clock.now())
            if tdx.report_data != expected_rd:
                raise CollectError("the quote's REPORTDATA is not what the guest said it asked for")
            if isinstance(collateral, dict):
                clock.observe_dcap_collateral(collateral)
            entry["collateral"] = collateral if isinstance(collateral, dict) else {}
        elif kind == "azure-snp":
            envelope = azure_envelope(got)
            az = verify_azure_evidence(envelope, now=clock.now(), nonce=expected_rd[:32],
                                       trusted_arks=self.trusted_arks)
            entry["collateral"] = {"envelope_version": 1}
            entry["binds"]["tpm_extra_data"] = "first 32 bytes of the report data"
            if instance_id is not None and (az.vm_id or "").lower() != instance_id.lower():
                raise CollectError(f"the evidence names VM {az.vm_id}, not the instance {instance_id} "
                                   "the controller created")
            entry["binds"]["vm_id"] = az.vm_id
            entry["evidence"] = base64.b64encode(json.dumps(envelope, sort_keys=True).encode()).decode()
            return entry
        else:
            raise CollectError(f"no verifier for evidence kind {kind!r}")
        entry["evidence"] = base64.b64encode(raw).decode()
        return entry
