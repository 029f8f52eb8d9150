"""Log entries: canonical JSON both ways, required and typed fields, typed records."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duet.ledger import entries
from duet.ledger.entries import (
    RECORD_TYPES,
    SCHEMAS,
    CommandEntry,
    Entry,
    ResultEntry,
    StreamOutput,
    decode,
    encode,
    now_rfc3339,
)
from duet.ledger.errors import EntryError

KEY = base64.b64encode(bytes(range(32))).decode()
SHA = hashlib.sha256(b"x").hexdigest()
TIME = "2026-11-26T21:00:00.123456Z"


def _stream(name: str, text: str) -> dict[str, Any]:
    raw = text.encode()
    return {
        name: text,
        f"{name}_encoding": "utf-8",
        f"{name}_bytes": len(raw),
        f"{name}_sha256": hashlib.sha256(raw).hexdigest(),
        f"{name}_truncated": False,
    }


BODIES: dict[str, dict[str, Any]] = {
    "genesis": {
        "cvm_id": "cvm-1",
        "origin": f"duet/{SHA}/cvm-1",
        "controller_id": SHA,
        "controller_key": KEY,
        "owner_keys": [KEY],
        "policy": "in_service:\n  actions: [attest]\n",
        "policy_sha256": SHA,
        "tee": "snp",
        "provider": "local",
        "spec": {"cpus": 2, "image": "ubuntu-24.04"},
        "host_data": "11" * 32,
        "evidence_kind": "snp",
        "instance_binding": "host_data",
        "controller_log_size": 2,
        "controller_log_root": base64.b64encode(bytes(32)).decode(),
    },
    "provisioned": {
        "instance_id": "i-123",
        "host": "127.0.0.1",
        "port": 2222,
        "user": "duet",
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA host",
        "host_key_sha256": SHA,
        "launch": {"host_data": "00" * 32},
        "request": {"provisionVMAgent": False},
        "client_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA duet",
    },
    "lockdown": {
        "checks": [{"name": "sshd", "command": "sshd -T", "output": "x", "ok": True}],
        "ok": True,
        "purpose": "provisioning",
        "where": "over ssh",
        "judge_version": 2,
        "facts": {"where": "remote"},
    },
    "evidence": {
        "kind": "snp",
        "nonce": "00ff10",
        "evidence": base64.b64encode(b"report").decode(),
        "binds": {"host_key_sha256": SHA},
        "report_data": "ab" * 64,
        "collateral": {"vcek": "..."},
        "purpose": "attest",
        "command_index": 7,
    },
    "intent": {"jws": "eyJ.eyJ.sig", "op": "cvm.run", "kid": SHA, "controller_log_size": 2},
    "mode": {"mode": "in-update", "previous": "provisioning", "epoch": 0},
    "command": {"command": "uname -a", "intent_index": 4, "action": "health", "timeout_s": 2.5, "builtin": False,
                "stdin": "hi\n", "stdin_encoding": "utf-8", "stdin_bytes": 3, "stdin_sha256": SHA},
    "output": {"command_index": 5, "stream": "stdout", "offset": 0, "data": "Lin", "encoding": "utf-8"},
    "result": {
        "command_index": 5,
        "exit_status": 0,
        "signal": None,
        "duration_ms": 12.5,
        "timed_out": False,
        **_stream("stdout", "Linux\n"),
        **_stream("stderr", ""),
    },
    "rejected": {"jws": "eyJ.eyJ.sig", "op": "cvm.run", "reason": "in-service", "code": "mode"},
    "interrupted": {"command_index": 5, "reason": "controller restarted"},
    "deleted": {"reason": "owner asked"},
    "owner_keys": {"keys": [KEY, base64.b64encode(bytes(32)).decode()]},
    "policy": {"policy": "x: 1\n", "policy_sha256": SHA},
    "error": {"code": "host_key_mismatch", "message": "host key changed"},
    "control_plane": {"provider": "azure", "purpose": "in-service", "model_sha256": SHA,
                      "facts": {"provider": "azure"}, "checks": [{"name": "no_extensions", "ok": True, "detail": "x"}],
                      "ok": True},
    "heads": {"heads": [{"cvm": "c0ffee00c0ffee00", "size": 3, "root": KEY, "consistency": [KEY]}]},
    "witnesses": {"witnesses": [{"vkey": "w.example+01020304+BAAA", "url": "https://w.example"}], "quorum": 1},
    "build_approved": {"mrenclave": "aa" * 32, "mrsigner": "bb" * 32, "isv_prod_id": 1, "min_isv_svn": 2},
    "handover": {"from_mrenclave": "aa" * 32, "from_mrsigner": "bb" * 32, "to_mrenclave": "cc" * 32,
                 "to_mrsigner": "bb" * 32, "to_key_sha256": SHA},
    "handover_refused": {"mrenclave": "cc" * 32, "mrsigner": "bb" * 32, "reason": "not approved"},
    "standby_joined": {"from_mrenclave": "aa" * 32, "from_mrsigner": "bb" * 32, "to_mrenclave": "cc" * 32,
                       "to_mrsigner": "bb" * 32, "to_key_sha256": SHA},
    "promote": {"mrenclave": "cc" * 32, "mrsigner": "bb" * 32, "key_sha256": SHA, "reason": "lease expired"},
    "key_rotated": {"client_key": "ssh-ed25519 AAAA", "previous_key_sha256": SHA, "reason": "handover",
                    "how": "host-side", "controller_log_size": 7},
    "providers": {"providers": {"azure": {"location": "westeurope"}}, "providers_sha256": SHA,
                  "control_plane_recheck_s": 900},
    "recovery_policy": {"threshold": 2, "holders": [KEY, KEY], "shares_sha256": [SHA, SHA], "state_key_sha256": SHA},
    "recovered": {"mrenclave": "aa" * 32, "mrsigner": "bb" * 32, "from_mrenclave": "aa" * 32, "key_sha256": SHA,
                  "holders": [KEY], "state_key_sha256": SHA, "policy_index": 3},
    "state_key_rotated": {"reason": "tcb_recovery", "from_cpusvn": 1, "to_cpusvn": 2,
                          "previous_state_key_sha256": SHA, "state_key_sha256": SHA, "shares_sha256": [SHA]},
    "credentials": {"provider": "azure", "recipient_key_id": SHA, "ciphertext_sha256": SHA, "credentials_mac": SHA},
}


def sample(kind: str) -> dict[str, Any]:
    return {"v": 1, "type": kind, "time": TIME, **copy.deepcopy(BODIES[kind])}


def jcs_reference(obj: Any) -> bytes:
    """Canonical JSON for data without floats: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# Wrong values per kind of field, chosen here (not taken from entries.py) so the tests
