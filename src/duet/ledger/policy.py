"""The CVM policy: which commands and actions each mode allows.

The policy text is logged (genesis, `policy` entries), and a service user's verifier
replays it to check that nothing ran that the mode forbade; so parsing lives here, on the
pure verification side, and the controller and the verifier share one interpretation.

Shape (YAML)::

    version: 1
    commands:                       # regexes, matched against the whole command
      in-update: ['.*']             # default: anything while in-update
      in-service: []                # plain commands in-service: never (not configurable)
    actions:                        # named, pre-agreed commands
      health: {run: "uptime", modes: [in-update, in-service]}
      attest: {builtin: attest, modes: [in-update, in-service]}
    on_enter:                       # actions run when entering a mode
      in-update: []
      in-service: []
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from duet.ledger.builtins import SNAPSHOT_V2
from duet.ledger.entries import OWNER_MODES
from duet.ledger.errors import LedgerError
from duet.ledger.regex import Pattern, compile_linear

MODES = OWNER_MODES
BUILTINS = ("attest", "snapshot", "lockdown")

#: What the builtin `snapshot` action runs on the CVM (as its SSH user): read-only
#: commands whose outputs, and their SHA-256 digests, describe the CVM's state (packages,
#: listening sockets, processes, persistence points, units, kernel modules). Fixed here so
#: a verifier can check that a logged snapshot ran exactly these (`duet.ledger.builtins`
#: keeps every older version too).
SNAPSHOT_COMMANDS = SNAPSHOT_V2
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_POLICY = """\
version: 1
commands:
  in-update: ['.*']
actions:
  attest:
    builtin: attest
    modes: [in-update, in-service]
  health:
    run: "uptime; df -h . | tail -n 1"
    modes: [in-update, in-service]
on_enter:
  in-update: []
  in-service: []
"""


class PolicyError(LedgerError):
    code = "invalid_policy"


@dataclass(frozen=True)
class Action:
    name: str
    run: str | None
    builtin: str | None
    modes: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    text: str
    commands: dict[str, tuple[Pattern, ...]]
    actions: dict[str, Action]
    on_enter: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def command_allowed(self, mode: str, command: str) -> bool:
        """Plain commands are never allowed in-service, whatever the text says."""
        if mode != "in-update":
            return False
        return any(p.fullmatch(command) for p in self.commands.get(mode, ()))

    def action_allowed(self, mode: str, name: str) -> bool:
        action = self.actions.get(name)
        return action is not None and mode in action.modes


@functools.lru_cache(maxsize=64)
def parse_policy(text: str) -> Policy:
    """Parse a policy; cached because the controller consults it on every command and
    YAML parsing costs milliseconds (the result is immutable)."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, C when available
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("policy must be a YAML mapping")
    unknown = set(doc) - {"version", "commands", "actions", "on_enter"}
    if unknown:
        raise PolicyError(f"policy has unknown keys: {sorted(unknown)}")
    if doc.get("version", 1) != 1:
        raise PolicyError(f"policy version must be 1, got {doc.get('version')!r}")
    commands = _parse_commands(doc.get("commands", {"in-update": [".*"]}))
    actions = _parse_actions(doc.get("actions", {}))
    on_enter = _parse_on_enter(doc.get("on_enter", {}), actions)
    return Policy(text=text, commands=commands, actions=actions, on_enter=on_enter)


def _parse_commands(raw: Any) -> dict[str, tuple[Pattern, ...]]:
    if not isinstance(raw, dict):
        raise PolicyError("policy 'commands' must map a mode to a list of regexes")
    out: dict[str, tuple[Pattern, ...]] = {}
    for mode, patterns in raw.items():
        if mode not in MODES:
            raise PolicyError(f"policy 'commands' names unknown mode {mode!r}")
        if mode == "in-service" and patterns:
            raise PolicyError("plain commands cannot be allowed in-service; use actions")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns or []):
            raise PolicyError(f"policy 'commands.{mode}' must be a list of regex strings")
        compiled = []
        for p in patterns or []:
            try:
                compiled.append(compile_linear(p))  # RE2: linear time, whatever the pattern
            except ValueError as exc:
                raise PolicyError(f"policy regex {p!r} is invalid: {exc}") from None
        out[mode] = tuple(compiled)
    return out


def _parse_actions(raw: Any) -> dict[str, Action]:
    if not isinstance(raw, dict):
        raise PolicyError("policy 'actions' must map action names to definitions")
    out: dict[str, Action] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise PolicyError(f"policy action name {name!r} is not a short name")
        if not isinstance(spec, dict) or set(spec) - {"run", "builtin", "modes"}:
            raise PolicyError(f"policy action {name!r} takes only run, builtin and modes")
        run, builtin = spec.get("run"), spec.get("builtin")
        if (run is None) == (builtin is None):
            raise PolicyError(f"policy action {name!r} needs exactly one of run or builtin")
        if run is not None and (not isinstance(run, str) or not run.strip()):
            raise PolicyError(f"policy action {name!r}: run must be a command string")
        if builtin is not None and builtin not in BUILTINS:
            raise PolicyError(f"policy action {name!r}: unknown builtin {builtin!r}")
        modes = spec.get("modes", ["in-update"])
        if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
            raise PolicyError(f"policy action {name!r}: modes must be a list of {MODES}")
        out[name] = Action(name=name, run=run, builtin=builtin, modes=tuple(modes))
    return out


def _parse_on_enter(raw: Any, actions: dict[str, Action]) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise PolicyError("policy 'on_enter' must map a mode to a list of action names")
    out: dict[str, tuple[str, ...]] = {}
    for mode, names in raw.items():
        if mode not in MODES:
            raise PolicyError(f"policy 'on_enter' names unknown mode {mode!r}")
        if names is None:
            names = []
        if not isinstance(names, list):
            raise PolicyError(f"policy 'on_enter.{mode}' must be a list of action names")
        for n in names:
            if n not in actions:
                raise PolicyError(f"policy 'on_enter.{mode}' names undefined action {n!r}")
        out[mode] = tuple(names)
    return out
