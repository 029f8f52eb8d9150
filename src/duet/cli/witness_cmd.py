"""``duet witness``: run a C2SP tlog-witness for duet controller logs (or any C2SP log)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run a transparency-log witness (C2SP tlog-witness, cosignature/v1).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Run a transparency-log witness (C2SP tlog-witness, cosignature/v1)."""


def _fail(message: str) -> None:
    typer.echo(f"error [witness]: {message}", err=True)
    raise typer.Exit(1)


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (mode 0600).")],
    name: Annotated[str, typer.Option("--name", help="Witness name (a schema-less URL).")] = "duet-witness",
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Make a witness key; print its verifier key (vkey, signature type 0x04)."""
    from duet.ledger.cosignature import Cosigner
    from duet.ledger.errors import LedgerError
    from duet.ledger.keys import Ed25519PrivateKey

    if out.exists() and not force:
        _fail(f"{out} exists; pass --force to overwrite")
    try:
        signer = Cosigner(name, Ed25519PrivateKey.generate())
    except LedgerError as exc:
        _fail(str(exc))
    from duet.cli.private_file import write_private

    write_private(out, (signer.skey() + "\n").encode())
    typer.echo(signer.vkey())


@app.command("serve")
def serve(
    data: Annotated[Path, typer.Option("--data", help="Directory for the witness's durable state.")],
    key: Annotated[Path, typer.Option("--key", help="Witness key file (duet witness keygen).")],
    log: Annotated[list[str], typer.Option("--log", help="ORIGIN=VKEY of a log to follow (repeatable).")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:6038",
) -> None:
    """Serve POST /add-checkpoint: cosign a checkpoint only if it extends the last one."""
    import uvicorn

    from duet.ledger.cosignature import Cosigner
    from duet.ledger.errors import LedgerError
    from duet.ledger.note import Verifier
    from duet.witness.server import Witness, make_app
    from duet.witness.state import WitnessState

    logs: dict[str, list[Verifier]] = {}
    try:
        cosigner = Cosigner.from_skey(key.read_text())
        for item in log:
            origin, sep, vkey = item.partition("=")
            if not sep or not origin:
                _fail(f"--log {item!r} is not ORIGIN=VKEY")
            logs.setdefault(origin, []).append(Verifier.from_vkey(vkey))
    except OSError as exc:
        _fail(f"cannot read {key}: {exc.strerror}")
    except LedgerError as exc:
        _fail(str(exc))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--listen {listen!r} is not HOST:PORT")
    state = WitnessState(data / "witness.sqlite")
    typer.echo(f"duet witness {cosigner.name} listening on http://{host}:{port}, following {len(logs)} log(s); "
               f"vkey {cosigner.vkey()}", err=True)
    config = uvicorn.Config(make_app(Witness(state, cosigner, logs)), host=host, port=int(port),
                            log_level="warning", access_log=False, timeout_keep_alive=5, limit_concurrency=256)
    uvicorn.Server(config).run()