# check the schema rather than repeat it.
SHORT_KEY = base64.b64encode(bytes(31)).decode()
WRONG: dict[str, list[Any]] = {
    "str": [5, True, ["x"], {"a": "b"}],
    "index": ["5", 5.0, True, -1, [5]],
    "int": ["0", 1.5, True],
    "port": [0, 65536, True, "22", 22.0],
    "number": ["1", True, -1, float("inf")],
    "positive": [0, -1, "1", True],
    "bool": [1, 0, "true"],
    "verdicts": [[{"name": "x", "ok": 1, "detail": ""}], [{"name": "x"}], "x", [5]],
    "dict": [[], "x", 1],
    "hex": ["ABCD", "abc", "zz", 5],
    "sha256": [SHA[:-2], SHA.upper(), SHA + "00", 5],
    "b64": ["not base64!", "YQ", 5],
    "key": [SHORT_KEY, "x", 5],
    "keys": [[SHORT_KEY], KEY, [5]],
    "checks": [[{"name": "x"}], "x", [5], [{"name": "a", "command": "b", "output": "c", "ok": 1}]],
    "encoding": ["utf8", "hex", 1],
    # A head without its root or proof, with an extra field, a negative size, a proof that
    # is not base64 hashes, or the same CVM twice.
    "heads": [[{"cvm": "a", "size": 1, "consistency": []}], [{"cvm": "a", "size": 1, "root": KEY}],
              [{"cvm": "a", "size": 1, "root": KEY, "consistency": [], "x": 1}],
              [{"cvm": "a", "size": -1, "root": KEY, "consistency": []}], "x",
              [{"cvm": "a", "size": 1, "root": KEY, "consistency": ["%%"]}],
              [{"cvm": "a", "size": 1, "root": KEY, "consistency": []},
               {"cvm": "a", "size": 2, "root": KEY, "consistency": []}]],
    "witnesses": [[{"vkey": "v"}], [{"vkey": "v", "url": 5}], "x", [5]],
    "sha256s": [[SHA.upper()], SHA, [5]],
}
KINDS: dict[tuple[str, str], str] = {
    **{
        ("genesis", f): k
        for f, k in {
            "cvm_id": "str",
            "origin": "str",
            "controller_id": "sha256",
            "controller_key": "key",
            "owner_keys": "keys",
            "policy": "str",
            "policy_sha256": "sha256",
            "tee": "str",
            "provider": "str",
            "spec": "dict",
            "host_data": "hex",
            "evidence_kind": "str",
            "instance_binding": "str",
            "controller_log_size": "index",
            "controller_log_root": "b64",
        }.items()
    },
    **{
        ("provisioned", f): k
        for f, k in {
            "instance_id": "str",
            "host": "str",
            "port": "port",
            "user": "str",
            "host_key": "str",
            "host_key_sha256": "sha256",
            "launch": "dict",
            "request": "dict",
            "client_key": "str",
        }.items()
    },
    ("lockdown", "checks"): "checks",
    ("lockdown", "ok"): "bool",
    ("lockdown", "purpose"): "str",
    ("lockdown", "where"): "str",
    ("lockdown", "judge_version"): "index",
    ("lockdown", "facts"): "dict",
    **{
        ("evidence", f): k
        for f, k in {
            "kind": "str",
            "nonce": "hex",
            "evidence": "b64",
            "binds": "dict",
            "report_data": "hex",
            "collateral": "dict",
            "purpose": "str",
            "command_index": "index",
        }.items()
    },
    ("intent", "jws"): "str",
    ("intent", "op"): "str",
    ("intent", "kid"): "sha256",
    ("intent", "controller_log_size"): "index",
    ("mode", "mode"): "str",
    ("mode", "previous"): "str",
    ("mode", "epoch"): "index",
    ("command", "command"): "str",
    ("command", "intent_index"): "index",
    ("command", "action"): "str",
    ("command", "timeout_s"): "positive",
    ("command", "builtin"): "bool",
    ("command", "stdin"): "str",
    ("command", "stdin_encoding"): "encoding",
    ("command", "stdin_bytes"): "index",
    ("command", "stdin_sha256"): "sha256",
    ("output", "command_index"): "index",
    ("output", "stream"): "str",
    ("output", "offset"): "index",
    ("output", "data"): "str",
    ("output", "encoding"): "encoding",
    ("result", "command_index"): "index",
    ("result", "exit_status"): "int",
    ("result", "signal"): "str",
    ("result", "duration_ms"): "number",
    ("result", "timed_out"): "bool",
    **{
        ("result", f"{s}{suffix}"): k
        for s in ("stdout", "stderr")
        for suffix, k in {
            "": "str",
            "_encoding": "encoding",
            "_bytes": "index",
            "_sha256": "sha256",
            "_truncated": "bool",
        }.items()
    },
    ("rejected", "jws"): "str",
    ("rejected", "op"): "str",
    ("rejected", "reason"): "str",
    ("rejected", "code"): "str",
    ("interrupted", "command_index"): "index",
    ("interrupted", "reason"): "str",
    ("deleted", "reason"): "str",
    ("owner_keys", "keys"): "keys",
    ("policy", "policy"): "str",
    ("policy", "policy_sha256"): "sha256",
    ("error", "code"): "str",
    ("error", "message"): "str",
    ("control_plane", "provider"): "str",
    ("control_plane", "purpose"): "str",
    ("control_plane", "model_sha256"): "sha256",
    ("control_plane", "facts"): "dict",
    ("control_plane", "checks"): "verdicts",
    ("control_plane", "ok"): "bool",
    ("heads", "heads"): "heads",
    ("witnesses", "witnesses"): "witnesses",
    ("witnesses", "quorum"): "index",
    ("build_approved", "mrenclave"): "hex",
    ("build_approved", "mrsigner"): "hex",
    ("build_approved", "isv_prod_id"): "index",
    ("build_approved", "min_isv_svn"): "index",
    ("handover", "from_mrenclave"): "hex",
    ("handover", "from_mrsigner"): "hex",
    ("handover", "to_mrenclave"): "hex",
    ("handover", "to_mrsigner"): "hex",
    ("handover", "to_key_sha256"): "sha256",
    ("standby_joined", "from_mrenclave"): "hex",
    ("standby_joined", "from_mrsigner"): "hex",
    ("standby_joined", "to_mrenclave"): "hex",
    ("standby_joined", "to_mrsigner"): "hex",
    ("standby_joined", "to_key_sha256"): "sha256",
    ("promote", "mrenclave"): "hex",
    ("promote", "mrsigner"): "hex",
    ("promote", "key_sha256"): "sha256",
    ("promote", "reason"): "str",
    ("handover_refused", "mrenclave"): "hex",
    ("handover_refused", "mrsigner"): "hex",
    ("handover_refused", "reason"): "str",
    ("key_rotated", "client_key"): "str",
    ("key_rotated", "previous_key_sha256"): "sha256",
    ("key_rotated", "reason"): "str",
    ("key_rotated", "how"): "str",
    ("key_rotated", "controller_log_size"): "index",
    ("recovery_policy", "threshold"): "index",
    ("recovery_policy", "holders"): "keys",
    ("recovery_policy", "shares_sha256"): "sha256s",
    ("recovery_policy", "state_key_sha256"): "hex",
    ("recovered", "mrenclave"): "hex",
    ("recovered", "mrsigner"): "hex",
    ("recovered", "from_mrenclave"): "hex",
    ("recovered", "key_sha256"): "sha256",
    ("recovered", "holders"): "keys",
    ("recovered", "state_key_sha256"): "sha256",
    ("recovered", "policy_index"): "index",
    ("state_key_rotated", "reason"): "str",
    ("state_key_rotated", "from_cpusvn"): "index",
    ("state_key_rotated", "to_cpusvn"): "index",
    ("state_key_rotated", "previous_state_key_sha256"): "sha256",
    ("state_key_rotated", "state_key_sha256"): "sha256",
    ("state_key_rotated", "shares_sha256"): "sha256s",
    ("providers", "providers"): "dict",
    ("providers", "providers_sha256"): "sha256",
    ("providers", "control_plane_recheck_s"): "index",
    ("credentials", "provider"): "str",
    ("credentials", "recipient_key_id"): "sha256",
    ("credentials", "ciphertext_sha256"): "sha256",
    ("credentials", "credentials_mac"): "sha256",
}
OPTIONAL = {
    ("build_approved", "mrenclave"),
    ("build_approved", "mrsigner"),
    ("build_approved", "isv_prod_id"),
    ("build_approved", "min_isv_svn"),
    ("genesis", "host_data"),
    ("genesis", "evidence_kind"),
    ("genesis", "instance_binding"),
    ("genesis", "controller_log_size"),
    ("genesis", "controller_log_root"),
    ("intent", "controller_log_size"),
    ("provisioned", "client_key"),
    ("lockdown", "purpose"),
    ("lockdown", "where"),
    ("lockdown", "judge_version"),
    ("lockdown", "facts"),
    ("evidence", "purpose"),
    ("evidence", "command_index"),
    ("mode", "epoch"),
    ("command", "builtin"),
    ("command", "stdin"),
    ("command", "stdin_encoding"),
    ("command", "stdin_bytes"),
    ("command", "stdin_sha256"),
    ("result", "timed_out"),
    ("provisioned", "request"),
    ("evidence", "report_data"),
    ("evidence", "collateral"),
    ("command", "intent_index"),
    ("command", "action"),
    ("command", "timeout_s"),
    ("result", "signal"),
    ("rejected", "jws"),
    ("deleted", "reason"),
    ("providers", "control_plane_recheck_s"),
}
NULLABLE = {("command", "intent_index"), ("result", "exit_status"), ("result", "signal"),
            ("state_key_rotated", "from_cpusvn"), ("state_key_rotated", "to_cpusvn")}


