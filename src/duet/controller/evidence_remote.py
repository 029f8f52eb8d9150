"""Evidence and lockdown for real CVMs (qemu, Azure, Google Cloud), over the SSH session.

Same contract as the local collector: every command sent to the CVM is logged first;
lockdown checks run under `sudo -n` as the provisioning user; evidence is fetched with
`duet.cvm.guest.collect` and handed, as the entry it would become, to the shared check in
`Collector.attest` (the registry in `duet.attestation.cvm_kinds`, which users run too):
signature chains with AMD's / Intel's roots, report data = SHA-512(nonce ‖ the pinned
host key blob), and the instance binding the provider declared. Whatever cannot be
checked is refused, and the CVM is not made usable (fail closed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from duet.attestation import AttestationError, cvm_kinds
from duet.attestation.binding import cvm_report_data
from duet.controller.evidence import Collector, CvmPort, Fetched, Inspector
from duet.cvm.guest.collect import (
    Collected,
    CollectError,
    azure_envelope,
    collect_command,
    maa_token,
    parse_cert_table,
    parse_output,
)
from duet.cvm.lockdown import Lockdown, remote_params, run_remote
from duet.tee.clock import TrustedClock

#: Fetches DCAP collateral for a TDX quote (e.g. from a PCCS); None: TDX is refused.
CollateralSource = Callable[[bytes], Any]


def _pem(der: bytes) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


class RemoteEvidence(Collector):
    lockdown_where = "over the controller's SSH session, with sudo"

    def __init__(
        self, *, tdx_collateral: CollateralSource | None = None, trusted_arks: list[bytes] | None = None,
        inspector: Inspector | None = None, maa_url: str | None = None, maa_jwks: Mapping[str, Any] | None = None,
        trusted_tdx_roots: list[bytes] | None = None,
    ) -> None:
        """`trusted_arks` / `trusted_tdx_roots`: other SNP / DCAP roots than AMD's and
        Intel's (twins, private roots: the provider settings `snp_arks` / `tdx_roots`,
        refused under --tee gramine; evidence under them says SIMULATED);
        `inspector`: the provider's control-plane reader (Azure), judged on every entry into
        in-service (`Collector.control_plane`); `maa_url` / `maa_jwks`: the owner's MAA
        instance and its signing keys (the provider's settings), for the MAA kinds: the
        controller checks tokens against these keys only, as users check them against theirs."""
        self.tdx_collateral = tdx_collateral
        self.inspector = inspector
        self.maa_url = maa_url
        self.maa_jwks = dict(maa_jwks) if maa_jwks is not None else None
        maa = cvm_kinds.MaaPins(issuer=maa_url, jwks=self.maa_jwks) if maa_url and maa_jwks is not None else None
        self.trust = cvm_kinds.Trust(snp_arks=tuple(trusted_arks) if trusted_arks is not None else None, maa=maa,
                                     tdx_roots=tuple(trusted_tdx_roots) if trusted_tdx_roots is not None else None)

    async def run_lockdown(self, port: CvmPort, intent_index: int | None) -> Lockdown:
        """The gatherer runs in the guest as one logged builtin command; its output is the facts.
        Azure's osProfile can only put a key in the user's home: cloud-init moves it to the
        root-owned file and removes it, and the judge checks that it is gone (every provider)."""
        rec = port.rec

        async def runner(command: str) -> tuple[int, str]:
            outcome = await port.execute(command, timeout=120.0, action="lockdown", intent_index=intent_index)
            r = outcome.result
            assert r is not None
            return (r.exit_status if r.exit_status is not None else 255), r.stdout.decode("utf-8", "replace")

        params = remote_params(user=str(rec.user), controller_key=port.client_key_line(),
                               must_be_absent=[f"/home/{rec.user}/.ssh/authorized_keys"])
        return await run_remote(params, runner)

    async def fetch(self, port: CvmPort, kind: str, nonce: bytes, *, intent_index: int | None) -> Fetched:
        try:
            command = collect_command(kind, nonce, maa=self.maa_url)
        except ValueError as exc:
            raise self.refuse(port, str(exc)) from None
        outcome = await port.execute(command, timeout=120.0, action="attest", intent_index=intent_index)
        r = outcome.result
        if r is None or r.exit_status != 0:
            raise self.refuse(port, "the guest produced no evidence" + (
                f": {r.stderr.decode('utf-8', 'replace').strip()[:300]}" if r else ""))
        assert port.rec.host_key is not None
        try:
            fields = self.entry_fields(kind, parse_output(r.stdout.decode("utf-8", "replace")),
                                       nonce=nonce, host_key=port.rec.host_key)
        except (KeyError, CollectError, AttestationError, ValueError) as exc:
            raise self.refuse(port, f"the evidence does not verify: {exc}") from None
        return Fetched(outcome.command_index, fields)

    def entry_fields(self, kind: str, got: Collected, *, nonce: bytes, host_key: str) -> dict[str, Any]:
        """The evidence entry's `evidence` / `collateral` from the guest's output (pure).

        The guest's own statement of its report data and host key must already match
        the pinned key; the report itself is checked by the registry afterwards."""
        expected_rd = cvm_report_data(nonce, host_key)
        if got.report_data != expected_rd or got.host_key.split()[:2] != host_key.split()[:2]:
            raise CollectError("it is not bound to the SSH host key the controller is connected to "
                               "(a man in the middle, or another machine, answered)")
        if kind == cvm_kinds.CvmKind.SNP:
            raw = got.blobs["outblob"]
            certs = parse_cert_table(got.blobs["auxblob"]) if "auxblob" in got.blobs else {}
            vcek = certs.get("vcek") or certs.get("vlek")
            if vcek is None:
                raise CollectError("the host supplied no VCEK/VLEK with the report (extended report); "
                                   "without it the report cannot be verified offline")
            chain = b"".join(_pem(certs[n]) for n in ("ask", "ark") if n in certs)
            return {"evidence": base64.b64encode(raw).decode(),
                    "collateral": {"vcek": base64.b64encode(vcek).decode(), "cert_chain": chain.decode()}}
        if kind == cvm_kinds.CvmKind.TDX:
            raw = got.blobs["outblob"]
            if self.tdx_collateral is None:
                raise CollectError("no collateral source (PCCS) is configured, so a TDX quote cannot be verified")
            collateral = self.tdx_collateral(raw)
            tdx_collateral: dict[str, Any] = dict(collateral) if isinstance(collateral, dict) else {}
            if got.blobs.get("ccel"):
                # The TD's event log travels beside the quote; every verifier replays it.
                tdx_collateral["ccel"] = base64.b64encode(got.blobs["ccel"]).decode()
            return {"evidence": base64.b64encode(raw).decode(), "collateral": tdx_collateral}
        if kind in (cvm_kinds.CvmKind.AZURE_SNP, cvm_kinds.CvmKind.AZURE_TDX):
            envelope = azure_envelope(got)
            az_collateral: dict[str, Any] = {"envelope_version": 1}
            if kind == cvm_kinds.CvmKind.AZURE_TDX:
                td_quote = envelope.get("td_quote")
                if not isinstance(td_quote, str):
                    raise CollectError("the Azure TDX guest returned no TD quote")
                if self.tdx_collateral is None:
                    raise CollectError("an Azure TDX CVM's TD quote needs collateral (PCCS), none is configured")
                raw_quote = base64.urlsafe_b64decode(td_quote + "=" * (-len(td_quote) % 4))
                az_collateral["tdx"] = self.tdx_collateral(raw_quote)
            return {"evidence": base64.b64encode(json.dumps(envelope, sort_keys=True).encode()).decode(),
                    "collateral": az_collateral,
                    "binds": {"tpm_extra_data": "first 32 bytes of the report data"}}
        if kind in (cvm_kinds.CvmKind.AZURE_SNP_MAA, cvm_kinds.CvmKind.AZURE_TDX_MAA):
            if self.maa_url is None or self.maa_jwks is None:
                raise CollectError("MAA evidence needs the MAA instance and its keys in the provider's settings "
                                   "(maa_url, maa_jwks)")
            token = maa_token(got)
            # The JWKS the controller checked the token with travels beside it, for users who
            # pin MAA's keys by fingerprint (cvm.maa_signing_keys); it is trusted by no one.
            return {"evidence": base64.b64encode(token.encode()).decode(),
                    "collateral": {"maa_url": self.maa_url, "jwks": self.maa_jwks},
                    "binds": {"maa_user_data": "the report data, as the vTPM's user data in MAA's x-ms-runtime"}}
        raise CollectError(f"no evidence collection for kind {kind!r}")

    def verify_collected(
        self, kind: str, got: Collected, *, nonce: bytes, host_key: str, binding: str = "none",
        host_data: str | None = None, instance_id: str | None = None, clock: TrustedClock | None = None,
    ) -> dict[str, Any]:
        """Entry fields from collected output, checked by the registry (raises). `clock`: the
        controller's trusted clock (`tee/clock.py`), whose lower bound validity checks use."""
        fields = self.entry_fields(kind, got, nonce=nonce, host_key=host_key)
        candidate = {"kind": kind, "nonce": nonce.hex(), **fields}
        now = (clock or TrustedClock()).now()
        verified = cvm_kinds.verify_evidence(candidate, host_key=host_key, now=now, trust=self.trust,
                                             binding=binding, host_data=host_data, instance_id=instance_id)
        candidate["claims"] = dict(cvm_kinds.spec_of(kind).claims(verified.report))
        return candidate

