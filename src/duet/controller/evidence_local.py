"""Evidence for `local` CVMs: lockdown checks, SIMULATED SEV-SNP reports, snapshots.

The controller asks the guest for a report over its own SSH session with a fresh nonce;
the guest binds the report to *its* SSH host key (report data = SHA-512(nonce ‖ host
key blob)), and the shared flow in `Collector.attest` accepts the evidence only if that
is the key the controller pinned and the report's HOST_DATA is the value it chose for
this CVM at launch (docs/invariants.md, invariant 3). Everything sent to the CVM is
logged as a `command` first; the evidence entry then carries the raw report and its
certificate chain, so users can re-verify it.
"""

from __future__ import annotations

import base64
import json
import shlex

from duet.attestation import SimulatedSnp, cvm_kinds
from duet.controller.evidence import Collector, CvmPort, Fetched
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import CheckResult, host_runner, local_commands, run_checks


class LocalEvidence(Collector):
    lockdown_where = "host-side, as root (the local provider's CVM runs on this machine)"

    def __init__(self, snp: SimulatedSnp, provider: LocalProvider) -> None:
        self.snp = snp
        self.provider = provider
        # The development ARK of this machine's simulated PSP, not the one in the output.
        self.trust = cvm_kinds.Trust(simulated=True, snp_arks=(snp.ark_pem,))

    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> list[CheckResult]:
        ctx = self.provider.lockdown_context(port.rec.id)
        return await run_checks(local_commands(ctx), host_runner, controller_key=port.client_key_line(),
                                akf=str(ctx["authorized_keys_file"]))

    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        tool = self.provider.platform_dir(port.rec.id) / "report_client.py"
        command = f"python3 {shlex.quote(str(tool))} {nonce.hex()}"
        outcome = await port.execute(command, timeout=60.0, action="attest", intent_index=intent_index)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(port, "the guest produced no report"
                              + (f": {r.stderr.decode(errors='replace').strip()}" if r else ""))
        try:
            out = json.loads(r.stdout)
            report_raw = base64.b64decode(out["report"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise self.refuse(port, f"the guest's report does not verify: {exc}") from None
        return Fetched(outcome.command_index, {
            "evidence": base64.b64encode(report_raw).decode(),
            "collateral": {
                "vcek": base64.b64encode(self.snp.vcek_der).decode(),
                "cert_chain": self.snp.cert_chain_pem.decode(),
                "simulated": True,
            },
        })
