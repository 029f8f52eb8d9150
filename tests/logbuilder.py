"""Hand-built CVM logs for the user-side checks: an honest life, which tests then break.

Keys come from a seed, so a log built twice from the same seed has the same identities.
Evidence is SIMULATED SEV-SNP from a `SimulatedSnp` the caller supplies.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.attestation import SimulatedSnp
from duet.attestation.binding import cvm_report_data
from duet.client.audit import Check, audit_log
from duet.client.cvm_checks import evidence_checks, history_checks, lockdown_checks, time_checks
from duet.client.expectations import UserExpectations
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from duet.ledger.policy import DEFAULT_POLICY, parse_policy

MEASUREMENT = bytes(range(48))
CVM_ID = "0123456789abcdef"
T0 = 1_780_000_000


def _key(seed: bytes, what: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed + what).digest())


def host_key_for(seed: bytes) -> str:
    """The OpenSSH host key line of the CVM a log built from `seed` pins."""
    host = _key(seed, b"host").public_key()
    return host.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


class LogBuilder:
    def __init__(
        self, snp: SimulatedSnp, *, seed: bytes = b"duet-test", provider: str = "local",
        tee: str = "simulated-snp", evidence_kind: str | None = "simulated-snp",
        binding: str | None = "host_data", host_data: str = "5a" * 32, offset: float = 0.0,
    ) -> None:
        self.snp = snp
        self.owner = _key(seed, b"owner")
        self.controller = _key(seed, b"controller")
        self.controller_id = keys.key_id(self.controller.public_key())
        self.controller_key = keys.public_b64(self.controller.public_key())
        self.host_key = host_key_for(seed)
        self.host_data = host_data
        self.kind = evidence_kind or tee
        self.entries: list[dict[str, Any]] = []
        self._n = 0
        #: Seconds added to the real clock for entry times and iats (`advance`): a log can
        #: span months of log time while every entry stays in the past.
        self.offset = offset
        policy = parse_policy(DEFAULT_POLICY)
        genesis: dict[str, Any] = {
            "cvm_id": CVM_ID, "origin": f"duet/{self.controller_id}/{CVM_ID}",
            "controller_id": self.controller_id, "controller_key": self.controller_key,
            "owner_keys": [keys.public_b64(self.owner.public_key())], "policy": policy.text,
            "policy_sha256": policy.sha256, "tee": tee, "provider": provider, "spec": {},
            "host_data": host_data,
        }
        if evidence_kind is not None:
            genesis["evidence_kind"] = evidence_kind
        if binding is not None:
            genesis["instance_binding"] = binding
        self.add("genesis", **genesis)

    # --- primitives -------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the log's clock (entry times, iats) forward."""
        self.offset += seconds

    def add(self, type: str, **fields: Any) -> int:
        when = datetime.fromtimestamp(self.now(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.entries.append({"v": 1, "type": type, "time": when, **fields})
        return len(self.entries) - 1

    def intent(self, op: str, args: dict[str, Any], *, cvm: str | None = CVM_ID, nonce: str | None = None,
               key: Ed25519PrivateKey | None = None, iat: int | None = None) -> int:
        """An owner intent, signed now by the log's clock (`iat`: another time)."""
        self._n += 1
        key = key or self.owner
        jws = sign_intent(key, op=op, aud=self.controller_id, args=args,
                          cvm=None if op in ("cvm.create", "owner.keys") else cvm,
                          iat=int(self.now()) if iat is None else iat,
                          nonce=nonce or f"nonce-{self._n:04d}-abcdefghijkl")
        return self.add("intent", jws=jws, op=op, kid=keys.key_id(key.public_key()))

    def command(self, text: str, intent_index: int, *, action: str | None = None, builtin: bool = False,
                result: bool = True) -> int:
        fields: dict[str, Any] = {"command": text, "intent_index": intent_index, "timeout_s": 60.0}
        if action is not None:
            fields["action"] = action
        if builtin:
            fields["builtin"] = True
        i = self.add("command", **fields)
        if result:
            self.result(i)
        return i

    def result(self, command_index: int, out: bytes = b"ok\n") -> int:
        return self.add("result", command_index=command_index, exit_status=0, duration_ms=1.0,
                        stdout=out.decode(), stdout_encoding="utf-8", stdout_bytes=len(out),
                        stdout_sha256=hashlib.sha256(out).hexdigest(), stdout_truncated=False,
                        stderr="", stderr_encoding="utf-8", stderr_bytes=0,
                        stderr_sha256=hashlib.sha256(b"").hexdigest(), stderr_truncated=False)

    def evidence(self, purpose: str, intent_index: int, *, report_host_data: str | None = None,
                 link: bool = True, kind: str | None = None) -> int:
        """The attest command, its result, and the evidence entry pointing to it."""
        nonce = self.evidence_nonce(intent_index)
        ci = self.command(f"collect-evidence {nonce.hex()}", intent_index, action="attest", builtin=True)
        rd = cvm_report_data(nonce, self.host_key)
        hd = bytes.fromhex(report_host_data if report_host_data is not None else self.host_data)
        report = self.snp.report(rd, measurement=MEASUREMENT, host_data=hd)
        fields: dict[str, Any] = {
            "kind": kind or self.kind, "purpose": purpose, "nonce": nonce.hex(),
            "evidence": base64.b64encode(report).decode(), "report_data": rd.hex(),
            "binds": {"report_data": "SHA-512(nonce || SSH host key blob)"},
            "collateral": {"vcek": base64.b64encode(self.snp.vcek_der).decode(),
                           "cert_chain": self.snp.cert_chain_pem.decode()},
        }
        if link:
            fields["command_index"] = ci
        return self.add("evidence", **fields)

    def evidence_nonce(self, intent_index: int) -> bytes:
        """As the controller makes them (ledger/evidence_nonce.py): the intent's index,
        then 24 bytes (deterministic here)."""
        self._n += 1
        return intent_index.to_bytes(8, "big") + hashlib.sha256(b"nonce%d" % self._n).digest()[:24]

    def lockdown(self, purpose: str, *, ok: bool = True) -> int:
        return self.add("lockdown", purpose=purpose, where="test", ok=ok,
                        checks=[{"name": "password_auth_off", "command": "sshd -T", "output": "", "ok": ok}])

    def snapshot(self, intent_index: int) -> int:
        return self.command("uname -a", intent_index, action="snapshot", builtin=True)

    def enter_service(self, intent_index: int, epoch: int, *, lockdown: bool = True, evidence: bool = True,
                      snapshot: bool = True) -> int:
        """What earns in-service after its cvm.mode intent: lockdown, fresh evidence, snapshot."""
        if lockdown:
            self.lockdown("in-service")
        if evidence:
            self.evidence("in-service", intent_index)
        if snapshot:
            self.snapshot(intent_index)
        return self.mode("in-service", "in-update", epoch)

    def mode(self, new: str, previous: str, epoch: int) -> int:
        return self.add("mode", mode=new, previous=previous, epoch=epoch)

    # --- an honest life ---------------------------------------------------------------

    def honest_life(self) -> LogBuilder:
        """create, provision, evidence, in-update; one command; in-service with evidence."""
        create = self.intent("cvm.create", {"provider": "local"})
        self.add("provisioned", instance_id=CVM_ID, host="127.0.0.1", port=2222, user="duet",
                 host_key=self.host_key, host_key_sha256=entries.sha256_hex(self.host_key), launch={})
        self.evidence("provisioning", create)
        self.mode("in-update", "provisioning", 0)
        run = self.intent("cvm.run", {"command": "echo hello"})
        self.command("echo hello", run)
        service = self.intent("cvm.mode", {"mode": "in-service"})
        self.enter_service(service, 1)
        return self

    def leaves(self) -> list[bytes]:
        return [entries.encode(e) for e in self.entries]


def all_checks(
    leaves: list[bytes], *, controller_id: str, controller_key: str, expect: UserExpectations | None = None,
    trust_simulated: bool = True, snp_arks: tuple[bytes, ...] | None = None, now: datetime | None = None,
) -> dict[str, Check]:
    """Every check `duet verify` runs on a log's contents, by name."""
    audit = audit_log(leaves, controller_id=controller_id, controller_key_b64=controller_key, cvm_id=CVM_ID)
    checks = list(audit.checks)
    if all(c.ok for c in audit.checks if c.name == "genesis"):
        ev, _ = evidence_checks(audit.decoded, audit.state, trust_simulated=trust_simulated,
                                now=now or datetime.now().astimezone(), expect=expect, snp_arks=snp_arks)
        checks += ev + history_checks(audit.decoded, expect) + lockdown_checks(audit.decoded, audit.state, expect)
    checks += time_checks(audit.decoded, now or datetime.now().astimezone())
    return {c.name: c for c in checks}