def test_the_tables_here_cover_every_field() -> None:
    fields = {(kind, spec.name) for kind, specs in SCHEMAS.items() for spec in specs}
    assert fields == set(KINDS)
    assert set(BODIES) == set(SCHEMAS) == set(RECORD_TYPES)
    assert {(k, s.name) for k, specs in SCHEMAS.items() for s in specs if s.optional} == OPTIONAL
    assert {(k, s.name) for k, specs in SCHEMAS.items() for s in specs if s.nullable} == NULLABLE


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_round_trip_is_canonical(kind: str) -> None:
    entry = sample(kind)
    leaf = encode(entry)
    assert decode(leaf) == entry
    if kind not in ("command", "result"):  # no floats: the stdlib can be the reference
        assert leaf == jcs_reference(entry)


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_typed_record_agrees_with_plain_dict(kind: str) -> None:
    entry = sample(kind)
    record = Entry.from_dict(entry)
    assert type(record) is RECORD_TYPES[kind]
    assert record.to_dict() == entry
    assert record.encode() == encode(entry)
    assert entries.parse(encode(entry)) == record
    assert RECORD_TYPES[kind].from_dict(entry) == record


@pytest.mark.parametrize(("kind", "field"), sorted(KINDS))
def test_missing_field(kind: str, field: str) -> None:
    entry = sample(kind)
    del entry[field]
    if (kind, field) in OPTIONAL:
        assert decode(encode(entry)) == entry
    else:
        with pytest.raises(EntryError, match=f"'{field}' is required"):
            encode(entry)


