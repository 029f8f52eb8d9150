"""``duet controller witnesses``: the owner sets the witnesses of the controller log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from duet.cli.options import ControllerOpt, KeyOpt, StateDirOpt, TrustOpt
from duet.client.config import DEFAULT_URL

app = typer.Typer(no_args_is_help=True, help="The controller log's witnesses (owner; a signed witnesses.set).")


@app.callback()
def _group() -> None:
    """The controller log's witnesses (owner; a signed witnesses.set)."""


@app.command("set")
def witnesses_set(
    witness: Annotated[list[str] | None, typer.Option(
        "--witness", help="VKEY=URL of a witness (repeatable; none turns witnessing off).")] = None,
    quorum: Annotated[int | None, typer.Option(
        "--quorum", min=0, help="Witnesses that must answer at start-up (default: all).")] = None,
    controller: ControllerOpt = DEFAULT_URL,
    key: KeyOpt = Path("owner.key"),
    trust_simulated: TrustOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Sign and submit witnesses.set: the controller submits its log to these witnesses."""
    from duet.cli.main import _guard, _owner, _trust, fail, out

    @_guard
    def run() -> None:
        items = []
        for w in witness or []:
            vkey, sep, url = w.partition("=")
            if not sep or not vkey or not url.startswith(("http://", "https://")):
                fail("invalid_request", f"--witness {w[:80]!r} is not VKEY=URL", 2)
            items.append((vkey, url))
        owner = _owner(controller, key, None, _trust(trust_simulated), state_dir)
        res = owner.set_witnesses(items, len(items) if quorum is None else quorum)
        names = ", ".join(str(w["vkey"]).split("+", 1)[0] for w in res["witnesses"]) or "none"
        out.print(f"witnesses: {names}; quorum {res['quorum']} (controller log entry {res['controller_log_index']})",
                  markup=False)

    run()
