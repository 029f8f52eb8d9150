"""`duet`: the command line. Thin: parse, call client/ or controller/, render with rich.

Every failure is one line naming the problem (`error [code]: message`), never a
traceback. Exit codes: 0 ok, 1 error, 2 usage, 3 refused by the controller's mode or
policy (or a failed verification), and a remote command's own exit status for `cvm run`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Column

from duet.cli.failure import failure
from duet.cli.options import ControllerOpt, ExpectOpt, KeyOpt, StateDirOpt, TrustOpt
from duet.cli.output import Format, JsonOpt, OutputOpt, emit, human, make_err, make_out, resolve
from duet.cli.output import table as new_table
from duet.cli.private_file import write_private
from duet.client.config import DEFAULT_URL
from duet.ledger import keys

app = typer.Typer(no_args_is_help=True, add_completion=True, help="duet: own confidential VMs, verifiably.")
controller_app = typer.Typer(no_args_is_help=True, help="Run or inspect the controller.")
cvm_app = typer.Typer(no_args_is_help=True, help="Administer CVMs (owner; signed intents).")
app.add_typer(controller_app, name="controller")
app.add_typer(cvm_app, name="cvm")
state_app = typer.Typer(no_args_is_help=True, help="Export a CVM's state for offline checks.")
app.add_typer(state_app, name="state")
expect_app = typer.Typer(no_args_is_help=True, help="Write expectations files.")
app.add_typer(expect_app, name="expect")
context_app = typer.Typer(no_args_is_help=True, help="Named contexts (controller, key, expectations), as in kubectl.")
app.add_typer(context_app, name="context")

from duet.cli.witnesses_cmd import app as _witnesses_app  # noqa: E402

controller_app.add_typer(_witnesses_app, name="witnesses")

#: Sub-apps whose modules are heavy (the attestation package alone takes a third of a
#: second to import): registered only when the command line may need them, so that
#: `duet cvm run` does not pay for them (see bench/cli.py).
_LAZY_APPS = {"attestation": ("duet.cli.attestation_cmd", "Verify attestation evidence offline."),
              "witness": ("duet.cli.witness_cmd", None)}


def _register_lazy_apps(argv: list[str]) -> None:
    import importlib

    if argv in (["--version"], ["-V"]):
        return
    first = next((a for a in argv if not a.startswith("-")), None)
    completing = any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)
    for name, (module, help_text) in _LAZY_APPS.items():
        if first is None or first == name or first not in _COMMANDS or completing:
            sub = importlib.import_module(module).app
            if help_text is None:
                app.add_typer(sub, name=name)
            else:
                app.add_typer(sub, name=name, help=help_text)

out = make_out()
err = make_err()



def fail(code: str, message: str, exit_code: int = 1) -> NoReturn:
    err.print(f"error [{code}]: {message}", markup=False)
    raise typer.Exit(exit_code)


def Http(*args: Any, **kwargs: Any) -> Any:  # stands in for the class: httpx only when needed
    """The HTTP client (httpx), imported by the commands that talk to a controller only."""
    from duet.client.http import Http as _Http

    return _Http(*args, **kwargs)


def _trust(flag: bool) -> bool:
    """`--trust-simulated`, or DUET_TRUST_SIMULATED parsed strictly (`false` is false, `maybe` an error)."""
    from duet.client.config import env_bool

    return flag or env_bool("DUET_TRUST_SIMULATED")


def _owner(url: str, key_path: Path, expect: Path | None = None, trust_simulated: bool = False,
           state_dir: Path | None = None) -> Any:
    """An owner client. Plain http:// is refused off loopback; over RA-TLS the
    controller expectations (if given) are checked in the handshake, before any intent
    is sent."""
    from duet.client.config import check_owner_url
    from duet.client.owner import OwnerClient

    check_owner_url(url)
    return OwnerClient(keys.read_private_key(key_path), url, http=_http(url, expect, trust_simulated, state_dir))


def _http(url: str, expect: Path | None, trust_simulated: bool, state_dir: Path | None) -> Any:
    """The controller's API; over https:// the RA-TLS handshake checks the quote (a
    SIMULATED one only when trusted) and the controller expectations, if given."""
    ctl = None
    if expect is not None:  # the expectations (and the attestation package) only when asked for
        from duet.client.expectations import load_expectations

        ctl = load_expectations(expect).controller
    return Http(url, expect_controller=ctl.evidence() if ctl is not None else None,
                trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir)


def _cvm_id(http: Any, ref: str) -> str:
    """The id of the CVM named by `ref` (an id or a unique live name: cli/addressing.py)."""
    from duet.cli.addressing import cvm_id

    return cvm_id(http, ref)


def _apply_context(kwargs: dict[str, Any]) -> None:
    """Fill in --controller/--key/--expect/--state-dir from the context in force, for
    the ones neither the command line nor the environment set."""
    from duet.cli import contexts

    names = [p for p in contexts.FIELDS.values() if p in kwargs]
    if not names:
        return
    try:  # typer >= 0.25 vendors click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import get_current_context  # type: ignore[no-redef]
    ctx = get_current_context(silent=True)
    if ctx is None:
        return

    def defaulted_(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")

    defaulted = [n for n in names if defaulted_(n)]
    if not defaulted:
        return
    _, settings = contexts.current()
    for field, param in contexts.FIELDS.items():
        if param in defaulted and field in settings:
            kwargs[param] = contexts.value(settings, field)


def _guard(fn: Any) -> Any:
    """Turn every typed error into one line and an exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _apply_context(kwargs)
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            fail(*failure(exc))

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from duet import __version__

        typer.echo(f"duet {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print duet's version and exit."),
) -> None:
    """duet: own confidential VMs, verifiably."""


# ------------------------------------------------------------------------------------ keys