@pytest.mark.parametrize(("kind", "field"), sorted(KINDS))
def test_ill_typed_field(kind: str, field: str) -> None:
    for wrong in [*WRONG[KINDS[kind, field]], None]:
        if wrong is None and (kind, field) in NULLABLE:
            continue
        entry = sample(kind)
        entry[field] = wrong
        with pytest.raises(EntryError, match=f"'{field}'"):
            encode(entry)
        # A leaf carrying the bad value (canonical, so only the type check can catch it)
        # is refused too.
        try:
            leaf = jcs_reference(entry)
        except ValueError:
            continue  # inf has no JSON form at all
        with pytest.raises(EntryError):
            decode(leaf)


def test_nullable_fields_accept_null() -> None:
    for kind, field in NULLABLE:
        entry = sample(kind)
        entry[field] = None
        assert decode(encode(entry)) == entry
        record = Entry.from_dict(entry)
        assert record.to_dict() == entry  # an explicit null survives the typed record
        del entry[field]
        if (kind, field) in OPTIONAL:
            assert Entry.from_dict(entry).to_dict() == entry


@pytest.mark.parametrize(
    "leaf",
    [
        b'{"type":"deleted","v":1,"time":"2026-11-26T21:00:00.123456Z"}',  # key order
        b'{"time": "2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',  # whitespace
        b'{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}\n',  # trailing newline
        b'{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1.0}',  # number form
        b'{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1e0}',
        b'{"time":"2026-11-26T21:00:00.123456Z","type":"delet\\u0065d","v":1}',  # escape
        b'{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","type":"deleted","v":1}',
        b'\xef\xbb\xbf{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',  # BOM
        b'{"reason":"\xff","time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',
        b'{"reason":NaN,"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',
        b'{"reason":"\\ud800","time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',
        b'{"big":12345678901234567890,"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}',
        b'["time","type","v"]',
        b"",
        b"null",
    ],
)
def test_non_canonical_or_invalid_bytes_are_rejected(leaf: bytes) -> None:
    good = b'{"time":"2026-11-26T21:00:00.123456Z","type":"deleted","v":1}'
    assert decode(good) == {"time": TIME, "type": "deleted", "v": 1}
    with pytest.raises(EntryError):
        decode(leaf)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "version"),
        ({"v": "1"}, "version"),
        ({"v": True}, "version"),
        ({"type": "launch_missiles"}, "unknown entry type"),
        ({"type": 5}, "type"),
        ({"time": "2026-11-26T21:00:00Z"}, "time"),
        ({"time": "2026-11-26T21:00:00.123456+00:00"}, "time"),
        ({"time": "2026-11-26 21:00:00.123456Z"}, "time"),
        ({"time": "2026-02-30T21:00:00.123456Z"}, "not a valid date"),
        ({"time": 1700000000}, "time"),
    ],
)
def test_envelope_checks(change: dict[str, Any], message: str) -> None:
    entry = {**sample("deleted"), **change}
    with pytest.raises(EntryError, match=message):
        encode(entry)
    with pytest.raises(EntryError):
        decode(jcs_reference(entry))
    for key in ("v", "type", "time"):
        partial = sample("deleted")
        del partial[key]
        with pytest.raises(EntryError, match=key):
            encode(partial)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text().filter(lambda k: k not in BODIES["command"]), JSON, max_size=4))
