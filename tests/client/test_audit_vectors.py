"""Audit vectors: each hand-built log holds one flaw, and exactly the checks named in the
vector fail on it; the honest log passes every check. The replay rules of the audit each
have a log that breaks them here."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from duet.client.expectations import UserExpectations
from logbuilder import all_checks

VECTORS = Path(__file__).resolve().parent / "vectors" / "audit"
FILES = sorted(VECTORS.glob("*.json"))

LOG_CHECKS = {"entries_wellformed", "genesis", "intents", "commands_closed", "mode_discipline", "evidence",
              "in_service_entry"}


def _run(v: dict[str, Any]) -> dict[str, Any]:
    expect = UserExpectations.model_validate(v["expect"]) if v["expect"] else None
    return all_checks([base64.b64decode(e) for e in v["entries"]], controller_id=v["controller_id"],
                      controller_key=v["controller_key"], expect=expect, trust_simulated=v["trust_simulated"])


def test_every_flaw_the_issue_names_has_a_vector() -> None:
    names = {f.stem for f in FILES}
    assert {"honest", "command_without_intent", "result_for_closed_command", "policy_change_in_service",
            "mode_change_without_intent", "unauthorised_owner_keys", "in_service_without_evidence",
            "evidence_not_linked_to_its_attest_command", "tee_label_differs_from_evidence_kind"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_vector_fails_exactly_its_named_checks(path: Path) -> None:
    v = json.loads(path.read_text())
    checks = _run(v)
    assert LOG_CHECKS <= set(checks)
    failed = {name for name, c in checks.items() if not c.ok}
    assert failed == set(v["fails"]), {n: checks[n].detail for n in failed}
    for name in v["fails"]:
        assert checks[name].detail  # the failure explains itself


def test_the_honest_vector_is_the_flawed_ones_without_their_flaw() -> None:
    """Every flawed vector shares the honest life's opening entries (same keys, same
    evidence up to provisioning), so each failure comes from what was added or changed."""
    honest = json.loads((VECTORS / "honest.json").read_text())
    for path in FILES:
        v = json.loads(path.read_text())
        assert v["controller_id"] == honest["controller_id"] and v["cvm_id"] == honest["cvm_id"]
