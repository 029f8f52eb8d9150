"""Log entries: typed records and their RFC 8785 (JCS) canonical JSON encoding.

Each leaf of a CVM's log is the canonical JSON of one entry object
``{"v": 1, "type": ..., "time": ..., ...}`` (docs/wire-formats.md; schema: docs/entries.schema.json). Third parties
re-implement this format, so it is checked in both directions:

* :func:`encode` validates the entry's required fields and their JSON types before
  serialising, so the controller cannot log an entry a verifier would refuse;
* :func:`decode` accepts only bytes that are *exactly* the canonical form of what they
  parse to. A log that could hold two encodings of the same entry would let a tampered
  leaf pass a reader that compares parsed values instead of hashes.

This module checks structure and syntax (types, hex, base64, the time format); it makes
no trust decision. Whether a hash matches its text, or a key is the expected one, is for
the verifier. Fields beyond those listed are allowed and kept, so newer controllers can
add information without breaking older verifiers.

The controller may build plain dicts and call :func:`encode`, or use the frozen
dataclasses below (``GenesisEntry`` ...); ``encode(record.to_dict())`` and the dict built
by hand with the same content give the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeGuard, TypeVar, cast

import rfc8785

from duet.ledger import strictjson
from duet.ledger.errors import EntryError

VERSION = 1
"""The only entry format version this code reads and writes (the ``v`` field).

Fields added since the first controllers (``genesis.host_data``, ``evidence.purpose``,
``command.builtin`` ...) are optional in version 1, so their logs stay readable; the
controller always writes them. Unknown fields are allowed and kept."""


class Mode(StrEnum):
    """A CVM's mode, as `mode` entries and the controller's record say."""

    PROVISIONING = "provisioning"
    IN_UPDATE = "in-update"
    IN_SERVICE = "in-service"
    DELETED = "deleted"


OWNER_MODES = (Mode.IN_UPDATE.value, Mode.IN_SERVICE.value)
"""The modes an owner's `cvm.mode` intent may ask for."""


class EvidencePurpose(StrEnum):
    """Why evidence was collected: the user's rules depend on it (in-service needs fresh)."""

    PROVISIONING = "provisioning"
    IN_SERVICE = "in-service"
    ATTEST = "attest"


class OutputStream(StrEnum):
    """Which output stream of a command an `output` entry continues."""

    STDOUT = "stdout"
    STDERR = "stderr"


class LockdownPurpose(StrEnum):
    PROVISIONING = "provisioning"
    IN_SERVICE = "in-service"
    ACTION = "action"

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RESERVED = ("v", "type", "time")


def sha256_hex(text: str) -> str:
    """SHA-256 of a text's UTF-8 bytes, as lowercase hex (host keys, policies)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    One fixed width and precision, so that times compare as strings and an entry has
    a single canonical form.
    """
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- field checks -------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    # JSON booleans are not numbers, but Python's bool is an int subclass.
    return isinstance(value, int) and not isinstance(value, bool)


Check = Callable[[object], "str | None"]


def _check_b64(value: str) -> bytes | None:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def _k_str(value: object) -> str | None:
    return None if isinstance(value, str) else "a string"


def _k_bool(value: object) -> str | None:
    return None if isinstance(value, bool) else "a boolean"


def _k_index(value: object) -> str | None:
    return None if _is_int(value) and value >= 0 else "a non-negative integer"


def _k_int(value: object) -> str | None:
    return None if _is_int(value) else "an integer"


def _k_port(value: object) -> str | None:
    ok = _is_int(value) and 1 <= value <= 65535
    return None if ok else "a TCP port (1-65535)"


def _number(value: object) -> TypeGuard[int | float]:
    if _is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _k_nonneg_number(value: object) -> str | None:
    return None if _number(value) and value >= 0 else "a non-negative number"


def _k_pos_number(value: object) -> str | None:
    return None if _number(value) and value > 0 else "a positive number"


def _k_dict(value: object) -> str | None:
    return None if isinstance(value, Mapping) else "an object"


def _k_hex(value: object) -> str | None:
    ok = isinstance(value, str) and _HEX.fullmatch(value) is not None
    return None if ok else "lowercase hex"


def _k_sha256(value: object) -> str | None:
    ok = isinstance(value, str) and _SHA256.fullmatch(value) is not None
    return None if ok else "64 lowercase hex digits (a SHA-256)"


def _k_b64(value: object) -> str | None:
    ok = isinstance(value, str) and _check_b64(value) is not None
    return None if ok else "canonical standard base64"


def _k_ed25519(value: object) -> str | None:
    raw = _check_b64(value) if isinstance(value, str) else None
    return None if raw is not None and len(raw) == 32 else "a base64 raw Ed25519 key (32 bytes)"


def _k_key_list(value: object) -> str | None:
    ok = isinstance(value, list | tuple) and all(_k_ed25519(v) is None for v in value)
    return None if ok else "a list of base64 raw Ed25519 keys"


def _k_x25519_list(value: object) -> str | None:
    ok = isinstance(value, list | tuple) and all(_k_ed25519(v) is None for v in value)  # same 32-byte shape
    return None if ok else "a list of base64 raw X25519 keys"


def _k_sha256_list(value: object) -> str | None:
    ok = isinstance(value, list | tuple) and all(_k_sha256(v) is None for v in value)
    return None if ok else "a list of SHA-256 digests (64 lowercase hex digits each)"


def _k_enum(enum: type[StrEnum]) -> Check:
    values = tuple(m.value for m in enum)

    def check(value: object) -> str | None:
        return None if value in values else "one of " + ", ".join(values)

    check.enum = values  # type: ignore[attr-defined]
    return check


