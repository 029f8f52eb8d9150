"""Owner operations: one record per operation, read by everything that deals with intents.

Intent parsing (`duet.ledger.intent`) checks an intent's arguments with the operation's
pydantic model; the controller dispatches to the method the record names; the owner SDK
checks arguments before signing; the user's audit replays the log with the same names.
Adding an operation is one record here (and its handler on the controller).

The argument models are strict (no coercion: `"5"` is not a number, `1` is not `true`)
and refuse unknown arguments, because a signed intent is evidence and must mean exactly
one thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from duet.ledger import op_names
from duet.ledger.entries import OWNER_MODES

MAX_COMMAND_LEN = 64 * 1024
MAX_POLICY_LEN = 64 * 1024
MAX_STDIN = op_names.MAX_STDIN
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

Name = Annotated[str, StringConstraints(pattern=NAME_RE.pattern)]


class Op(StrEnum):
    CREATE = "cvm.create"
    MODE = "cvm.mode"
    RUN = "cvm.run"
    ACTION = "cvm.action"
    DELETE = "cvm.delete"
    OWNER_KEYS = "owner.keys"
    POLICY_SET = "policy.set"
    WITNESSES_SET = "witnesses.set"
    CONTROLLER_APPROVE = "controller.approve"
    PROVIDERS_SET = "providers.set"
    CREDENTIALS_SET = "credentials.set"
    CONTROLLER_RECOVERY = "controller.recovery"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateArgs(_Args):
    provider: Name
    tee: Name | None = None
    name: Name | None = None
    spec: dict[str, Any] | None = None


class ModeArgs(_Args):
    mode: Literal[OWNER_MODES]  # type: ignore[valid-type]


class RunArgs(_Args):
    command: str
    timeout_s: float | None = Field(None, gt=0, le=86400)
    #: SHA-256 (hex) of the bytes the command gets on stdin; they travel with the intent
    #: and are logged in the command entry. Absent: stdin is empty.
    stdin_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        # Strict floats refuse ints; JSON has one number type, booleans are not numbers.
        if isinstance(v, bool) or not isinstance(v, int | float | None):
            raise ValueError("must be a number in (0, 86400]")
        return float(v) if v is not None else None

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty command")
        if len(v.encode("utf-8")) > MAX_COMMAND_LEN or "\x00" in v:
            raise ValueError("is longer than 64 KiB or contains NUL")
        return v


class ActionArgs(_Args):
    name: Name


class DeleteArgs(_Args):
    pass


class OwnerKeysArgs(_Args):
    keys: list[str] = Field(min_length=1, max_length=16)


class PolicyArgs(_Args):
    policy: str

    @field_validator("policy")
    @classmethod
    def _size(cls, v: str) -> str:
        if len(v.encode("utf-8")) > MAX_POLICY_LEN:
            raise ValueError("must be YAML text of at most 64 KiB")
        return v


MAX_WITNESSES = 16


class WitnessArg(_Args):
    """One witness: its C2SP cosignature/v1 verifier key and where it takes
    `POST <url>/add-checkpoint`."""

    vkey: str
    url: str

    @field_validator("vkey")
    @classmethod
    def _vkey(cls, v: str) -> str:
        from duet.ledger.cosignature import CosignatureVerifier
        from duet.ledger.errors import LedgerError

        try:
            CosignatureVerifier.from_vkey(v)
        except (LedgerError, ValueError) as exc:
            raise ValueError(f"is not a cosignature/v1 vkey: {exc}") from None
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", v) or len(v) > 2048:
            raise ValueError("must be an http(s) URL without query or fragment")
        return v


class WitnessesArgs(_Args):
    """The witnesses the controller log is submitted to; `quorum` of them must answer at
    start-up (rollback defence). An empty list with quorum 0 turns witnessing off."""

    witnesses: list[WitnessArg] = Field(max_length=MAX_WITNESSES)
    quorum: int = Field(ge=0, le=MAX_WITNESSES)

    @model_validator(mode="after")
    def _quorum(self) -> WitnessesArgs:
        n = len(self.witnesses)
        if self.quorum > n or (n and self.quorum < 1):
            raise ValueError(f"quorum must be between 1 and the number of witnesses ({n}), or 0 with none")
        names = [w.vkey.split("+", 1)[0] for w in self.witnesses]
        if len(set(names)) != len(names):
            raise ValueError("two witnesses share a name")
        return self
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ApproveArgs(_Args):
    """One build that may receive the state key K at a handover: an MRENCLAVE, or an
    MRSIGNER with its product id and minimum SVN (every future build that key signs; users
    accept that form only with `allow_mrsigner_approval`)."""

    mrenclave: Hex32 | None = None
    mrsigner: Hex32 | None = None
    isv_prod_id: int | None = Field(None, ge=0, lt=1 << 16)
    min_isv_svn: int | None = Field(None, ge=0, lt=1 << 16)

    @model_validator(mode="after")
    def _one_form(self) -> ApproveArgs:
        signer = (self.mrsigner, self.isv_prod_id, self.min_isv_svn)
        if self.mrenclave is not None and all(v is None for v in signer):
            return self
        if self.mrenclave is None and all(v is not None for v in signer):
            return self
        raise ValueError("give either mrenclave, or mrsigner with isv_prod_id and min_isv_svn")
#: How long a control-plane re-check interval may be (seconds): at least a minute (the
#: cloud APIs are rate-limited), at most a day.
RECHECK_MIN_S, RECHECK_MAX_S = 60, 86400
MAX_PROVIDER_SETTINGS = 16 * 1024


class ProvidersArgs(_Args):
    """The providers this controller drives and their non-secret settings (what
    `--providers FILE` holds outside an enclave), and how often the control plane of each
    cloud CVM is read again."""

    providers: dict[Name, dict[str, Any]] = Field(max_length=8)
    control_plane_recheck_s: int | None = Field(None, ge=RECHECK_MIN_S, le=RECHECK_MAX_S)

    @field_validator("providers")
    @classmethod
    def _size(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        import json

        if len(json.dumps(v)) > MAX_PROVIDER_SETTINGS:
            raise ValueError("must be at most 16 KiB of settings")
        return v


class CredentialsArgs(_Args):
    """Only a digest of the HPKE ciphertext, which travels beside the intent (never in it,
    never logged): `ledger/credentials.py`."""

    provider: Name
    ciphertext_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    recipient_key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


MAX_RECOVERY_HOLDERS = 16


class RecoveryArgs(_Args):
    """The recovery policy (docs/continuity.md, "Recovery from shares"): K is split so that
    any `threshold` of the `holders` (base64 raw X25519 keys) can rebuild it in an approved
    enclave. No holders and threshold 0 turn recovery off."""

    threshold: int = Field(ge=0, le=MAX_RECOVERY_HOLDERS)
    holders: list[str] = Field(max_length=MAX_RECOVERY_HOLDERS)

    @field_validator("holders")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        import base64
        import binascii

        for h in v:
            try:
                raw = base64.b64decode(h, validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32 or base64.b64encode(raw).decode() != h:
                raise ValueError("each holder is the canonical base64 of a raw 32-byte X25519 key")
        if len(set(v)) != len(v):
            raise ValueError("a holder is listed twice")
        return v

    @model_validator(mode="after")
    def _threshold(self) -> RecoveryArgs:
        n = len(self.holders)
        if (n == 0) != (self.threshold == 0) or self.threshold > n:
            raise ValueError(f"threshold must be between 1 and the number of holders ({n}), or 0 with none")
        return self


@dataclass(frozen=True)
class Operation:
    """One owner operation.

    ``targets_cvm``: the intent must name an existing CVM in ``cvm`` (and the controller
    holds that CVM's lock while it runs). ``handler``: the name of the controller method
    that carries it out (the controller layer is not importable from here).
    ``status``/``wrap``: the HTTP status of success, and the key the handler's result
    is returned under (None: returned as is).
    """

    op: str
    targets_cvm: bool
    args: type[BaseModel]
    handler: str
    summary: str
    status: int = 200
    wrap: str | None = "cvm"
    #: The request carries a sealed attachment beside the intent (credentials.set).
    attachment: bool = False


OPERATIONS: dict[str, Operation] = {}


def register(operation: Operation) -> Operation:
    OPERATIONS[operation.op] = operation
    return operation


def unregister(op: str) -> None:
    OPERATIONS.pop(op, None)


for _o in (
    Operation(Op.CREATE, False, CreateArgs, "create", "create a CVM", status=201),
    Operation(Op.MODE, True, ModeArgs, "set_mode", "put a CVM in-update or in-service"),
    Operation(Op.RUN, True, RunArgs, "run", "run a command on a CVM (in-update)", wrap=None),
    Operation(Op.ACTION, True, ActionArgs, "action", "run an action of the CVM's policy", wrap=None),
    Operation(Op.DELETE, True, DeleteArgs, "delete", "delete a CVM and close its log"),
    Operation(Op.OWNER_KEYS, False, OwnerKeysArgs, "set_owner_keys", "replace the owner keys", wrap=None),
    Operation(Op.POLICY_SET, True, PolicyArgs, "set_policy", "replace a CVM's policy (in-update)"),
    Operation(Op.WITNESSES_SET, False, WitnessesArgs, "set_witnesses", "replace the controller log's witnesses",
              wrap=None),
    Operation(Op.CONTROLLER_APPROVE, False, ApproveArgs, "approve_build",
              "approve a controller build to receive the state key at a handover", wrap=None),
    Operation(Op.PROVIDERS_SET, False, ProvidersArgs, "set_providers",
              "replace the providers and their settings", wrap=None),
    Operation(Op.CREDENTIALS_SET, False, CredentialsArgs, "set_credentials",
              "give a provider cloud credentials (HPKE-sealed to the controller)", wrap=None, attachment=True),
    Operation(Op.CONTROLLER_RECOVERY, False, RecoveryArgs, "set_recovery",
              "set the M-of-N recovery keys the state key is shared to (or none)", wrap=None),
):
    register(_o)


def check_args(op: str, args: dict[str, Any]) -> BaseModel:
    """Validate an intent's arguments; raises ValueError naming the argument."""
    operation = OPERATIONS.get(op)
    if operation is None:
        raise ValueError(f"unknown intent op {op!r}; known: {', '.join(OPERATIONS)}")
    try:
        return operation.args.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"args.{'.'.join(str(p) for p in e['loc']) or '?'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{op} {problems}") from None
