"""Evidence for `local` CVMs: lockdown checks, SIMULATED SEV-SNP reports, snapshots.

The controller asks the guest for a report over its own SSH session with a fresh nonce;
the guest binds the report to *its* SSH host key (report data = SHA-512(nonce ‖ host
key blob)), and the controller accepts the evidence only if that is the key it pinned
and the report's HOST_DATA is the value it chose for this CVM at launch (DESIGN.md
invariant 3). Everything sent to the CVM is logged as a `command` first; the evidence
entry then carries the raw report and its certificate chain, so users can re-verify it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shlex
from typing import TYPE_CHECKING

from duet.attestation import AttestationError, SimulatedSnp, verify_snp_report
from duet.attestation.binding import cvm_report_data
from duet.controller.evidence import Collector
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import Lockdown, run_local
from duet.ledger import strictjson

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.state import CvmRecord


class LocalEvidence(Collector):
    lockdown_where = "host-side, as root (the local provider's CVM runs on this machine)"

    def __init__(self, snp: SimulatedSnp, provider: LocalProvider) -> None:
        self.snp = snp
        self.provider = provider

    async def run_lockdown(self, ctl: Controller, rec: CvmRecord, intent_index: int | None) -> Lockdown:
        return await run_local(self.provider.lockdown_context(rec.id), ctl.client_public_line(rec.id))

    async def attest(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None, purpose: str) -> int:
        nonce = secrets.token_bytes(32)
        tool = self.provider.platform_dir(rec.id) / "report_client.py"
        # Clean: no session environment, isolated Python (no site, no user site, no .pth).
        command = f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -I -S {shlex.quote(str(tool))} {nonce.hex()}"
        outcome = await ctl.execute(rec, None, command, timeout=60.0, action="attest",
                                    intent_index=intent_index, builtin=True)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(ctl, rec, "the guest produced no report"
                               + (f": {r.stderr.decode(errors='replace').strip()}" if r else ""))
        try:
            out = strictjson.loads_object(r.stdout, what="the guest's report reply")
            report_raw = base64.b64decode(out["report"], validate=True)
            report = verify_snp_report(
                report_raw,
                vcek_der=self.snp.vcek_der,
                ask_pem=self.snp.cert_chain_pem,
                now=ctl.clock.now(),
                trusted_arks=[self.snp.ark_pem],
            )
        except (ValueError, KeyError, TypeError, AttestationError, strictjson.JsonInputError) as exc:
            raise self.refuse(ctl, rec, f"the guest's report does not verify: {exc}") from None
        assert rec.host_key is not None
        expected_rd = cvm_report_data(nonce, rec.host_key)
        if report.report_data != expected_rd:
            raise self.refuse(
                ctl, rec,
                "the report is not bound to the SSH host key the controller is connected to "
                "(a man in the middle, or another machine, answered)",
            )
        ctl.clock.observe_certificate(self.snp.vcek_der, "SIMULATED VCEK notBefore")
        if report.host_data != rec.host_data:
            raise self.refuse(ctl, rec, "the report's HOST_DATA is not the value set at this CVM's launch")
        return ctl.append(rec, [{
            "type": "evidence",
            "kind": "simulated-snp",
            "purpose": purpose,
            "command_index": outcome.command_index,
            "nonce": nonce.hex(),
            "evidence": base64.b64encode(report_raw).decode(),
            "report_data": expected_rd.hex(),
            "binds": {
                "report_data": "SHA-512(nonce || SSH host key blob)",
                "host_key_sha256": hashlib.sha256(rec.host_key.encode()).hexdigest(),
                "host_data": rec.host_data,
            },
            "collateral": {
                "vcek": base64.b64encode(self.snp.vcek_der).decode(),
                "cert_chain": self.snp.cert_chain_pem.decode(),
                "simulated": True,
            },
        }])