def _k_encoding(value: object) -> str | None:
    return None if value in ("utf-8", "base64") else '"utf-8" or "base64"'


_CHECK_FIELDS = (("name", _k_str), ("command", _k_str), ("output", _k_str), ("ok", _k_bool))


def _k_checks(value: object) -> str | None:
    want = "a list of {name, command, output: string, ok: boolean} objects"
    if not isinstance(value, list | tuple):
        return want
    for item in value:
        if not isinstance(item, Mapping):
            return want
        for name, check in _CHECK_FIELDS:
            if name not in item or check(item[name]) is not None:
                return want
    return None




_VERDICT_FIELDS = (("name", _k_str), ("ok", _k_bool), ("detail", _k_str))


def _k_b64_list(value: object) -> str | None:
    if not isinstance(value, list | tuple) or any(_k_b64(v) is not None for v in value):
        return "a list of base64 strings"
    return None


#: `consistency`: the RFC 9162 proof from the CVM's previous head in the controller log
#: to this one (empty for its first head, or the same size).
_HEAD_FIELDS = (("cvm", _k_str), ("size", _k_index), ("root", _k_b64), ("consistency", _k_b64_list))


def _k_heads(value: object) -> str | None:
    want = "a list of {cvm: string, size: integer >= 0, root: base64, consistency: [base64]} objects, one per CVM"
    if not isinstance(value, list | tuple):
        return want
    seen: set[object] = set()
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {n for n, _ in _HEAD_FIELDS} \
                or any(c(item[n]) is not None for n, c in _HEAD_FIELDS) or item["cvm"] in seen:
            return want
        seen.add(item["cvm"])
    return None


_WITNESS_FIELDS = (("vkey", _k_str), ("url", _k_str))


def _k_witnesses(value: object) -> str | None:
    want = "a list of {vkey, url: string} objects"
    if not isinstance(value, list | tuple):
        return want
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {n for n, _ in _WITNESS_FIELDS} \
                or any(c(item[n]) is not None for n, c in _WITNESS_FIELDS):
            return want
    return None


def _k_verdicts(value: object) -> str | None:
    want = "a list of {name: string, ok: boolean, detail: string} objects"
    if not isinstance(value, list | tuple):
        return want
    for item in value:
        if not isinstance(item, Mapping) or any(n not in item or c(item[n]) is not None for n, c in _VERDICT_FIELDS):
            return want
    return None


@dataclass(frozen=True)
class FieldSpec:
    """One entry field: its JSON name, its check, and whether it may be absent or null."""

    name: str
    check: Check
    optional: bool = False
    nullable: bool = False


def _f(name: str, check: Check, *, optional: bool = False, nullable: bool = False) -> FieldSpec:
    return FieldSpec(name, check, optional, nullable)


def _stream_fields(s: str) -> tuple[FieldSpec, ...]:
    return (
        _f(s, _k_str),
        _f(f"{s}_encoding", _k_encoding),
        _f(f"{s}_bytes", _k_index),
        _f(f"{s}_sha256", _k_sha256),
        _f(f"{s}_truncated", _k_bool),
    )


