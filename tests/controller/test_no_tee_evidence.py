"""A CVM launched without a TEE (the owner allowed it by name) has no evidence; the
controller logs an `evidence` entry of kind `none` saying so. That entry still answers the
intent it was made for: its nonce commits to that intent, as every evidence nonce does
(ledger/evidence_nonce.py), so the user's replay sees the in-service transition looked
(and every verifier then fails the evidence check on kind `none`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from duet.controller.evidence_remote import RemoteEvidence
from duet.ledger import entries, evidence_nonce


def test_the_no_tee_evidence_entry_commits_to_its_intent() -> None:
    appended: list[entries.Entry] = []

    def append(items: list[entries.Entry]) -> int:
        appended.extend(items)
        return len(appended)

    rec = SimpleNamespace(kind="none", host_key="ssh-ed25519 AAAA", binding="none")
    port = SimpleNamespace(rec=rec, append=append)
    asyncio.run(RemoteEvidence().attest(port, intent_index=12, purpose="in-service"))  # type: ignore[arg-type]
    (evidence,) = appended
    assert isinstance(evidence, entries.EvidenceEntry) and evidence.kind == "none"
    assert evidence_nonce.intent_of(evidence.nonce) == 12
    assert "without a TEE" in str(evidence.extra)
