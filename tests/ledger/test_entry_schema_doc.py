"""The published JSON Schema of log entries (docs/entries.schema.json) is generated from
the models, agrees with them on honest and broken entries, and a schema mismatch in a
log is a verification failure that names the field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from duet.client.audit import audit_log
from duet.ledger import entries
from duet.ledger.errors import EntryError

DOC = Path(__file__).resolve().parents[2] / "docs" / "entries.schema.json"


def _generated() -> str:
    return json.dumps(entries.json_schema(), indent=2, sort_keys=True) + "\n"


def test_published_schema_is_generated_from_the_models() -> None:
    if os.environ.get("DUET_REGENERATE_DOCS") == "1":
        DOC.write_text(_generated())
    assert DOC.read_text() == _generated(), (
        "docs/entries.schema.json drifted from duet.ledger.entries.SCHEMAS; "
        "regenerate with DUET_REGENERATE_DOCS=1 pytest tests/ledger/test_entry_schema_doc.py")


def _validator() -> Any:
    schema = json.loads(DOC.read_text())
    return jsonschema.Draft202012Validator(schema)


def test_every_sample_entry_matches_the_published_schema() -> None:
    from test_ledger_entries import BODIES, sample  # type: ignore[import-not-found]

    v = _validator()
    for kind in BODIES:
        entry = sample(kind)
        assert not list(v.iter_errors(entry)), kind
        entries.validate(entry)
        assert not list(v.iter_errors({**entry, "added_by_a_newer_controller": 1})), kind


@pytest.mark.parametrize("kind,field,value", [
    ("command", "builtin", "yes"),
    ("evidence", "purpose", "whenever"),
    ("evidence", "command_index", -1),
    ("genesis", "host_data", "XYZ"),
    ("mode", "mode", "in-space"),
    ("mode", "epoch", True),
])
def test_both_refuse_a_field_that_breaks_its_schema(kind: str, field: str, value: object) -> None:
    from test_ledger_entries import sample

    entry = {**sample(kind), field: value}
    assert list(_validator().iter_errors(entry))
    with pytest.raises(EntryError, match=repr(field)):
        entries.validate(entry)


def test_a_schema_mismatch_in_a_log_fails_verification_naming_the_field() -> None:
    """The leaf is canonical JSON and hashes into the log; only its `builtin` is a string,
    which a reader relying on `builtin is True` would silently misjudge."""
    from test_ledger_entries import sample

    bad = {**sample("command"), "builtin": "true"}
    leaf = json.dumps(bad, sort_keys=True, separators=(",", ":")).encode()
    good = entries.encode(sample("genesis"))
    audit = audit_log([good, leaf], controller_id="x", controller_key_b64="y", cvm_id="z")
    wellformed = next(c for c in audit.checks if c.name == "entries_wellformed")
    assert not wellformed.ok and "entry 1" in wellformed.detail and "'builtin'" in wellformed.detail