def test_extra_fields_are_kept(extra: dict[str, Any]) -> None:
    extra = {k: v for k, v in extra.items() if k not in ("v", "type", "time")}
    entry = {**sample("command"), **extra}
    leaf = encode(entry)
    assert decode(leaf) == entry
    record = CommandEntry.from_dict(entry)
    assert record.extra == extra
    assert record.encode() == leaf


@settings(max_examples=150, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=0), st.text())
def test_floats_and_strings_survive_canonicalisation(duration: float, text: str) -> None:
    entry = sample("result")
    entry["duration_ms"] = duration
    entry["stdout"] = text
    leaf = encode(entry)
    back = decode(leaf)
    assert back["duration_ms"] == duration and back["stdout"] == text
    assert encode(back) == leaf


def test_typed_records_are_validated_and_default_the_time() -> None:
    before = now_rfc3339()
    cmd = CommandEntry(command="ls")
    assert before <= cmd.time <= now_rfc3339()
    assert decode(cmd.encode()) == {"v": 1, "type": "command", "time": cmd.time, "command": "ls"}
    with pytest.raises(EntryError, match="intent_index"):
        CommandEntry(command="ls", intent_index=-1)
    with pytest.raises(EntryError, match="time"):
        CommandEntry(command="ls", time="yesterday")
    with pytest.raises(EntryError, match="clashes"):
        CommandEntry(command="ls", extra={"command": "rm"})
    with pytest.raises(EntryError, match="canonical JSON"):
        CommandEntry(command="ls", extra={"blob": b"bytes"})
    with pytest.raises(EntryError, match="expected 'command'"):
        CommandEntry.from_dict(sample("result"))
    with pytest.raises(EntryError, match="abstract"):
        Entry()


