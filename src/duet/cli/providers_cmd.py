"""`duet controller providers set|show` and `duet controller credentials set`: the cloud
setup of a controller, by signed intent (`controller/providers_config.py`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from duet.cli.options import ControllerOpt, ExpectOpt, KeyOpt, StateDirOpt, TrustOpt
from duet.cli.output import Format, JsonOpt, OutputOpt, emit, resolve
from duet.client.config import DEFAULT_URL


def register(controller_app: typer.Typer, m: ModuleType) -> None:
    """Add the commands to `duet controller`; `m` is `duet.cli.main` (its guard, owner
    client and output), handed in because importing it from here would be circular."""
    guard: Callable[[Callable[..., None]], Callable[..., None]] = m._guard
    providers_app = typer.Typer(no_args_is_help=True,
                                help="The providers the controller drives (owner; signed intents).")
    credentials_app = typer.Typer(no_args_is_help=True, help="Cloud credentials, sealed to the controller (owner).")
    controller_app.add_typer(providers_app, name="providers")
    controller_app.add_typer(credentials_app, name="credentials")

    @providers_app.command("set")
    @guard
    def providers_set(
        file: Annotated[Path, typer.Argument(help="YAML: provider name -> settings (no credentials).")],
        recheck: Annotated[int | None, typer.Option(
            "--control-plane-recheck",
            help="Seconds between control-plane re-checks of cloud CVMs (60-86400).")] = None,
        controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"), expect: ExpectOpt = None,
        trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
        output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Replace the providers and their settings (a providers.set intent, logged in the controller log)."""
        from duet.controller.providers_config import load_providers_file

        fmt = resolve(output, as_json)
        try:
            text = file.read_text()
        except OSError as exc:
            m.fail("invalid_request", f"cannot read {file}: {exc.strerror}", 2)
        settings = load_providers_file(text, str(file))
        owner = m._owner(controller, key, expect, trust_simulated, state_dir)
        res = owner.set_providers(settings, recheck)
        emit(res, fmt, ids=str(res.get("providers_sha256")), render=lambda: m.out.print(
            f"providers set: {', '.join(sorted(res['providers'])) or '(none)'}; control plane re-checked every "
            f"{res['control_plane_recheck_s']} s (controller log size {res['controller_log_size']})", markup=False))


    @providers_app.command("show")
    @guard
    def providers_show(
        controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
        state_dir: StateDirOpt = None, output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Show the providers in force, as the controller log records them."""
        from duet.client.api import CONTROLLER_LOG, ReadClient
        from duet.ledger import entries

        fmt = resolve(output, as_json)
        with m.Http(controller, trust_simulated=m._trust(trust_simulated) or None, state_dir=state_dir) as http:
            api = ReadClient(http)
            info = api.controller()
            # The size of the newest checkpoint (its second line); `duet verify --controller-log`
            # checks the log itself, this only reads it.
            size = int(api.checkpoint(CONTROLLER_LOG).splitlines()[1])
            leaves = api.leaves(CONTROLLER_LOG, size)
        newest: dict[str, Any] | None = None
        creds: dict[str, dict[str, Any]] = {}
        for i, leaf in enumerate(leaves):
            e = entries.decode(leaf)
            if e["type"] == "providers":
                newest = {"index": i, "providers": e["providers"], "providers_sha256": e["providers_sha256"],
                          "control_plane_recheck_s": e.get("control_plane_recheck_s"),
                          "by_intent": i > 0 and entries.decode(leaves[i - 1])["type"] == "intent"}
            elif e["type"] == "credentials":
                creds[str(e["provider"])] = {"index": i, "credentials_mac": e["credentials_mac"]}
        body = {"enabled": info.get("providers", []), "logged": newest, "credentials": creds}
        if fmt is not Format.table:
            emit(body, fmt, ids=" ".join(str(p) for p in body["enabled"]))
            return
        m.out.print(f"enabled         {', '.join(body['enabled']) or '(none)'}", markup=False)
        if newest is None:
            m.out.print("logged          no providers entry in the controller log", markup=False)
            return
        how = "owner intent" if newest["by_intent"] else "host --providers file (development)"
        m.out.print(f"logged          entry {newest['index']} ({how}), sha256 {newest['providers_sha256']}",
                    markup=False)
        for name, settings in sorted(newest["providers"].items()):
            cred = creds.get(name)
            where = f"sealed credentials (entry {cred['index']})" if cred else "workload identity"
            m.out.print(f"  {name:<13} {where}; " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
                        markup=False)


    @credentials_app.command("set")
    @guard
    def credentials_set(
        file: Annotated[Path, typer.Argument(help="Credentials JSON (azure: tenant_id, client_id, client_secret; "
                                                  "gcp: a service-account key; libvirt: ca_cert, client_cert, "
                                                  "client_key as PEM).")],
        provider: Annotated[str, typer.Option("--provider", help="azure | gcp | libvirt")],
        controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"), expect: ExpectOpt = None,
        trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
        output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Seal FILE to the controller (HPKE) and send it beside a credentials.set intent."""
        fmt = resolve(output, as_json)
        try:
            plaintext = file.read_bytes()
        except OSError as exc:
            m.fail("invalid_request", f"cannot read {file}: {exc.strerror}", 2)
        owner = m._owner(controller, key, expect, trust_simulated, state_dir)
        res = owner.set_credentials(provider, plaintext)
        del plaintext
        emit(res, fmt, ids=str(res.get("credentials_mac")), render=lambda: m.out.print(
            f"credentials set for {res['provider']} (MAC {res['credentials_mac'][:16]}…, controller log size "
            f"{res['controller_log_size']})", markup=False))