@app.command()
@_guard
def keygen(out_path: Annotated[Path, typer.Option("--out", help="Private key file to write.")] = Path("owner.key"),
           force: bool = typer.Option(False, help="Overwrite existing files."),
           output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Make an owner key pair: OUT (PKCS#8 PEM, mode 0600) and OUT.pub."""
    fmt = resolve(output, as_json)
    pub_path = Path(str(out_path) + ".pub")
    if not force and (out_path.exists() or pub_path.exists()):
        fail("exists", f"{out_path} or {pub_path} exists; pass --force to overwrite")
    key = keys.Ed25519PrivateKey.generate()
    write_private(out_path, keys.private_pem(key))
    pub_path.write_bytes(keys.public_pem(key.public_key()))
    kid = keys.key_id(key.public_key())
    human(fmt, out, err).print(f"wrote {out_path} and {pub_path}", markup=False)
    emit({"key_id": kid, "private_key": str(out_path), "public_key": str(pub_path)}, fmt, ids=kid,
         render=lambda: out.print(f"owner key id {kid}"))


# ------------------------------------------------------------------------------ controller


@controller_app.command("serve")
@_guard
def controller_serve(
    data: Annotated[Path, typer.Option("--data", help="State directory (sealed under SGX).")],
    listen: Annotated[str, typer.Option(help="HOST:PORT (loopback only for plain HTTP).")] = "127.0.0.1:6037",
    tee: Annotated[str, typer.Option(help="simulated | gramine")] = "simulated",
    owner_key: Annotated[Path | None, typer.Option("--owner-key", help="Owner public key (first start).")] = None,
    policy: Annotated[Path | None, typer.Option(help="Default policy YAML for new CVMs.")] = None,
    tls: bool = typer.Option(False, "--tls", help="Serve HTTPS with an RA-TLS certificate (always under SGX)."),
    pccs_url: str | None = typer.Option(None, "--pccs-url", help="PCCS for quote collateral (SGX)."),
    providers: Path | None = typer.Option(None, "--providers", help="YAML: settings of azure/gcp/qemu."),
    log_format: str = typer.Option("text", "--log-format", help="Access/server log lines: text | json."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error."),
    witness: Annotated[list[str] | None, typer.Option(
        "--witness", help="VKEY=URL of a witness (repeatable; development only, refused under gramine).")] = None,
    witness_quorum: int = typer.Option(1, "--witness-quorum", min=1, help="Witnesses needed (with --witness)."),
    store: str | None = typer.Option(None, "--store", help="etcd://HOST:PORT: logs and state in etcd "
                                     "(default: embedded SQLite in --data)."),
    lease_ttl: int | None = typer.Option(None, "--lease-ttl", min=1, max=300,
                                         help="Seconds the primary's etcd lease lives (with --store)."),
    cvm_root: Path | None = typer.Option(None, "--cvm-root",
                                         help="Where local CVMs and their simulated secure processor live "
                                              "(default: the data dir)."),
    simulated_mrenclave: str | None = typer.Option(None, "--simulated-mrenclave",
                                                   help="SIMULATED TEE: act as another build (64 hex digits)."),
    simulated_cpusvn: int | None = typer.Option(None, "--simulated-cpusvn",
                                                help="SIMULATED TEE: the platform's CPUSVN (a microcode update "
                                                     "changes the sealing key)."),
    join: str | None = typer.Option(None, "--join",
                                    help="Take over from the controller at URL (this build must be approved "
                                         "there); --data must be a new directory."),
    standby_of: str | None = typer.Option(None, "--standby-of",
                                          help="With --store etcd://: stand by for the primary at URL (this build "
                                               "must be approved there) and take over when its lease expires."),
    recover: bool = typer.Option(False, "--recover",
                                 help="If the local seal does not open, wait for M recovery shares "
                                      "(duet controller recover) instead of failing."),
) -> None:
    """Run the controller."""
    from duet.controller.serve import serve
    from duet.controller.serve_options import simulated_platform

    if log_format not in ("text", "json"):
        fail("invalid_request", f"--log-format must be text or json, not {log_format!r}", 2)
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail("invalid_request", f"--log-level must be debug, info, warning or error, not {log_level!r}", 2)
    sim = simulated_platform(simulated_mrenclave, simulated_cpusvn)
    serve(data, listen=listen, tee=tee, owner_key=owner_key, policy=policy, tls=tls, pccs_url=pccs_url,
          providers_file=providers, log_format=log_format, log_level=log_level.lower(), witnesses=witness or (),
          witness_quorum=witness_quorum, store=store, lease_ttl=lease_ttl, simulated=sim, cvm_root=cvm_root,
          join=join, standby_of=standby_of, recover=recover)


@controller_app.command("claim")
@_guard
def controller_claim(controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
                     expect: ExpectOpt = None,
                     trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
                     output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Become the owner of a controller that has none yet (a self-signed owner.keys intent)."""
    fmt = resolve(output, as_json)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    owner.set_owner_keys([keys.public_b64(owner.key.public_key())])
    kid = keys.key_id(owner.key.public_key())
    emit({"owner_key_id": kid}, fmt, ids=kid, render=lambda: out.print(f"claimed: owner key {kid}"))


@controller_app.command("approve")
@_guard
def controller_approve(controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
                       mrenclave: str | None = typer.Option(None, "--mrenclave", help="The build's MRENCLAVE (hex)."),
                       mrsigner: str | None = typer.Option(None, "--mrsigner",
                                                           help="Every build this key signs (users must allow it)."),
                       isv_prod_id: int | None = typer.Option(None, "--isv-prod-id"),
                       min_isv_svn: int | None = typer.Option(None, "--min-isv-svn"),
                       expect: ExpectOpt = None, trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
                       output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Approve a controller build to take over this controller (`serve --join`); logged."""
    fmt = resolve(output, as_json)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    res = owner.approve_build(mrenclave=mrenclave.lower() if mrenclave else None,
                              mrsigner=mrsigner.lower() if mrsigner else None,
                              isv_prod_id=isv_prod_id, min_isv_svn=min_isv_svn)
    what = f"MRENCLAVE {mrenclave}" if mrenclave else f"MRSIGNER {mrsigner}"
    emit(res, fmt, ids=str(res.get("controller_log_index")),
         render=lambda: out.print(f"approved {what} (controller log entry {res.get('controller_log_index')})"))


@controller_app.command("info")
@_guard
def controller_info(controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
                    state_dir: StateDirOpt = None, output: OutputOpt = None,
                    as_json: JsonOpt = False) -> None:
    """Show the controller's identity."""
    from duet.client.api import ReadClient

    fmt = resolve(output, as_json)
    with Http(controller, trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir) as http:
        info = ReadClient(http).controller()
    if fmt is not Format.table:
        emit(info, fmt, ids=str(info.get("controller_id")))
        return
    sim = " (SIMULATED)" if info.get("simulated") else ""
    out.print(f"controller id   {info['controller_id']}")
    out.print(f"tee             {info['tee']}{sim}")
    for k, v in (info.get("measurement") or {}).items():
        out.print(f"{k:<15} {v}{sim}")
    out.print(f"note key        {info['note_verifier_key']}")
    out.print(f"owner keys      {len(info['owner_keys'])}")
    out.print(f"version         {info['version']}")


# ------------------------------------------------------------------------------------ cvm


@cvm_app.command("create")
@_guard
def cvm_create(
    controller: ControllerOpt = DEFAULT_URL,
    key: KeyOpt = Path("owner.key"),
    provider: str = typer.Option("local", help="local (more providers: see README)"),
    name: str | None = typer.Option(None),
    tee: str | None = typer.Option(None),
    spec: str | None = typer.Option(None, help="JSON object: size, image, region/zone, controller_cidr, ..."),
    plan: bool = typer.Option(False, "--plan", help="Print the exact provider API requests; send nothing."),
    config: Path | None = typer.Option(None, "--config", help="With --plan: provider settings (YAML)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return as soon as the CVM is logged (status "
                                 "provisioning); `duet cvm wait ID --for ready` follows it."),
    expect: ExpectOpt = None, trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create and provision a CVM; prints its id on the last line (`-o id`: only the id)."""
    fmt = resolve(output, as_json)
    try:
        spec_obj = json.loads(spec) if spec else {}
    except ValueError:
        fail("invalid_request", "--spec must be a JSON object", 2)
    if not isinstance(spec_obj, dict):
        fail("invalid_request", "--spec must be a JSON object", 2)
    if plan:
        from duet.cvm.plan import plan_for

        settings: dict[str, object] = {}
        if config is not None:
            import yaml

            settings = yaml.safe_load(config.read_text()) or {}
        from cryptography.hazmat.primitives import serialization

        # The real key is generated inside the controller at create; a throwaway one
        # shows where it goes.
        key_line = keys.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        planned = plan_for(provider, tee=tee or spec_obj.get("tee", "snp"), spec=spec_obj,
                           authorized_key=key_line, config=settings)
        planned["note"] = "PLAN ONLY: nothing was sent; the SSH key shown is a placeholder"
        out.print_json(data=planned)
        return
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    cvm = owner.create(provider, name=name, tee=tee, spec=spec_obj or None, wait=not no_wait)
    sim = " SIMULATED" if cvm.get("simulated") else ""
    kind = cvm.get("evidence_kind") or cvm["tee"]  # what its evidence will be, not the label asked for
    if no_wait:
        human(fmt, out, err).print(f"created {cvm['name']} ({cvm['provider']}, tee {kind}{sim}), status "
                                   f"{cvm['status']}; wait for it with: duet cvm wait {cvm['id']} --for ready",
                                   markup=False)
    else:
        human(fmt, out, err).print(f"created {cvm['name']} ({cvm['provider']}, tee {kind}{sim}), mode "
                                   f"{cvm['mode']}, host key {cvm['host_key']}", markup=False)
    emit(cvm, fmt, ids=str(cvm["id"]), render=lambda: out.print(cvm["id"]))


@cvm_app.command("list")
@_guard
def cvm_list(controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
             state_dir: StateDirOpt = None, output: OutputOpt = None, as_json: JsonOpt = False,
             show_all: bool = typer.Option(False, "--all", "-a", help="Include deleted CVMs.")) -> None:
    """List CVMs (live ones; --all adds the deleted)."""
    from duet.cli.render import visible
    from duet.client.api import ReadClient

    fmt = resolve(output, as_json)
    with Http(controller, trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir) as http:
        cvms = [c for c in ReadClient(http).cvms() if show_all or c.get("status") != "deleted"]

    def render() -> None:
        table = new_table("name", "provider", "tee", "status", "mode", "entries")
        table.columns.insert(0, Column("id", no_wrap=True, min_width=16))
        for c in cvms:
            table.add_row(c["id"], escape(visible(str(c["name"]))), c["provider"], c["tee"], c["status"], c["mode"],
                          str(c["tree_size"]))
        out.print(table)

    emit(cvms, fmt, ids=[str(c["id"]) for c in cvms], render=render)


@cvm_app.command("show")
@_guard
def cvm_show(cvm: str, controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
             state_dir: StateDirOpt = None, output: OutputOpt = None,
             as_json: JsonOpt = False) -> None:
    """Show one CVM (by id or name)."""
    from duet.client.api import ReadClient

    fmt = resolve(output, as_json)
    with Http(controller, trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir) as http:
        c = ReadClient(http).cvm(_cvm_id(http, cvm))

    def render() -> None:
        for k, v in c.items():
            out.print(f"{k:<14} {v}", markup=False)

    emit(c, fmt, ids=str(c["id"]), render=render)


@cvm_app.command("run", help=(
    "Run a command on an in-update CVM; exits with the command's status. Options go before --; "
    "the argv after -- is signed as shlex.join(argv), so it runs exactly as given "
    "(`-- 'a | b'` is one word; use --sh 'a | b' for a shell pipeline)."))
@_guard
def cvm_run(
    cvm: str,
    argv: Annotated[list[str] | None, typer.Argument(help="The command's argv (after --).", show_default=False)] = None,
    controller: ControllerOpt = DEFAULT_URL,
    key: KeyOpt = Path("owner.key"),
    timeout: str | None = typer.Option(None, "--timeout",
                                       help="Time before the command is killed: 90, 90s, 5m, 1h."),
    sh: str | None = typer.Option(None, "--sh", help="Send this shell string as is (pipes, redirections)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Print the exact command string signed."),
    interactive: bool = typer.Option(False, "-i", "--stdin",
                                     help="Send stdin (at most 512 KiB; signed, and logged whole: it is public)."),
    no_wait: bool = typer.Option(False, "--no-wait",
                                 help="Print the logged command's index at once; `duet cvm wait` follows it."),
    expect: ExpectOpt = None, trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
) -> None:
    """The owner signs the one string the CVM's shell will run; it must be what they typed.
    Output is printed as the controller logs it."""
    from duet.cli import run_cmd

    command = signed_command(argv or [], sh)
    if verbose:
        err.print(f"duet: signing command {command!r}", markup=False)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    raise typer.Exit(run_cmd.run(owner, _cvm_id(owner.http, cvm), command, timeout=timeout,
                                 interactive=interactive, no_wait=no_wait, err=err))


@cvm_app.command("wait")
@_guard
def cvm_wait(
    cvm: str,
    index: Annotated[int | None, typer.Argument(
        help="The command's index (what `cvm run --no-wait` printed).", show_default=False)] = None,
    for_: str | None = typer.Option(None, "--for", help="ready: wait until the CVM is provisioned, locked "
                                    "down and attested (`cvm create --no-wait`), showing each step."),
    timeout: str | None = typer.Option(None, "--timeout", help="With --for ready: give up after 90s, 5m, ..."),
    controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
    expect: ExpectOpt = None, trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
) -> None:
    """Wait for a logged command's result (CVM INDEX), printing its output as it is logged
    and exiting with the command's status; or, with `--for ready`, for the CVM to be ready."""
    from duet.cli import run_cmd

    if for_ is not None:
        if for_ != "ready":
            fail("invalid_request", f"--for takes ready, not {for_!r}", 2)
        if index is not None:
            fail("invalid_request", "give a command INDEX or --for ready, not both", 2)
        _wait_ready(cvm, controller, expect, trust_simulated, state_dir, timeout)
        return
    if index is None:
        fail("invalid_request", "give the command's INDEX (from cvm run --no-wait), or --for ready", 2)
    if timeout is not None:
        fail("invalid_request", "--timeout goes with --for ready", 2)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    raise typer.Exit(run_cmd.wait(owner, _cvm_id(owner.http, cvm), index, err))


def _wait_ready(cvm: str, controller: str, expect: Path | None, trust_simulated: bool, state_dir: Path | None,
                timeout: str | None) -> None:
    """`cvm wait CVM --for ready` (cli/wait_ready.py): reads only, no key needed."""
    from duet.cli.run_cmd import parse_duration
    from duet.cli.wait_ready import wait_ready
    from duet.client.api import ReadClient

    timeout_s = parse_duration(timeout)
    with _http(controller, expect, trust_simulated, state_dir) as http:
        cid = _cvm_id(http, cvm)
        rec = wait_ready(ReadClient(http), cid, timeout_s=timeout_s,
                         say=lambda line: err.print(f"duet: {line}", markup=False))
    err.print(f"duet: CVM {cid} is ready (mode {rec.get('mode')})", markup=False)


def signed_command(argv: list[str], sh: str | None) -> str:
    """The one string the intent signs: the shell string given with `--sh`, or the argv
    quoted so that a POSIX shell splits it back into exactly that argv."""
    import shlex

    if sh is not None and argv:
        fail("invalid_request", "give either --sh STRING or an argv after --, not both", 2)
    if sh is not None:
        if not sh.strip():
            fail("invalid_request", "--sh needs a non-empty shell string", 2)
        return sh
    if not argv:
        fail("invalid_request", "give the command after -- (or a shell string with --sh)", 2)
    return shlex.join(argv)


def _print_result(res: dict[str, Any]) -> int:
    from duet.cli.run_cmd import print_buffered

    return print_buffered(res, err)


@cvm_app.command("mode")
@_guard
def cvm_mode(cvm: str, mode: str, controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
             expect: ExpectOpt = None,
             trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
                     output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Put a CVM in-update or in-service."""
    from duet.ledger.entries import OWNER_MODES

    if mode not in OWNER_MODES:
        fail("invalid_request", f"mode must be one of {', '.join(OWNER_MODES)}", 2)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    fmt = resolve(output, as_json)
    c = owner.mode(_cvm_id(owner.http, cvm), mode)
    emit(c, fmt, ids=str(c["id"]), render=lambda: out.print(f"{c['id']} is {c['mode']} (epoch {c['epoch']})"))


@cvm_app.command("action")
@_guard
def cvm_action(cvm: str, name: str, controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
               expect: ExpectOpt = None,
               trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
                     output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Run a named action of the policy (its output as is; -o json: the whole result)."""
    fmt = resolve(output, as_json)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    res = owner.action(_cvm_id(owner.http, cvm), name)
    if fmt is not Format.table:
        emit(res, fmt, ids=str(res.get("result_index", "")))
        status = res.get("exit_status")
        raise typer.Exit(int(status) if isinstance(status, int) else 0)
    if "stdout" in res:
        raise typer.Exit(_print_result(res))
    out.print(f"action {name} done; log entry {res['result_index']}")


@cvm_app.command("delete")
@_guard
def cvm_delete(cvm: str, controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"),
               expect: ExpectOpt = None, trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
               yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required when not on a terminal)."),
               output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a CVM (its log stays readable). Asks on a terminal; elsewhere needs --yes."""
    fmt = resolve(output, as_json)
    owner = _owner(controller, key, expect, trust_simulated, state_dir)
    cid = _cvm_id(owner.http, cvm)
    if not yes:
        if not sys.stdin.isatty():
            fail("confirmation_required", f"deleting CVM {cid} needs --yes when not on a terminal", 2)
        label = cid if cid == cvm else f"{cvm} ({cid})"
        if not typer.confirm(f"Delete CVM {label}? Its machine is destroyed; its log stays", default=False,
                             err=True):
            fail("aborted", "nothing was deleted", 1)
    c = owner.delete(cid)
    emit(c, fmt, ids=str(c["id"]), render=lambda: out.print(f"{c['id']} deleted"))


# ------------------------------------------------------------------------------ log/verify


@app.command("intent")
@_guard
def intent_cmd(
    op: Annotated[str, typer.Argument(help="A registered owner operation (see --list).")] = "",
    args: str = typer.Option("{}", "--args", help="The operation's arguments, a JSON object."),
    cvm: str | None = typer.Option(None, "--cvm", help="The target CVM (operations on a CVM)."),
    list_ops: bool = typer.Option(False, "--list", help="List the operations and their arguments."),
    controller: ControllerOpt = DEFAULT_URL,
    key: KeyOpt = Path("owner.key"),
    output: OutputOpt = None,
    trust_simulated: TrustOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Sign and submit any owner operation, as the registry (duet.ledger.operations) defines it."""
    from duet.ledger.operations import OPERATIONS, check_args

    if list_ops or not op:
        for o in OPERATIONS.values():
            fields = ", ".join(o.args.model_fields)
            out.print(f"{o.op:<12} {'--cvm ' if o.targets_cvm else '':<6} {{{fields}}}  {o.summary}", markup=False)
        return
    operation = OPERATIONS.get(op)
    if operation is None:
        fail("invalid_request", f"unknown operation {op!r}; known: {', '.join(OPERATIONS)}", 2)
    try:
        parsed = json.loads(args)
    except ValueError:
        fail("invalid_request", "--args must be a JSON object", 2)
    if not isinstance(parsed, dict):
        fail("invalid_request", "--args must be a JSON object", 2)
    try:
        check_args(op, parsed)
    except ValueError as exc:
        fail("malformed_intent", str(exc), 2)
    if operation.targets_cvm != (cvm is not None):
        fail("invalid_request", f"{op} {'needs' if operation.targets_cvm else 'takes no'} --cvm", 2)
    res = _owner(controller, key, None, trust_simulated, state_dir).submit(op, parsed, cvm)
    emit(res, output or Format.json, ids=str(res.get("id", "")) if isinstance(res, dict) else None)


@app.command("log")
@_guard
def log_cmd(
    cvm: Annotated[str, typer.Argument(help="CVM id or name.")],
    controller: ControllerOpt = DEFAULT_URL,
    trust_simulated: TrustOpt = False,
    state_dir: StateDirOpt = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
    digests: bool = typer.Option(False, "--digests", help="Add the SHA-256 of each command's stdout and stderr."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing operations as they are logged."),
    since: str | None = typer.Option(None, "--since", help="Only operations since a duration ago (1h) or a time."),
    types: Annotated[list[str] | None, typer.Option(
        "--type", help="Only these operations: create, run, action, mode, delete, refused, policy, ...")] = None,
    entries_view: bool = typer.Option(False, "--entries", help="One row per log entry, as stored."),
    interval: float = typer.Option(2.0, "--interval", help="With --follow: seconds between polls."),
) -> None:
    """Show a CVM's log: one row per operation (time UTC, mode, who, what, outcome)."""
    import time

    from duet.cli.log_view import keep, operations, since_filter
    from duet.cli.render import render_timeline
    from duet.client.api import ReadClient
    from duet.client.owner_check import verified_intents
    from duet.ledger import entries
    from duet.ledger.errors import LedgerError

    fmt = resolve(output, as_json)
    try:
        since_t = since_filter(since) if since is not None else None
    except ValueError as exc:
        fail("invalid_request", str(exc), 2)
    printed = 0
    with Http(controller, trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir) as http:
        api = ReadClient(http)
        cvm = _cvm_id(http, cvm)
        while True:
            http.start_run()
            leaves = api.leaves(cvm, api.tree_size(cvm))
            decoded: list[dict[str, Any]] = []
            for leaf in leaves:
                try:
                    decoded.append(entries.decode(leaf))
                except LedgerError as exc:
                    decoded.append({"type": "undecodable", "error": str(exc)})
            signed = verified_intents(decoded)
            if entries_view:
                rows_json: list[Any] = [_json_entry(i, e, signed) for i, e in enumerate(decoded)]
                emit(rows_json, fmt, ids=[str(r["index"]) for r in rows_json],
                     render=lambda d=decoded, sg=signed: render_timeline(out, d, sg))  # type: ignore[misc]
                return
            ops = operations(decoded, signed)
            # While following, an operation is printed once it is complete (or another followed it).
            ready = ops if not follow else [o for k, o in enumerate(ops) if o.complete or k < len(ops) - 1]
            shown = [o for o in ready[printed:] if keep(o, since_t, types or [])]
            printed = len(ready)
            _print_ops(shown, fmt, digests, follow)
            if not follow:
                return
            time.sleep(interval)


def _print_ops(ops: list[Any], fmt: Any, digests: bool, follow: bool) -> None:
    from duet.cli.output import Format

    if fmt in (Format.json, Format.yaml) and follow:  # a stream: one JSON object per line
        for o in ops:
            sys.stdout.write(json.dumps(o.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if fmt in (Format.json, Format.yaml, Format.id):
        emit([o.to_json() for o in ops], fmt, ids=[str(o.first) for o in ops])
        return
    if not ops:
        return
    table = new_table("#", "time (UTC)", "mode", "who", "what", "outcome", *(["stdout sha256"] if digests else []))
    for o in ops:
        extra = [o.digests.get("stdout_sha256", "")] if digests else []
        table.add_row(str(o.first), o.time, o.mode, o.who, escape(o.what), escape(o.outcome), *extra)
    out.print(table)
    if follow:
        out.file.flush()


def _json_entry(i: int, e: dict[str, Any], signed: dict[int, Any]) -> dict[str, Any]:
    """For intents: `op` and `kid` as the signed JWS says, verified against the owner
    keys in force (null when it does not verify); the entry's own copies are dropped."""
    if i not in signed:
        return {"index": i, **e}
    v = signed[i]
    rest = {k: val for k, val in e.items() if k not in ("op", "kid")}
    return {"index": i, **rest, "verified": None if v is None else {"op": v.op, "kid": v.kid}}


@app.command()
@_guard
def verify(
    cvm: Annotated[str | None, typer.Argument(help="CVM id (not needed with --bundle).")] = None,
    controller: ControllerOpt = DEFAULT_URL,
    trust_simulated: TrustOpt = False,
    expect: Path | None = typer.Option(None, "--expect", help="Expectations YAML (see README)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Verify an exported bundle, offline."),
    from_tiles: str | None = typer.Option(None, "--from-tiles", help="Verify from a tile mirror (URL or dir)."),
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
    report_path: Path | None = typer.Option(None, "--report", help="Also write a self-contained HTML report."),
    strict: bool = typer.Option(False, "--strict", help="Fail when the expectations leave the controller open."),
    accept_new_controller: bool = typer.Option(
        False, "--accept-new-controller", help="Accept another controller key for a CVM verified before."),
    max_entries: int = typer.Option(1_000_000, "--max-entries", min=1, help="Largest log to download."),
    budget: float = typer.Option(900.0, "--budget", min=1.0, help="Seconds the whole verification may take."),
    max_mib: int = typer.Option(512, "--max-mib", min=1, help="MiB the controller may send in this run."),
    controller_log: bool = typer.Option(
        False, "--controller-log", help="Verify the controller (quote) and its own log (owner keys) alone."),
    full: bool = typer.Option(
        False, "--full", help="Verify every entry again instead of resuming from the last verification."),
    output: OutputOpt = None,
    witness: Annotated[list[str] | None, typer.Option(
        "--witness", help="A witness vkey whose cosignature the CVM head needs (repeatable).")] = None,
    witness_quorum: Annotated[int | None, typer.Option(
        "--witness-quorum", min=1, help="How many of the --witness keys must have cosigned (default: all).")] = None,
) -> None:
    """Verify the controller (quote) and a CVM's log; exit 0 only if every check passes.
    A later run fetches and checks only the entries that are new since the last one."""
    from duet.cli.render import render_report
    from duet.client.config import Limits
    from duet.client.expectations import load_expectations, weak_points
    from duet.client.verify import verify as do_verify

    fmt = resolve(output, as_json)
    trust_simulated = _trust(trust_simulated)
    expectations = load_expectations(expect) if expect is not None else None
    weak = weak_points(expectations)
    for w in weak:
        err.print(f"WARNING: {w}", markup=False)
    if strict and weak:
        fail("weak_expectations", "--strict: " + "; ".join(weak))
    limits = Limits(max_entries=max_entries, budget=budget, max_total_bytes=max_mib << 20)
    ctl = expectations.controller if expectations is not None else None
    from duet.client.witness_check import WitnessPolicy, policy_of

    if witness_quorum is not None and not witness:
        fail("invalid_request", "--witness-quorum needs --witness keys", 2)
    exp_w = expectations.witnesses if expectations is not None else None
    # Flags replace the expectations file's keys; its max_age still applies.
    witnesses = WitnessPolicy.parse(witness, witness_quorum, exp_w.age if exp_w else None) if witness \
        else policy_of(expectations)
    if bundle is not None or from_tiles is not None:
        from duet.client.bundle import BundleSource
        from duet.client.tiles_source import TileSource

        source: BundleSource | TileSource = (BundleSource.load(bundle) if bundle is not None
                                             else TileSource(str(from_tiles)))
        if cvm is not None and cvm != source.cvm:
            fail("invalid_request", f"the bundle is for CVM {source.cvm}, not {cvm}", 2)
        try:
            report, audit = do_verify(source, source.cvm, trust_simulated=trust_simulated, state_dir=state_dir,
                                      expect=expectations, accept_new_controller=accept_new_controller,
                                      witnesses=witnesses, keep_entries=report_path is not None)
        finally:
            if isinstance(source, TileSource):
                source.close()
    elif controller_log:
        from duet.client.verify import verify_controller_log

        if cvm is not None:
            fail("invalid_request", "--controller-log takes no CVM id", 2)
        with Http(controller, trust_simulated=trust_simulated or None, state_dir=state_dir, limits=limits,
                  expect_controller=ctl.evidence() if ctl is not None else None) as http:
            report = verify_controller_log(http, trust_simulated=trust_simulated, state_dir=state_dir,
                                           expect=expectations, full=full, witnesses=witnesses)
        audit = None
    else:
        if cvm is None:
            fail("invalid_request", "name a CVM id, or pass --bundle FILE", 2)
        with Http(controller, trust_simulated=trust_simulated or None, state_dir=state_dir, limits=limits,
                  expect_controller=ctl.evidence() if ctl is not None else None) as http:
            cvm = _cvm_id(http, cvm)
            report, audit = do_verify(http, cvm, trust_simulated=trust_simulated, state_dir=state_dir,
                                      expect=expectations, accept_new_controller=accept_new_controller, full=full,
                                      keep_entries=report_path is not None, witnesses=witnesses)
    report.warnings.extend(weak)
    if report_path is not None:
        from duet.client.report_html import render_html

        report_path.write_text(render_html(report.to_json(), audit.decoded if audit is not None else []))
    emit(report.to_json(), fmt, ids=report.cvm if report.ok else [], render=lambda: render_report(out, report))
    raise typer.Exit(0 if report.ok else 3)


@state_app.command("export")
@_guard
def state_export(
    cvm: str,
    out_path: Path | None = typer.Option(None, "--out", help="Bundle file to write."),
    tiles_dir: Path | None = typer.Option(None, "--tiles", help="Write a static tile mirror to this directory."),
    controller: ControllerOpt = DEFAULT_URL,
    trust_simulated: TrustOpt = False,
    state_dir: StateDirOpt = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a self-contained bundle (quote, checkpoint, all entries) for offline checks, or
    the same as a C2SP tile mirror any static file server can serve (`--from-tiles`)."""
    from duet.client.bundle import export_bundle

    if (out_path is None) == (tiles_dir is None):
        fail("invalid_request", "give exactly one of --out FILE or --tiles DIR", 2)
    fmt = resolve(output, as_json)
    with Http(controller, trust_simulated=_trust(trust_simulated) or None, state_dir=state_dir) as http:
        cvm = _cvm_id(http, cvm)
        data = export_bundle(http, cvm)
    if tiles_dir is not None:
        from duet.client.tiles_source import write_mirror

        n = write_mirror(data, tiles_dir)
        emit({"cvm": cvm, "tiles": str(tiles_dir), "files": n}, fmt, ids=cvm,
             render=lambda: out.print(f"wrote a tile mirror of {n} files to {tiles_dir}"))
        return
    assert out_path is not None
    out_path.write_bytes(data)
    emit({"cvm": cvm, "bundle": str(out_path), "bytes": len(data)}, fmt, ids=cvm,
         render=lambda: out.print(f"wrote {out_path} ({len(data)} bytes)"))


@expect_app.command("init")
@_guard
def expect_init(
    cvm: Annotated[str, typer.Argument(help="CVM id or name.")],
    controller: ControllerOpt = DEFAULT_URL,
    trust_simulated: TrustOpt = False,
    state_dir: StateDirOpt = None,
    output: OutputOpt = None,
) -> None:
    """Write expectations (YAML, on stdout) from a CVM that verifies now: controller build,
    measurement, host data, TEE, the commands seen so far and the policy's actions as
    anchored regexes, passing lockdown checks, owner keys. Trust on first use: read it."""
    import yaml

    from duet.cli.expect_init import build
    from duet.client.cvm_checks import evidence_checks
    from duet.client.verify import verify as do_verify

    trust = _trust(trust_simulated)
    with Http(controller, trust_simulated=trust or None, state_dir=state_dir) as http:
        cvm = _cvm_id(http, cvm)
        report, audit = do_verify(http, cvm, trust_simulated=trust, state_dir=state_dir, keep_entries=True)
    if not report.ok or audit is None:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.checks if not c.ok)
        fail("not_verified", f"CVM {cvm} does not verify, so nothing is pinned: {failed}", 3)
    from datetime import UTC, datetime

    _, latest = evidence_checks(audit.decoded, audit.state, trust_simulated=trust, now=datetime.now(UTC),
                                expect=None)
    doc, notes = build(report, audit.decoded, latest)
    sim = " SIMULATED" if report.simulated else ""
    err.print(f"duet expect init: TRUST ON FIRST USE{sim}: this pins what CVM {cvm} is today, as verified; "
              "read every command it allows before relying on it", markup=False)
    for n in notes:
        err.print(f"  pinned {n}", markup=False)
    if output not in (None, Format.yaml):
        emit(doc, output, ids=cvm)
        return
    sys.stdout.write(f"# duet expect init {cvm}: trust on first use{sim}; read it and tighten it\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, width=10_000))


@app.command()
@_guard
def watch(
    cvm: str,
    controller: ControllerOpt = DEFAULT_URL,
    trust_simulated: TrustOpt = False,
    expect: Path | None = typer.Option(None, "--expect", help="Expectations YAML."),
    interval: float = typer.Option(5.0, help="Seconds between checks."),
    on_violation: str | None = typer.Option(None, "--on-violation", help="Shell command run on a violation."),
    max_checks: int = typer.Option(0, help="Stop after this many checks (0: forever)."),
    grace: str = typer.Option("60s", "--grace", help="How long the CVM may be impossible to verify "
                              "(controller unreachable, CVM unknown, read timeout) before that is a violation."),
    read_timeout: float = typer.Option(30.0, "--read-timeout", help="Seconds to wait for each response."),
    full: bool = typer.Option(False, "--full", help="Verify every entry again at the first check (later checks "
                              "fetch only new entries)."),
    state_dir: StateDirOpt = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a CVM: each new checkpoint must extend the last and the log must keep
    meeting the expectations; each check fetches only the entries that are new. A failed
    check is a violation at once; being unable to check at all is one after --grace. A
    violation runs --on-violation (with DUET_VIOLATION set to the reason) and exits 3."""
    import subprocess
    import time

    from duet.client.expectations import load_expectations, parse_duration
    from duet.client.verify import verify as do_verify
    from duet.client.watch import Watcher

    try:
        grace_s = parse_duration(grace).total_seconds()
    except ValueError as exc:
        fail("invalid_request", f"--grace: {exc}", 2)
    fmt = resolve(output, as_json)
    trust_simulated = _trust(trust_simulated)
    expectations = load_expectations(expect) if expect is not None else None
    n = 0
    with Http(controller, timeout=read_timeout, trust_simulated=trust_simulated or None, state_dir=state_dir) as http:
        cvm = _cvm_id(http, cvm)

        first = [full]

        def check() -> Any:
            report, _ = do_verify(http, cvm, trust_simulated=trust_simulated, state_dir=state_dir,
                                  expect=expectations, full=first[0])
            first[0] = False
            return report

        watcher = Watcher(check, grace_s=grace_s)
        while True:
            step = watcher.step()
            n += 1
            if step.kind == "violation":
                size = step.report.checkpoint.get("size") if step.report is not None else None
                at = f" at size {size}" if size is not None else ""
                err.print(f"duet watch: VIOLATION{at}: {step.reason}", markup=False)
                if on_violation:
                    subprocess.run(on_violation, shell=True, check=False,  # noqa: S602 - the user's own hook
                                   env={**os.environ, "DUET_CVM": cvm, "DUET_VIOLATION": step.reason})
                raise typer.Exit(3)
            if step.kind == "degraded":
                err.print(f"duet watch: {step.reason}", markup=False)
            elif fmt in (Format.json, Format.yaml):  # a stream: one JSON object per check
                report = step.report
                sys.stdout.write(json.dumps({"cvm": cvm, "ok": True, "size": report.checkpoint.get("size"),
                                             "mode": report.state.mode if report.state else None,
                                             "simulated": report.simulated}) + "\n")
                sys.stdout.flush()
            elif fmt is Format.id:
                sys.stdout.write(f"{cvm}\n")
                sys.stdout.flush()
            else:
                report = step.report
                out.print(f"ok: size {report.checkpoint.get('size')}, "
                          f"mode {report.state.mode if report.state else '?'}"
                          f"{' (SIMULATED)' if report.simulated else ''}")
            if max_checks and n >= max_checks:
                if step.kind == "degraded":
                    fail("cannot_verify", "stopped while the CVM could not be verified")
                return
            time.sleep(interval)


@context_app.command("list")
@_guard
def context_list(output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """List the contexts of the config file; * marks the one in force."""
    from duet.cli import contexts

    fmt = resolve(output, as_json)
    doc = contexts.load()
    name, _ = contexts.current(doc) if doc.get("current-context") or os.environ.get("DUET_CONTEXT") else (None, {})
    rows = [{"name": n, "current": n == name, **c} for n, c in doc["contexts"].items()]

    def render() -> None:
        table = new_table("", "name", "controller", "key", "expect")
        for r in rows:
            table.add_row("*" if r["current"] else "", escape(r["name"]), escape(r.get("controller", "")),
                          escape(r.get("key", "")), escape(r.get("expect", "")))
        out.print(table)
        human(fmt, out, err).print(f"config: {contexts.config_path()}", markup=False)

    emit(rows, fmt, ids=[r["name"] for r in rows], render=render)


@context_app.command("use")
@_guard
def context_use(name: str) -> None:
    """Make NAME the context in force."""
    from duet.cli import contexts

    doc = contexts.load()
    if name not in doc["contexts"]:
        fail("unknown_context", f"no context {name!r} in {contexts.config_path()}; see duet context list")
    doc["current-context"] = name
    contexts.save(doc)
    err.print(f"using context {name}", markup=False)


@context_app.command("set")
@_guard
def context_set(
    name: str,
    controller_url: str | None = typer.Option(None, "--controller", help="Controller URL."),
    key_path: Path | None = typer.Option(None, "--key", help="Owner private key (PEM)."),
    expect_path: Path | None = typer.Option(None, "--expect", help="Expectations YAML."),
    state: Path | None = typer.Option(None, "--state-dir", help="State directory."),
) -> None:
    """Create or update context NAME (paths are stored absolute)."""
    from duet.cli import contexts

    doc = contexts.load()
    ctx = dict(doc["contexts"].get(name) or {})
    for field, v in (("controller", controller_url), ("key", key_path), ("expect", expect_path),
                     ("state-dir", state)):
        if v is not None:
            ctx[field] = v if isinstance(v, str) else str(v.expanduser().absolute())
    doc["contexts"][name] = ctx
    if not doc.get("current-context"):
        doc["current-context"] = name
    path = contexts.save(doc)
    err.print(f"context {name} saved in {path}", markup=False)


@app.command()
def demo(keep: bool = typer.Option(False, help="Keep the demo's data directory.")) -> None:
    """Run the whole story locally (SIMULATED SGX + a local CVM) and verify it."""
    from duet.cli.demo import run_demo

    raise typer.Exit(run_demo(out, keep=keep))


#: Every top-level command and group registered eagerly (the rest are in _LAZY_APPS).
_COMMANDS = frozenset({"keygen", "controller", "cvm", "state", "expect", "context", "intent", "log", "verify",
                       "watch", "demo"})


def _register_setup_apps() -> None:
    """`duet controller providers|credentials` live in their own module (cli/providers_cmd.py)."""
    from duet.cli import recovery_cmd
    from duet.cli.providers_cmd import register

    register(controller_app, sys.modules[__name__])
    recovery_cmd.register(controller_app, sys.modules[__name__])


_register_setup_apps()


def main() -> None:
    _register_lazy_apps(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
