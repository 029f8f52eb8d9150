"""The `duet` entry point: `duet cvm run`, `duet cvm wait CVM INDEX` and `duet --version`
without typer, rich, pydantic or httpx.

Why: `duet cvm run ID -- true` should start as fast as a new `ssh HOST true` process, and
importing the full command line (typer, rich, the operation registry's pydantic models,
httpx) costs a new process several times the command's own round trip. This module
parses the common forms of those commands by hand and runs them with the same code the
full CLI runs (`cli/run_cmd.py`, `client/owner.py`, `client/streamed.py`,
`client/api.py`, `cli/addressing.py`, `cli/failure.py`), over the standard library's
HTTP client (`client/lean_http.py`) and, for `https://`, the same RA-TLS verifier and
verdict cache (`client/ratls.py`). Anything it does not recognise (another command, an
option it does not know, `--expect`, `--help`, a proxy in the environment, a malformed
argument that deserves typer's usage message) goes to the full CLI, `duet.cli.main`,
unchanged: the lean path is an optimisation, never a second dialect
(tests/cli/test_lean_cli.py runs both and compares).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Options of `cvm run` / `cvm wait` the lean path takes: name -> (parameter, takes a value).
_RUN_OPTS: dict[str, tuple[str, bool]] = {
    "--controller": ("controller", True), "--key": ("key", True), "--state-dir": ("state_dir", True),
    "--trust-simulated": ("trust_simulated", False), "--timeout": ("timeout", True), "--sh": ("sh", True),
    "-v": ("verbose", False), "--verbose": ("verbose", False), "-i": ("interactive", False),
    "--stdin": ("interactive", False), "--no-wait": ("no_wait", False),
}
_WAIT_OPTS = {k: v for k, v in _RUN_OPTS.items()
              if v[0] in ("controller", "key", "state_dir", "trust_simulated")}
#: Environment variables the options read (as typer's `envvar=`: an empty value is unset).
_ENV = {"controller": "DUET_CONTROLLER", "key": "DUET_OWNER_KEY", "state_dir": "DUET_STATE_DIR",
        "expect": "DUET_EXPECT"}
_DEFAULTS: dict[str, Any] = {"controller": None, "key": Path("owner.key"), "state_dir": None, "expect": None}
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


class Fallback(Exception):
    """This command line is for the full CLI."""


@dataclass
class Parsed:
    command: str  # "run" | "wait"
    positionals: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)  # after --
    opts: dict[str, Any] = field(default_factory=dict)


def parse(args: list[str]) -> Parsed:
    """`cvm run|wait ...` as click would parse it, or Fallback."""
    if len(args) < 2 or args[0] != "cvm" or args[1] not in ("run", "wait"):
        raise Fallback
    p = Parsed(args[1])
    table = _RUN_OPTS if p.command == "run" else _WAIT_OPTS
    rest = args[2:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok == "--":
            p.argv = rest[i:]
            break
        if not tok.startswith("-") or tok == "-":
            p.positionals.append(tok)
            continue
        name, eq, value = tok.partition("=")
        spec = table.get(name)
        if spec is None or (eq and not spec[1]):
            raise Fallback  # unknown, --help, --expect, -vi, --flag=value: typer decides
        param, takes = spec
        if takes:
            if not eq:
                if i >= len(rest) or rest[i] == "--":
                    raise Fallback
                value = rest[i]
                i += 1
            if value == "":
                raise Fallback
            p.opts[param] = value
        else:
            p.opts[param] = True
    return p


def _settings(p: Parsed) -> dict[str, Any]:
    """Flag, else environment, else context, else default (as main._apply_context)."""
    out: dict[str, Any] = {}
    defaulted: list[str] = []
    for param in ("controller", "key", "state_dir", "expect"):
        if param in p.opts:
            out[param] = p.opts[param]
        elif os.environ.get(_ENV[param]):
            out[param] = os.environ[_ENV[param]]
        else:
            out[param] = _DEFAULTS[param]
            defaulted.append(param)
    if defaulted:
        from duet.cli import contexts

        _, ctx = contexts.current()
        for fld, param in contexts.FIELDS.items():
            if param in defaulted and fld in ctx:
                out[param] = contexts.value(ctx, fld)
    if out["expect"] is not None:
        raise Fallback  # the expectations (pydantic, attestation) are the full CLI's
    if out["controller"] is None:
        from duet.client.config import DEFAULT_URL

        out["controller"] = DEFAULT_URL
    for param in ("key", "state_dir"):
        if out[param] is not None:
            out[param] = Path(out[param])
    return out


class _Err:
    """What run_cmd asks of the CLI's stderr console: print a line, as is."""

    def print(self, text: str, markup: bool = True) -> None:
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()


def _owner(s: dict[str, Any], trust_flag: bool) -> Any:
    """As main._owner (without expectations): the URL check, the HTTP client (RA-TLS over
    https://), then the key."""
    from duet.client.config import check_owner_url, env_bool
    from duet.client.lean_http import LeanHttp
    from duet.client.owner import OwnerClient
    from duet.ledger import keys

    url = s["controller"]
    check_owner_url(url)
    trust = trust_flag or env_bool("DUET_TRUST_SIMULATED")
    http = LeanHttp(url, trust_simulated=trust or None, state_dir=s["state_dir"])
    return OwnerClient(keys.read_private_key(s["key"]), url, http=http)


def _run(p: Parsed) -> int:
    import shlex

    from duet.cli import run_cmd
    from duet.cli.addressing import cvm_id

    if len(p.positionals) < 1:
        raise Fallback
    cvm, argv = p.positionals[0], p.positionals[1:] + p.argv
    sh = p.opts.get("sh")
    if (sh is not None) == bool(argv) or (sh is not None and not sh.strip()):
        raise Fallback  # typer's usage errors
    s = _settings(p)
    command = sh if sh is not None else shlex.join(argv)
    err = _Err()
    if p.opts.get("verbose"):
        err.print(f"duet: signing command {command!r}", markup=False)
    owner = _owner(s, bool(p.opts.get("trust_simulated")))
    return run_cmd.run(owner, cvm_id(owner.http, cvm), command, timeout=p.opts.get("timeout"),
                       interactive=bool(p.opts.get("interactive")), no_wait=bool(p.opts.get("no_wait")), err=err)


def _wait(p: Parsed) -> int:
    from duet.cli import run_cmd
    from duet.cli.addressing import cvm_id

    if len(p.positionals) != 2 or p.argv or not re.fullmatch(r"[0-9]+", p.positionals[1]):
        raise Fallback
    s = _settings(p)
    owner = _owner(s, bool(p.opts.get("trust_simulated")))
    return run_cmd.wait(owner, cvm_id(owner.http, p.positionals[0]), int(p.positionals[1]), _Err())


def lean(args: list[str]) -> int:
    """The exit status of the command, or Fallback."""
    if args == ["--version"]:
        from duet import __version__

        sys.stdout.write(f"duet {__version__}\n")
        return 0
    if any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS):
        raise Fallback  # httpx honours proxies; this client does not
    p = parse(args)
    from duet.cli.failure import failure

    try:
        return _run(p) if p.command == "run" else _wait(p)
    except Fallback:
        raise
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write("\nAborted!\n")  # as click ends an interrupted command
        return 1
    except Exception as exc:
        code, message, exit_code = failure(exc)
        sys.stderr.write(f"error [{code}]: {message}\n")
        return exit_code


def main() -> None:
    args = sys.argv[1:]
    try:
        status = lean(args)
    except Fallback:
        from duet.cli.main import main as full

        full()
        return
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