def test_result_streams() -> None:
    text = StreamOutput.from_bytes("héllo\n".encode(), limit=100)
    assert (text.encoding, text.truncated, text.total_bytes) == ("utf-8", False, 7)
    assert text.content() == "héllo\n".encode()
    # Truncation inside a multi-byte character drops the partial character.
    cut = StreamOutput.from_bytes("héllo".encode(), limit=2)
    assert (cut.data, cut.encoding, cut.truncated, cut.total_bytes) == ("h", "utf-8", True, 6)
    assert cut.sha256 == hashlib.sha256("héllo".encode()).hexdigest()
    binary = StreamOutput.from_bytes(b"\xff\x00\xfe", limit=2)
    assert (binary.encoding, binary.truncated) == ("base64", True)
    assert binary.content() == b"\xff\x00"
    record = ResultEntry(command_index=3, exit_status=None, signal="KILL", duration_ms=5, stdout=text, stderr=binary)
    entry = decode(record.encode())
    assert entry["stderr"] == base64.b64encode(b"\xff\x00").decode()
    assert entry["stderr_bytes"] == 3 and entry["stderr_truncated"] is True
    assert ResultEntry.from_dict(entry) == record
    bad = {**entry, "stderr": "not base64!"}
    with pytest.raises(EntryError, match="stderr"):
        encode(bad)


def test_large_doubles_round_trip_and_large_ints_do_not() -> None:
    entry = sample("result")
    entry["duration_ms"] = float(2**53)  # JCS prints it as an integer literal
    assert decode(encode(entry))["duration_ms"] == 2**53
    entry["duration_ms"] = 2**53 + 1  # not a double: no canonical JSON form
    with pytest.raises(EntryError):
        encode(entry)
    leaf = encode(sample("result")).replace(b'"duration_ms":12.5', b'"duration_ms":9007199254740993')
    with pytest.raises(EntryError, match="canonical"):
        decode(leaf)