SCHEMAS: dict[str, tuple[FieldSpec, ...]] = {
    "genesis": (
        _f("cvm_id", _k_str),
        _f("origin", _k_str),
        _f("controller_id", _k_sha256),
        _f("controller_key", _k_ed25519),
        _f("owner_keys", _k_key_list),
        _f("policy", _k_str),
        _f("policy_sha256", _k_sha256),
        _f("tee", _k_str),
        _f("provider", _k_str),
        _f("spec", _k_dict),
        # Optional in v1 (logs of early controllers lack them); always written now.
        _f("host_data", _k_hex, optional=True),
        _f("evidence_kind", _k_str, optional=True),
        _f("instance_binding", _k_str, optional=True),
        # The controller log's head when the CVM was created (absent in logs written
        # before the controller log existed).
        _f("controller_log_size", _k_index, optional=True),
        _f("controller_log_root", _k_b64, optional=True),
    ),
    "provisioned": (
        _f("instance_id", _k_str),
        _f("host", _k_str),
        _f("port", _k_port),
        _f("user", _k_str),
        _f("host_key", _k_str),
        _f("host_key_sha256", _k_sha256),
        _f("launch", _k_dict),
        _f("request", _k_dict, optional=True),
        _f("client_key", _k_str, optional=True),
    ),
    "lockdown": (
        _f("checks", _k_checks),
        _f("ok", _k_bool),
        _f("purpose", _k_enum(LockdownPurpose), optional=True),
        _f("where", _k_str, optional=True),
        # The facts the judge saw and its version (ledger/lockdown.py), so a verifier judges
        # them again; absent in logs of controllers that logged only verdicts.
        _f("judge_version", _k_index, optional=True),
        _f("facts", _k_dict, optional=True),
    ),
    "evidence": (
        _f("kind", _k_str),
        _f("nonce", _k_hex),
        _f("evidence", _k_b64),
        _f("binds", _k_dict),
        _f("report_data", _k_hex, optional=True),
        _f("collateral", _k_dict, optional=True),
        _f("purpose", _k_enum(EvidencePurpose), optional=True),
        _f("command_index", _k_index, optional=True),
    ),
    "intent": (
        _f("jws", _k_str),
        _f("op", _k_str),
        _f("kid", _k_sha256),
        # The controller-log size in force when the intent was accepted: the owner keys
        # that authorised it are those of the controller log's prefix of that size.
        _f("controller_log_size", _k_index, optional=True),
    ),
    "mode": (_f("mode", _k_enum(Mode)), _f("previous", _k_enum(Mode)), _f("epoch", _k_index, optional=True)),
    "command": (
        _f("command", _k_str),
        _f("intent_index", _k_index, optional=True, nullable=True),
        _f("action", _k_str, optional=True),
        _f("timeout_s", _k_pos_number, optional=True),
        _f("builtin", _k_bool, optional=True),
        # The bytes the command read on stdin, whole (the owner signed their digest in the
        # intent's `stdin_sha256`); absent when stdin was empty (at EOF at once).
        _f("stdin", _k_str, optional=True),
        _f("stdin_encoding", _k_encoding, optional=True),
        _f("stdin_bytes", _k_index, optional=True),
        _f("stdin_sha256", _k_sha256, optional=True),
    ),
    # A piece of a running command's output, logged before anyone is shown it (streamed
    # runs, docs/wire-formats.md). Pieces of one stream are contiguous from offset 0 and
    # together equal that stream's content in the command's result entry.
    "output": (
        _f("command_index", _k_index),
        _f("stream", _k_enum(OutputStream)),
        _f("offset", _k_index),
        _f("data", _k_str),
        _f("encoding", _k_encoding),
    ),
    "result": (
        _f("command_index", _k_index),
        _f("exit_status", _k_int, nullable=True),
        _f("signal", _k_str, optional=True, nullable=True),
        _f("duration_ms", _k_nonneg_number),
        _f("timed_out", _k_bool, optional=True),
        *_stream_fields("stdout"),
        *_stream_fields("stderr"),
    ),
    "rejected": (
        _f("jws", _k_str, optional=True),
        _f("op", _k_str),
        _f("reason", _k_str),
        _f("code", _k_str),
    ),
    "interrupted": (_f("command_index", _k_index), _f("reason", _k_str)),
    "deleted": (_f("reason", _k_str, optional=True),),
    "owner_keys": (_f("keys", _k_key_list),),
    "policy": (_f("policy", _k_str), _f("policy_sha256", _k_sha256)),
    "error": (_f("code", _k_str), _f("message", _k_str)),
    "control_plane": (
        _f("provider", _k_str),
        _f("purpose", _k_str),
        _f("model_sha256", _k_sha256),
        _f("facts", _k_dict),
        _f("checks", _k_verdicts),
        _f("ok", _k_bool),
    ),
    # Controller log only: the heads (size, root) of the CVM logs that changed since the
    # previous `heads` entry, so that witnessing the controller log commits them all.
    "heads": (_f("heads", _k_heads),),
    # Controller log only: the witnesses the controller submits its checkpoints to (C2SP
    # vkeys and URLs) and how many must have cosigned before it starts (witnesses.set).
    "witnesses": (_f("witnesses", _k_witnesses), _f("quorum", _k_index)),
    # Continuity (docs/continuity.md): the controller log records which builds the owner
    # approved and each handover of the state key K between builds.
    "build_approved": (
        _f("mrenclave", _k_hex, optional=True),
        _f("mrsigner", _k_hex, optional=True),
        _f("isv_prod_id", _k_index, optional=True),
        _f("min_isv_svn", _k_index, optional=True),
    ),
    "handover": (
        _f("from_mrenclave", _k_hex),
        _f("from_mrsigner", _k_hex),
        _f("to_mrenclave", _k_hex),
        _f("to_mrsigner", _k_hex),
        _f("to_key_sha256", _k_sha256),
    ),
    "handover_refused": (_f("mrenclave", _k_hex), _f("mrsigner", _k_hex), _f("reason", _k_str)),
    # Continuity on the replicated store: K given to an attested, approved standby (the
    # primary keeps it too), and a standby taking over as primary.
    "standby_joined": (
        _f("from_mrenclave", _k_hex),
        _f("from_mrsigner", _k_hex),
        _f("to_mrenclave", _k_hex),
        _f("to_mrsigner", _k_hex),
        _f("to_key_sha256", _k_sha256),
    ),
    "promote": (
        _f("mrenclave", _k_hex),
        _f("mrsigner", _k_hex),
        _f("key_sha256", _k_sha256),
        _f("reason", _k_str),
    ),
    "key_rotated": (
        _f("client_key", _k_str),
        _f("previous_key_sha256", _k_sha256),
        _f("reason", _k_str),
        _f("how", _k_str),
        _f("controller_log_size", _k_index),
    ),
    # Controller log, recovery from shares (docs/continuity.md): the M-of-N policy in force
    # (`controller.recovery`; no holders and threshold 0: off), with the SHA-256 of each
    # holder's encrypted share and the commitment to the K they are shares of (never a
    # share); `recovered`: a fresh enclave of an approved build reconstructed K from
    # shares; `state_key_rotated`: K was replaced (after a recovery: the old one may have
    # been exposed), with the shares of the new K.
    "recovery_policy": (
        _f("threshold", _k_index),
        _f("holders", _k_x25519_list),
        _f("shares_sha256", _k_sha256_list),
        _f("state_key_sha256", _k_hex),
    ),
    "recovered": (
        _f("mrenclave", _k_hex),
        _f("mrsigner", _k_hex),
        _f("from_mrenclave", _k_hex),
        _f("key_sha256", _k_sha256),
        _f("holders", _k_x25519_list),
        _f("state_key_sha256", _k_sha256),
        _f("policy_index", _k_index),
    ),
    "state_key_rotated": (
        _f("reason", _k_str),
        _f("from_cpusvn", _k_index, nullable=True),
        _f("to_cpusvn", _k_index, nullable=True),
        _f("previous_state_key_sha256", _k_sha256),
        _f("state_key_sha256", _k_sha256),
        _f("shares_sha256", _k_sha256_list),
    ),
    # Controller log: the providers in force and their non-secret settings (a
    # `providers.set` intent's args, or the `--providers` file outside an enclave).
    "providers": (
        _f("providers", _k_dict),
        _f("providers_sha256", _k_sha256),
        _f("control_plane_recheck_s", _k_index, optional=True),
    ),
    # Controller log: a provider was given credentials (`credentials.set`). Never the
    # credential nor its ciphertext: the HPKE recipient key, the ciphertext's digest
    # the intent signed, and a MAC of the plaintext under a sealed key (no plain hash:
    # that would be a guessing oracle for a weak secret).
    "credentials": (
        _f("provider", _k_str),
        _f("recipient_key_id", _k_sha256),
        _f("ciphertext_sha256", _k_sha256),
        _f("credentials_mac", _k_sha256),
    ),
}
"""Every entry type and its fields. Required unless ``optional``; ``nullable`` fields may
be JSON null."""


