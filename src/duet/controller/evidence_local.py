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
import shlex

from duet.attestation import SimulatedSnp, cvm_kinds
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.controller.evidence import Collector, CvmPort, Fetched
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import Lockdown, run_local
from duet.ledger import strictjson


class LocalEvidence(Collector):
    lockdown_where = "host-side, as root (the local provider's CVM runs on this machine)"

    def __init__(self, snp: SimulatedSnp, provider: LocalProvider, tdx: SimulatedTdx | None = None) -> None:
        self.snp = snp
        self.tdx = tdx
        self.provider = provider
        # The development roots of this machine's simulated platform, not the ones in the output.
        self.trust = cvm_kinds.Trust(simulated=True, snp_arks=(snp.ark_pem,),
                                     tdx_roots=(tdx.root_ca_der,) if tdx is not None else None)

    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> Lockdown:
        return await run_local(self.provider.lockdown_context(port.rec.id), port.client_key_line())

    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        tool = self.provider.platform_dir(port.rec.id) / "report_client.py"
        # Clean: no session environment, isolated Python (no site, no user site, no .pth).
        command = f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin python3 -I -S {shlex.quote(str(tool))} {nonce.hex()}"
        outcome = await port.execute(command, timeout=60.0, action="attest", intent_index=intent_index)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(port, "the guest produced no report"
                              + (f": {r.stderr.decode(errors='replace').strip()}" if r else ""))
        try:
            out = strictjson.loads_object(r.stdout, what="the guest's report reply")
            report_raw = base64.b64decode(out["report"], validate=True)
        except (ValueError, KeyError, TypeError, strictjson.JsonInputError) as exc:
            raise self.refuse(port, f"the guest's report does not verify: {exc}") from None
        if kind == cvm_kinds.CvmKind.SIMULATED_TDX and self.tdx is not None:
            # The TD quote with its DCAP collateral and the development root, all in the log.
            collateral: dict[str, object] = {**self.tdx.collateral(), "simulated": True,
                                             "root_ca": base64.b64encode(self.tdx.root_ca_der).decode()}
            if isinstance(out.get("ccel"), str):
                # The guest's event log (SIMULATED): every verifier replays it against the
                # quote's RTMRs, and a log that does not replay fails the evidence.
                collateral["ccel"] = out["ccel"]
        else:
            collateral = {"vcek": base64.b64encode(self.snp.vcek_der).decode(),
                          "cert_chain": self.snp.cert_chain_pem.decode(), "simulated": True}
        return Fetched(outcome.command_index, {"evidence": base64.b64encode(report_raw).decode(),
                                               "collateral": collateral})
