"""The options every owner command shares, defined once so that they read and behave the same
in every command module (`main.py`, `providers_cmd.py`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ControllerOpt = Annotated[str, typer.Option("--controller", envvar="DUET_CONTROLLER", help="Controller URL.")]
KeyOpt = Annotated[Path, typer.Option("--key", envvar="DUET_OWNER_KEY", help="Owner private key (PEM).")]
ExpectOpt = Annotated[Path | None, typer.Option(
    "--expect", envvar="DUET_EXPECT",
    help="Expectations YAML; its controller section is checked in the RA-TLS handshake.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-simulated", help="Accept a SIMULATED TEE (unsafe). Env: DUET_TRUST_SIMULATED=1.")]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", envvar="DUET_STATE_DIR", help="Where checkpoints and pins are remembered.")]