_B64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_ED25519: dict[str, object] = {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$"}
_JSON: dict[Check, dict[str, object]] = {
    _k_str: {"type": "string"},
    _k_bool: {"type": "boolean"},
    _k_index: {"type": "integer", "minimum": 0},
    _k_int: {"type": "integer"},
    _k_port: {"type": "integer", "minimum": 1, "maximum": 65535},
    _k_nonneg_number: {"type": "number", "minimum": 0},
    _k_pos_number: {"type": "number", "exclusiveMinimum": 0},
    _k_dict: {"type": "object"},
    _k_hex: {"type": "string", "pattern": "^(?:[0-9a-f]{2})*$"},
    _k_sha256: {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    _k_b64: {"type": "string", "pattern": _B64, "contentEncoding": "base64"},
    _k_ed25519: _ED25519,
    _k_key_list: {"type": "array", "items": _ED25519},
    _k_encoding: {"enum": ["utf-8", "base64"]},
    _k_x25519_list: {"type": "array", "items": _ED25519},
    _k_sha256_list: {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    _k_heads: {"type": "array", "items": {
        "type": "object", "required": [n for n, _ in _HEAD_FIELDS], "additionalProperties": False,
        "properties": {"cvm": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
                       "root": {"type": "string", "pattern": _B64, "contentEncoding": "base64"},
                       "consistency": {"type": "array", "items": {"type": "string", "pattern": _B64,
                                                                  "contentEncoding": "base64"}}}}},
    _k_witnesses: {"type": "array", "items": {
        "type": "object", "required": [n for n, _ in _WITNESS_FIELDS], "additionalProperties": False,
        "properties": {"vkey": {"type": "string"}, "url": {"type": "string"}}}},
    _k_verdicts: {"type": "array", "items": {
        "type": "object", "required": [n for n, _ in _VERDICT_FIELDS],
        "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}, "detail": {"type": "string"}}}},
    _k_checks: {"type": "array", "items": {
        "type": "object", "required": [n for n, _ in _CHECK_FIELDS],
        "properties": {"name": {"type": "string"}, "command": {"type": "string"},
                       "output": {"type": "string"}, "ok": {"type": "boolean"}}}},
}


def _field_schema(spec: FieldSpec) -> dict[str, object]:
    enum = getattr(spec.check, "enum", None)
    out: dict[str, object] = {"enum": list(enum)} if enum is not None else dict(_JSON[spec.check])
    if spec.nullable:
        out = {"oneOf": [out, {"type": "null"}]}
    return out


def json_schema() -> dict[str, object]:
    """JSON Schema (2020-12) of every entry type, generated from :data:`SCHEMAS`, for
    people who re-implement a verifier. Structure only: canonical form (RFC 8785), the
    time's calendar validity and base64 canonicality are checked by :func:`decode`."""
    defs: dict[str, object] = {}
    for kind, specs in SCHEMAS.items():
        props: dict[str, object] = {
            "v": {"const": VERSION},
            "type": {"const": kind},
            "time": {"type": "string", "pattern": "^" + _TIME.pattern + "$"},
        }
        props.update({spec.name: _field_schema(spec) for spec in specs})
        defs[kind] = {
            "type": "object",
            "required": ["v", "type", "time", *(spec.name for spec in specs if not spec.optional)],
            "properties": props,
            "additionalProperties": True,
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "duet/log-entry/v1",
        "title": "duet CVM log entry (version 1)",
        "description": "One leaf of a CVM's log: the RFC 8785 canonical JSON of one of these objects. "
                       "Generated from duet.ledger.entries.SCHEMAS; do not edit.",
        "oneOf": [{"$ref": f"#/$defs/{kind}"} for kind in SCHEMAS],
        "$defs": defs,
    }


def is_entry_time(value: object) -> bool:
    """Whether `value` is an entry time as every entry carries it (fixed width, so that
    entry times compare as strings)."""
    try:
        _check_time(value)
    except EntryError:
        return False
    return True


def _check_time(value: object) -> None:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise EntryError(
            "field 'time' must be RFC 3339 UTC with microseconds, YYYY-MM-DDTHH:MM:SS.ffffffZ"
        )
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError as exc:
        raise EntryError(f"field 'time' is not a valid date and time: {value}") from exc


def validate(entry: Mapping[str, object]) -> str:
    """Check an entry object's version, type, time and typed fields; return its type.

    Raises :class:`EntryError` naming the first field that is missing or ill-typed.
    """
    if not isinstance(entry, Mapping):
        raise EntryError("an entry must be a JSON object")
    for key in entry:
        if not isinstance(key, str):
            raise EntryError(f"entry keys must be strings, got {key!r}")
    if "v" not in entry:
        raise EntryError("field 'v' (format version) is required")
    v = entry["v"]
    if not _is_int(v) or v != VERSION:
        raise EntryError(f"unsupported entry version {v!r}; this code reads version {VERSION}")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise EntryError("field 'type' is required and must be a string")
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise EntryError(f"unknown entry type {kind!r}")
    if "time" not in entry:
        raise EntryError(f"field 'time' is required for a {kind} entry")
    _check_time(entry["time"])
    for spec in schema:
        if spec.name not in entry:
            if spec.optional:
                continue
            raise EntryError(f"field {spec.name!r} is required for a {kind} entry")
        value = entry[spec.name]
        if value is None:
            if spec.nullable:
                continue
            raise EntryError(f"field {spec.name!r} of a {kind} entry must not be null")
        problem = spec.check(value)
        if problem is not None:
            null = " or null" if spec.nullable else ""
            raise EntryError(f"field {spec.name!r} of a {kind} entry must be {problem}{null}")
    if kind == "result":
        for stream in ("stdout", "stderr"):
            if entry[f"{stream}_encoding"] == "base64" and _k_b64(entry[stream]) is not None:
                raise EntryError(f"field {stream!r} of a result entry is not canonical base64")
    return kind


def _canonical(entry: Mapping[str, object]) -> bytes:
    try:
        return rfc8785.dumps(entry)  # type: ignore[arg-type]
    except (rfc8785.CanonicalizationError, TypeError, RecursionError) as exc:
        raise EntryError(f"entry is not representable as canonical JSON: {exc}") from exc


def encode(entry: Mapping[str, object]) -> bytes:
    """Validate ``entry`` and return its RFC 8785 canonical JSON: the leaf to append.

    Whatever :func:`decode` (and so a verifier) would refuse beyond what `validate`
    checks is an integer that JSON cannot carry exactly (beyond ±(2**53 - 1)), so that is
    checked here instead of decoding every leaf again: this runs twice per command.
    """
    validate(entry)
    _check_exact_ints(entry)
    return _canonical(entry)


def _check_exact_ints(value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise EntryError(f"integer {value} is not exactly representable in JSON (beyond 2**53 - 1)")
    elif isinstance(value, Mapping):
        for v in value.values():
            _check_exact_ints(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_exact_ints(v)


_MAX_SAFE_INT = strictjson.MAX_SAFE_INT
#: Leaves carry command output (capped by the controller well below this) and evidence.
MAX_LEAF_BYTES = 64 << 20
MAX_LEAF_DEPTH = 128


def decode(leaf: bytes) -> dict[str, object]:
    """Parse a leaf into its entry object; only canonical, valid entries are accepted."""
    if not isinstance(leaf, bytes | bytearray | memoryview):
        raise EntryError("a leaf must be bytes")
    raw = bytes(leaf)
    try:
        obj = strictjson.loads(raw, max_bytes=MAX_LEAF_BYTES, max_depth=MAX_LEAF_DEPTH,
                                big_ints_as_doubles=True, what="leaf")
    except strictjson.JsonInputError as exc:
        raise EntryError(f"leaf is not strict UTF-8 JSON ({exc.code}): {exc}") from exc
    if not isinstance(obj, dict):
        raise EntryError("a leaf must be a JSON object")
    if _canonical(obj) != raw:
        raise EntryError("leaf is not in RFC 8785 canonical form")
    validate(obj)
    return obj


# --- typed records ------------------------------------------------------------------


def _thaw(value: object) -> object:
    """Tuples (used in records for immutability) back to JSON arrays."""
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _freeze(value: object) -> object:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


_E = TypeVar("_E", bound="Entry")


@dataclass(frozen=True, kw_only=True)
class Entry:
    """Base of the typed entry records.

    ``time`` defaults to now. ``extra`` holds fields this version does not know, so a
    record read from a newer log re-encodes to the same bytes. ``explicit_nulls`` names
    optional fields that were present as JSON null (None otherwise means "absent"); it
    exists for the same reason.
    """

    TYPE: ClassVar[str] = ""

    time: str = field(default_factory=now_rfc3339)
    extra: Mapping[str, object] = field(default_factory=dict)
    explicit_nulls: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.TYPE not in SCHEMAS:
            raise EntryError("Entry is abstract: use one of the typed records, e.g. CommandEntry")
        # Refuse to build a record that could not be logged (bad field, non-JSON extra).
        encode(self.to_dict())

    def _payload(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for spec in SCHEMAS[self.TYPE]:
            value = getattr(self, spec.name)
            if value is None and spec.optional and spec.name not in self.explicit_nulls:
                continue
            out[spec.name] = _thaw(value)
        return out

    @classmethod
    def _kwargs(cls, entry: Mapping[str, object]) -> dict[str, object]:
        return {spec.name: _freeze(entry.get(spec.name)) for spec in SCHEMAS[cls.TYPE]}

    def to_dict(self) -> dict[str, object]:
        """The entry object, as :func:`encode` takes it and :func:`decode` returns it."""
        out: dict[str, object] = {"v": VERSION, "type": self.TYPE, "time": self.time}
        payload = self._payload()
        for key, value in self.extra.items():
            if key in payload or key in _RESERVED:
                raise EntryError(f"extra field {key!r} clashes with a defined field")
            out[key] = value
        out.update(payload)
        return out

    def encode(self) -> bytes:
        """The canonical leaf bytes of this entry."""
        return encode(self.to_dict())

    @classmethod
    def from_dict(cls: type[_E], entry: Mapping[str, object]) -> _E:
        """Build the record for ``entry`` (validated first). On a subclass, the entry's
        type must be that subclass's; on :class:`Entry`, any known type is accepted."""
        kind = validate(entry)
        target = RECORD_TYPES.get(kind)
        if target is None:  # a schema without its record class: a bug here, not bad input
            raise EntryError(f"entry type {kind!r} has no typed record")
        if cls is not Entry and target is not cls:
            raise EntryError(f"entry has type {kind!r}, expected {cls.TYPE!r}")
        known = {spec.name for spec in SCHEMAS[kind]}
        nulls = frozenset(
            spec.name
            for spec in SCHEMAS[kind]
            if spec.optional and spec.name in entry and entry[spec.name] is None
        )
        extra = {k: v for k, v in entry.items() if k not in known and k not in _RESERVED}
        time = entry["time"]
        assert isinstance(time, str)
        record = target(time=time, extra=extra, explicit_nulls=nulls, **target._kwargs(entry))
        return cast(_E, record)


@dataclass(frozen=True, kw_only=True)
class GenesisEntry(Entry):
    """First entry of every log: who controls the CVM, under which policy, on what."""

    TYPE: ClassVar[str] = "genesis"
    cvm_id: str
    origin: str
    controller_id: str
    controller_key: str
    owner_keys: tuple[str, ...]
    policy: str
    policy_sha256: str
    tee: str
    provider: str
    spec: Mapping[str, object]
    host_data: str | None = None
    evidence_kind: str | None = None
    instance_binding: str | None = None
    controller_log_size: int | None = None
    controller_log_root: str | None = None


@dataclass(frozen=True, kw_only=True)
class ProvisionedEntry(Entry):
    """The CVM exists: where it is, its pinned SSH host key, how it was launched."""

    TYPE: ClassVar[str] = "provisioned"
    instance_id: str
    host: str
    port: int
    user: str
    host_key: str
    host_key_sha256: str
    launch: Mapping[str, object]
    request: Mapping[str, object] | None = None
    client_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class LockdownEntry(Entry):
    """The checks showing every other way into the CVM is closed."""

    TYPE: ClassVar[str] = "lockdown"
    checks: tuple[Mapping[str, object], ...]
    ok: bool
    purpose: str | None = None
    where: str | None = None
    #: The judge's version and the parsed facts it judged (`ledger/lockdown.py`), so that a
    #: verifier judges them again; absent in logs from before facts were logged.
    judge_version: int | None = None
    facts: Mapping[str, object] | None = None


@dataclass(frozen=True, kw_only=True)
class EvidenceEntry(Entry):
    """Raw hardware attestation evidence and what it binds (nonce, host key)."""

    TYPE: ClassVar[str] = "evidence"
    kind: str
    nonce: str
    evidence: str
    binds: Mapping[str, object]
    report_data: str | None = None
    collateral: Mapping[str, object] | None = None
    purpose: str | None = None
    command_index: int | None = None


@dataclass(frozen=True, kw_only=True)
class IntentEntry(Entry):
    """An owner's signed intent (JWS), verbatim."""

    TYPE: ClassVar[str] = "intent"
    jws: str
    op: str
    kid: str
    controller_log_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class ModeEntry(Entry):
    """A mode change (provisioning, in-update, in-service, deleted)."""

    TYPE: ClassVar[str] = "mode"
    mode: str
    previous: str
    epoch: int | None = None


@dataclass(frozen=True, kw_only=True)
class CommandEntry(Entry):
    """A command about to run on the CVM, logged before it is sent."""

    TYPE: ClassVar[str] = "command"
    command: str
    intent_index: int | None = None
    action: str | None = None
    timeout_s: float | None = None
    builtin: bool | None = None
    stdin: str | None = None
    stdin_encoding: str | None = None
    stdin_bytes: int | None = None
    stdin_sha256: str | None = None

    @classmethod
    def with_stdin(cls, data: bytes, **kw: Any) -> CommandEntry:
        """A command entry that logs `data` as its stdin (nothing when it is empty)."""
        if not data:
            return cls(**kw)
        text, encoding = _text_or_b64(data)
        return cls(stdin=text, stdin_encoding=encoding, stdin_bytes=len(data),
                   stdin_sha256=hashlib.sha256(data).hexdigest(), **kw)

    def stdin_content(self) -> bytes:
        """The logged stdin bytes (b"" when none were sent)."""
        if self.stdin is None:
            return b""
        return base64.b64decode(self.stdin) if self.stdin_encoding == "base64" else self.stdin.encode("utf-8")


def _text_or_b64(data: bytes) -> tuple[str, str]:
    """UTF-8 text when `data` is valid UTF-8 (readable logs), else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


@dataclass(frozen=True, kw_only=True)
class OutputEntry(Entry):
    """A piece of a running command's output, durably logged before it is streamed."""

    TYPE: ClassVar[str] = "output"
    command_index: int
    stream: str
    offset: int
    data: str
    encoding: str

    @classmethod
    def piece(cls, command_index: int, stream: str, offset: int, raw: bytes) -> OutputEntry:
        text, encoding = _text_or_b64(raw)
        return cls(command_index=command_index, stream=stream, offset=offset, data=text, encoding=encoding)

    def content(self) -> bytes:
        return base64.b64decode(self.data) if self.encoding == "base64" else self.data.encode("utf-8")


StreamEncoding = Literal["utf-8", "base64"]


@dataclass(frozen=True, kw_only=True)
class StreamOutput:
    """One output stream of a command as logged: the (possibly truncated) content,
    its encoding, and the length and SHA-256 of the *full* stream."""

    data: str
    encoding: StreamEncoding
    total_bytes: int
    sha256: str
    truncated: bool

    @classmethod
    def from_bytes(cls, raw: bytes, limit: int) -> StreamOutput:
        """Log at most ``limit`` bytes of ``raw``: as UTF-8 text when the kept prefix is
        valid UTF-8 (a character cut by the limit is dropped), otherwise base64."""
        if limit < 0:
            raise EntryError("output limit must be non-negative")
        shown, truncated = raw[:limit], len(raw) > limit
        try:
            decoder = codecs.getincrementaldecoder("utf-8")()
            data, encoding = decoder.decode(shown, final=not truncated), "utf-8"
        except UnicodeDecodeError:
            data, encoding = base64.b64encode(shown).decode("ascii"), "base64"
        return cls(
            data=data,
            encoding=encoding,  # type: ignore[arg-type]
            total_bytes=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            truncated=truncated,
        )

    @classmethod
    def captured(cls, data: bytes, total: int, sha256: str, truncated: bool) -> StreamOutput:
        """A stream captured elsewhere (already capped): UTF-8 when the kept bytes are
        valid UTF-8 (readable logs), else base64; length and digest of the full stream."""
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return cls(data=text, encoding=encoding,  # type: ignore[arg-type]
                   total_bytes=total, sha256=sha256, truncated=truncated)

    def content(self) -> bytes:
        """The logged bytes (all of them unless ``truncated``)."""
        if self.encoding == "base64":
            return base64.b64decode(self.data)
        return self.data.encode("utf-8")


@dataclass(frozen=True, kw_only=True)
class ResultEntry(Entry):
    """The outcome of a command: exit status or signal, outputs, duration."""

    TYPE: ClassVar[str] = "result"
    command_index: int
    exit_status: int | None
    duration_ms: float
    stdout: StreamOutput
    stderr: StreamOutput
    signal: str | None = None
    timed_out: bool | None = None

    def _payload(self) -> dict[str, object]:
        out: dict[str, object] = {
            "command_index": self.command_index,
            "exit_status": self.exit_status,
            "duration_ms": self.duration_ms,
        }
        if self.signal is not None or "signal" in self.explicit_nulls:
            out["signal"] = self.signal
        if self.timed_out is not None:
            out["timed_out"] = self.timed_out
        for name in ("stdout", "stderr"):
            stream: StreamOutput = getattr(self, name)
            out[name] = stream.data
            out[f"{name}_encoding"] = stream.encoding
            out[f"{name}_bytes"] = stream.total_bytes
            out[f"{name}_sha256"] = stream.sha256
            out[f"{name}_truncated"] = stream.truncated
        return out

    @classmethod
    def _kwargs(cls, entry: Mapping[str, object]) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "command_index": entry["command_index"],
            "exit_status": entry["exit_status"],
            "duration_ms": entry["duration_ms"],
            "signal": entry.get("signal"),
            "timed_out": entry.get("timed_out"),
        }
        for name in ("stdout", "stderr"):
            kwargs[name] = StreamOutput(
                data=entry[name],  # type: ignore[arg-type]
                encoding=entry[f"{name}_encoding"],  # type: ignore[arg-type]
                total_bytes=entry[f"{name}_bytes"],  # type: ignore[arg-type]
                sha256=entry[f"{name}_sha256"],  # type: ignore[arg-type]
                truncated=entry[f"{name}_truncated"],  # type: ignore[arg-type]
            )
        return kwargs


@dataclass(frozen=True, kw_only=True)
class RejectedEntry(Entry):
    """A refused request (bad intent, wrong mode, policy) and why."""

    TYPE: ClassVar[str] = "rejected"
    op: str
    reason: str
    code: str
    jws: str | None = None


@dataclass(frozen=True, kw_only=True)
class InterruptedEntry(Entry):
    """Recovery's note that a logged command has no result (the controller stopped)."""

    TYPE: ClassVar[str] = "interrupted"
    command_index: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class DeletedEntry(Entry):
    """The CVM was deleted; the last entry of its log."""

    TYPE: ClassVar[str] = "deleted"
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class OwnerKeysEntry(Entry):
    """A new set of owner keys."""

    TYPE: ClassVar[str] = "owner_keys"
    keys: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class PolicyEntry(Entry):
    """A new policy (YAML text and its SHA-256)."""

    TYPE: ClassVar[str] = "policy"
    policy: str
    policy_sha256: str


@dataclass(frozen=True, kw_only=True)
class ErrorEntry(Entry):
    """Something went wrong that users must see (e.g. a host key mismatch)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True, kw_only=True)
class ControlPlaneEntry(Entry):
    """The CVM's cloud resource as the cloud API describes it, and the verdicts on it
    (`ledger/control_plane.py`): the facts, and a digest of the whole model read."""

    TYPE: ClassVar[str] = "control_plane"
    provider: str
    purpose: str
    model_sha256: str
    facts: Mapping[str, object]
    checks: tuple[Mapping[str, object], ...]
    ok: bool


@dataclass(frozen=True, kw_only=True)
class HeadsEntry(Entry):
    """Controller log: the current (size, root) of every CVM log that changed since the
    last `heads` entry (docs/transparency.md, "Witnesses")."""

    TYPE: ClassVar[str] = "heads"
    heads: tuple[Mapping[str, object], ...]


@dataclass(frozen=True, kw_only=True)
class WitnessesEntry(Entry):
    """Controller log: the witnesses in force from here on, and the quorum."""

    TYPE: ClassVar[str] = "witnesses"
    witnesses: tuple[Mapping[str, object], ...]
    quorum: int


@dataclass(frozen=True, kw_only=True)
class BuildApprovedEntry(Entry):
    """(Controller log) the owner approved a build to receive K: one MRENCLAVE, or (only if
    users' expectations allow it) an MRSIGNER with product id and minimum SVN."""

    TYPE: ClassVar[str] = "build_approved"
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None


@dataclass(frozen=True, kw_only=True)
class HandoverEntry(Entry):
    """(Controller log) K and the state were handed to an attested, approved successor;
    logged by the predecessor before it hands anything over."""

    TYPE: ClassVar[str] = "handover"
    from_mrenclave: str
    from_mrsigner: str
    to_mrenclave: str
    to_mrsigner: str
    to_key_sha256: str


@dataclass(frozen=True, kw_only=True)
class HandoverRefusedEntry(Entry):
    """(Controller log) a would-be successor got nothing, and why."""

    TYPE: ClassVar[str] = "handover_refused"
    mrenclave: str
    mrsigner: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class StandbyJoinedEntry(Entry):
    """(Controller log) K went to an attested, approved standby instance (the primary
    keeps it): logged by the primary before anything leaves. `to_key_sha256` is the
    digest of the standby's handshake key, which its `promote` names again."""

    TYPE: ClassVar[str] = "standby_joined"
    from_mrenclave: str
    from_mrsigner: str
    to_mrenclave: str
    to_mrsigner: str
    to_key_sha256: str


@dataclass(frozen=True, kw_only=True)
class PromoteEntry(Entry):
    """(Controller log) a standby took the primary lease and acts from here on; logged
    before it rotates any CVM key or accepts any intent."""

    TYPE: ClassVar[str] = "promote"
    mrenclave: str
    mrsigner: str
    key_sha256: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class KeyRotatedEntry(Entry):
    """(CVM log) the controller's SSH client key for this CVM was replaced and the old one
    removed, after a handover: an instance that kept the old key reaches nothing."""

    TYPE: ClassVar[str] = "key_rotated"
    client_key: str
    previous_key_sha256: str
    reason: str
    how: str
    controller_log_size: int


@dataclass(frozen=True, kw_only=True)
class RecoveryPolicyEntry(Entry):
    """(Controller log) the recovery policy in force from here on: K is split `threshold`
    of len(holders), each share encrypted to one holder's X25519 key; digests only."""

    TYPE: ClassVar[str] = "recovery_policy"
    threshold: int
    holders: tuple[str, ...]
    shares_sha256: tuple[str, ...]
    state_key_sha256: str


@dataclass(frozen=True, kw_only=True)
class RecoveredEntry(Entry):
    """(Controller log) an enclave of build `mrenclave` reconstructed K from the shares of
    `holders`, re-encrypted to its attested key (`key_sha256`)."""

    TYPE: ClassVar[str] = "recovered"
    mrenclave: str
    mrsigner: str
    from_mrenclave: str
    key_sha256: str
    holders: tuple[str, ...]
    state_key_sha256: str
    policy_index: int


@dataclass(frozen=True, kw_only=True)
class StateKeyRotatedEntry(Entry):
    """(Controller log) K was replaced by a new random key; every secret is under the new
    one, and the shares (if recovery is on) are of the new one."""

    TYPE: ClassVar[str] = "state_key_rotated"
    reason: str
    from_cpusvn: int | None
    to_cpusvn: int | None
    previous_state_key_sha256: str
    state_key_sha256: str
    shares_sha256: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ProvidersEntry(Entry):
    """The providers in force from here on, with their non-secret settings."""

    TYPE: ClassVar[str] = "providers"
    providers: Mapping[str, object]
    providers_sha256: str
    control_plane_recheck_s: int | None = None


@dataclass(frozen=True, kw_only=True)
class CredentialsEntry(Entry):
    """A provider's credentials were replaced (what they are is never logged)."""

    TYPE: ClassVar[str] = "credentials"
    provider: str
    recipient_key_id: str
    ciphertext_sha256: str
    credentials_mac: str


RECORD_TYPES: dict[str, type[Entry]] = {
    cls.TYPE: cls
    for cls in (
        GenesisEntry,
        ProvisionedEntry,
        LockdownEntry,
        EvidenceEntry,
        IntentEntry,
        ModeEntry,
        CommandEntry,
        OutputEntry,
        ResultEntry,
        RejectedEntry,
        InterruptedEntry,
        DeletedEntry,
        OwnerKeysEntry,
        PolicyEntry,
        ErrorEntry,
        ControlPlaneEntry,
        HeadsEntry,
        WitnessesEntry,
        BuildApprovedEntry,
        HandoverEntry,
        HandoverRefusedEntry,
        StandbyJoinedEntry,
        PromoteEntry,
        KeyRotatedEntry,
        RecoveryPolicyEntry,
        RecoveredEntry,
        StateKeyRotatedEntry,
        ProvidersEntry,
        CredentialsEntry,
    )
}
"""Entry type name → record class."""


def parse(leaf: bytes) -> Entry:
    """Decode a leaf into its typed record."""
    return Entry.from_dict(decode(leaf))
