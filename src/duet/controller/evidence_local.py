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
import json
import secrets
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from duet.attestation import AttestationError, SimulatedSnp, verify_snp_report
from duet.controller import errors
from duet.cvm.local import LocalProvider
from duet.cvm.lockdown import host_runner, local_commands, run_checks
from duet.ledger.policy import SNAPSHOT_COMMANDS

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.state import CvmRecord
    from duet.cvm.ssh import CvmConnection


def host_key_blob(line: str) -> bytes:
    """The SSH wire-format public key: the base64 field of an OpenSSH key line."""
    return base64.b64decode(line.split()[1], validate=True)


class EvidenceRefused(errors.DuetError):
    """The CVM could not show evidence the controller accepts: it is not made usable."""

    code = "evidence_refused"


class LockdownFailed(errors.DuetError):
    code = "lockdown_failed"


class LocalEvidence:
    def __init__(self, snp: SimulatedSnp, provider: LocalProvider) -> None:
        self.snp = snp
        self.provider = provider

    # ------------------------------------------------------------------ hooks

    async def after_provisioning(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection) -> None:
        await self.lockdown(ctl, rec, purpose="provisioning")
        await self.attest(ctl, rec, intent_index=1, purpose="provisioning")

    async def on_enter_service(self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, intent_index: int) -> None:
        await self.lockdown(ctl, rec, purpose="in-service")
        await self.attest(ctl, rec, intent_index=intent_index, purpose="in-service")
        await self.snapshot(ctl, rec, intent_index=intent_index)

    async def builtin(
        self, ctl: Controller, rec: CvmRecord, conn: CvmConnection, name: str, *, intent_index: int | None
    ) -> int:
        if name == "attest":
            return await self.attest(ctl, rec, intent_index=intent_index, purpose="attest")
        if name == "snapshot":
            return await self.snapshot(ctl, rec, intent_index=intent_index)
        if name == "lockdown":
            return await self.lockdown(ctl, rec, purpose="action")
        raise errors.InvalidRequest(f"unknown builtin action {name!r}")

    # ------------------------------------------------------------------ steps

    async def lockdown(self, ctl: Controller, rec: CvmRecord, *, purpose: str) -> int:
        ctx = self.provider.lockdown_context(rec.id)
        akf = str(ctx["authorized_keys_file"])
        client_key = ctl.client_public_line(rec.id)
        results = await run_checks(local_commands(ctx), host_runner, controller_key=client_key, akf=akf)
        ok = all(r.ok for r in results)
        index = ctl.append(rec, [{
            "type": "lockdown",
            "purpose": purpose,
            "where": "host-side, as root (the local provider's CVM runs on this machine)",
            "checks": [r.to_json() for r in results],
            "ok": ok,
        }])
        if not ok:
            failed = "; ".join(f"{r.name}: {r.detail}" for r in results if not r.ok)
            ctl.append(rec, [{"type": "error", "code": "lockdown_failed", "message": failed}])
            raise LockdownFailed(f"lockdown checks failed: {failed}")
        return index

    async def attest(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None, purpose: str) -> int:
        nonce = secrets.token_bytes(32)
        tool = self.provider.platform_dir(rec.id) / "report_client.py"
        command = f"python3 {shlex.quote(str(tool))} {nonce.hex()}"
        outcome = await ctl.execute(rec, None, command, timeout=60.0, action="attest",
                                    intent_index=intent_index, builtin=True)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self._refuse(ctl, rec, "the guest produced no report"
                               + (f": {r.stderr.decode(errors='replace').strip()}" if r else ""))
        try:
            out = json.loads(r.stdout)
            report_raw = base64.b64decode(out["report"], validate=True)
            report = verify_snp_report(
                report_raw,
                vcek_der=self.snp.vcek_der,
                ask_pem=self.snp.cert_chain_pem,
                now=datetime.now(UTC),
                trusted_arks=[self.snp.ark_pem],
            )
        except (ValueError, KeyError, TypeError, AttestationError) as exc:
            raise self._refuse(ctl, rec, f"the guest's report does not verify: {exc}") from None
        assert rec.host_key is not None
        expected_rd = hashlib.sha512(nonce + host_key_blob(rec.host_key)).digest()
        if report.report_data != expected_rd:
            raise self._refuse(
                ctl, rec,
                "the report is not bound to the SSH host key the controller is connected to "
                "(a man in the middle, or another machine, answered)",
            )
        if report.host_data != rec.host_data:
            raise self._refuse(ctl, rec, "the report's HOST_DATA is not the value set at this CVM's launch")
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

    async def snapshot(self, ctl: Controller, rec: CvmRecord, *, intent_index: int | None) -> int:
        last = 0
        for command in SNAPSHOT_COMMANDS:
            outcome = await ctl.execute(rec, None, command, timeout=60.0, action="snapshot",
                                        intent_index=intent_index, builtin=True)
            last = outcome.result_index
        return last

    @staticmethod
    def _refuse(ctl: Controller, rec: CvmRecord, message: str) -> EvidenceRefused:
        ctl.append(rec, [{"type": "error", "code": "evidence_refused", "message": message}])
        return EvidenceRefused(message)

