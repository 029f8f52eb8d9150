"""Named contexts, as in kubectl: `$XDG_CONFIG_HOME/duet/config.yaml` (default
`~/.config/duet/config.yaml`)::

    current-context: prod
    contexts:
      prod: {controller: "https://duet.example:6037", key: ~/keys/owner.key, expect: ~/prod-expect.yaml}
      local: {controller: "http://127.0.0.1:6037", key: owner.key}

A context fills in only what the command line and the environment leave unset: a flag
wins, then its environment variable (`DUET_CONTROLLER`, `DUET_OWNER_KEY`, `DUET_EXPECT`,
`DUET_STATE_DIR`), then the context (`DUET_CONTEXT` picks one for a single command), then
the built-in default. Unknown keys are refused, so a typo cannot silently drop a setting
such as the expectations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from duet.client.errors import ConfigError

#: Context keys and the command parameter each one fills in.
FIELDS = {"controller": "controller", "key": "key", "expect": "expect", "state-dir": "state_dir"}
_PATHS = frozenset({"key", "expect", "state-dir"})


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "duet" / "config.yaml"


def load() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"contexts": {}}
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not set(doc) <= {"current-context", "contexts"}:
        raise ConfigError(f"{path}: only current-context and contexts are allowed at the top")
    contexts = doc.get("contexts") or {}
    if not isinstance(contexts, dict):
        raise ConfigError(f"{path}: contexts must be a mapping of name to settings")
    for name, ctx in contexts.items():
        if not isinstance(ctx, dict) or not set(ctx) <= set(FIELDS) or \
                not all(isinstance(v, str) for v in ctx.values()):
            raise ConfigError(f"{path}: context {name!r} may set only {', '.join(FIELDS)} (strings)")
    doc["contexts"] = contexts
    return doc


def save(doc: dict[str, Any]) -> Path:
    import yaml

    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path


def current(doc: dict[str, Any] | None = None) -> tuple[str | None, dict[str, str]]:
    """The context in force (DUET_CONTEXT, else current-context) and its settings."""
    doc = doc if doc is not None else load()
    name = os.environ.get("DUET_CONTEXT") or doc.get("current-context")
    if not name:
        return None, {}
    ctx = doc["contexts"].get(name)
    if ctx is None:
        raise ConfigError(f"context {name!r} is not in {config_path()}; see duet context list")
    return str(name), dict(ctx)


def value(ctx: dict[str, str], field: str) -> Any:
    """A context's value as the command parameter takes it (paths expanded)."""
    v = ctx[field]
    return Path(v).expanduser() if field in _PATHS else v
