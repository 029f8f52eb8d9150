"""Assemble a Controller from a data dir and serve it with uvicorn."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

from duet.controller.errors import AddressInUse, ConfigError, DataDirInUse
from duet.controller.evidence import EvidenceCollector
from duet.controller.observe import configure_logging
from duet.controller.providers_config import GRAMINE_FLAG_REFUSED
from duet.controller.service import Controller, controller_log_keys
from duet.controller.state import StateStore
from duet.cvm.provider import Provider
from duet.ledger import keys
from duet.ledger.policy import DEFAULT_POLICY, parse_policy
from duet.ledger.store import LedgerStore
from duet.tee.base import TeeBackend
from duet.tee.clock import TrustedClock

log = logging.getLogger("duet.controller")

#: Collateral for real quotes comes from Intel's PCS unless a PCCS is named; the host's
#: own QCNL configuration is not used (it is an unmeasured file).
DEFAULT_PCCS_URL = "https://api.trustedservices.intel.com"


def _load_or_create_key(state: StateStore) -> keys.Ed25519PrivateKey:
    pem = state.get_meta("controller_key")
    if pem is None:
        key = keys.Ed25519PrivateKey.generate()
        state.set_meta("controller_key", keys.private_pem(key))
        return key
    return keys.load_private_pem(pem, source="the sealed controller key")


def _settle_owner_keys(state: StateStore, ledger: LedgerStore, owner_key: Path | None) -> None:
    """First start may set the owner key; later starts must match it (or omit it): the
    owner keys change only through a signed `owner.keys` intent. Without any (as in an
    enclave, whose argv is fixed in the measured manifest), the first self-signed
    `owner.keys` intent claims the controller (`duet controller claim`). The keys in
    force are the controller log's; the state file is consulted only before the
    controller log names any (it then seeds the log's first key set)."""
    changes = controller_log_keys(ledger)
    stored = ({keys.key_id(keys.public_from_b64(b)): b for b in changes[-1].keys} if changes
              else state.owner_keys())
    if owner_key is None:
        if not stored:
            log.warning("no owner yet: the first self-signed owner.keys intent claims this controller")
        return
    pub = keys.read_public_key(owner_key)
    kid = keys.key_id(pub)
    if not stored:
        state.set_owner_keys({kid: keys.public_b64(pub)})
    elif kid not in stored:
        raise ConfigError(
            f"this controller's owner keys are {', '.join(k[:16] + '…' for k in sorted(stored))}; "
            f"{owner_key} is {kid[:16]}…. Owner keys change only through a signed owner.keys intent."
        )


def build_controller(
    data_dir: Path,
    *,
    tee: str = "simulated",
    owner_key: Path | None = None,
    policy: Path | None = None,
    pccs_url: str | None = None,
    providers_file: Path | None = None,
) -> Controller:
    if tee == "gramine" and providers_file is not None:
        raise ConfigError(GRAMINE_FLAG_REFUSED)
    backend: TeeBackend
    clock = TrustedClock()
    if tee == "simulated":
        from duet.tee.simulated import SimulatedTee

        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
        backend = SimulatedTee(data_dir / "tee")
    elif tee == "gramine":
        from duet.tee.gramine import GramineError, GramineTee, pccs_collateral

        try:
            GramineTee.check_environment()
            GramineTee.check_data_dir(data_dir)
        except GramineError as exc:
            raise ConfigError(str(exc)) from None
        backend = GramineTee(collateral=pccs_collateral(pccs_url or DEFAULT_PCCS_URL), clock=clock.now,
                             on_verified=clock.observe_dcap_collateral)
    else:
        raise ConfigError(f"unknown --tee {tee!r} (simulated or gramine)")
    policy_text = DEFAULT_POLICY
    if policy is not None:
        try:
            policy_text = policy.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {policy}: {exc.strerror}") from None
        parse_policy(policy_text)
    state = StateStore(data_dir / "state.sqlite")
    _attach_clock(clock, state)
    key = _load_or_create_key(state)
    ledger = LedgerStore(data_dir / "ledger.sqlite")
    try:
        _settle_owner_keys(state, ledger, owner_key)
    except BaseException:
        ledger.close()
        raise
    from duet.controller.providers_config import ProviderSetup

    in_enclave = tee == "gramine"
    local: tuple[Provider, EvidenceCollector] | None = None
    if not in_enclave:
        from duet.attestation import SimulatedSnp
        from duet.attestation.simulated.tdx import SimulatedTdx
        from duet.controller.evidence_local import LocalEvidence
        from duet.cvm.local import LocalProvider

        # The local provider's CVMs run on SIMULATED SEV-SNP "hardware" whose dev VCEK
        # lives in the data dir. It needs the host's sshd and useradd: never in an enclave.
        snp = SimulatedSnp.load_or_create(data_dir / "tee" / "snp")
        tdx = SimulatedTdx.load_or_create(data_dir / "tee" / "tdx")
        local_provider = LocalProvider(data_dir / "cvms", platform=snp, tdx=tdx)
        local = (local_provider, LocalEvidence(snp, local_provider, tdx))
    # TDX quotes (qemu/GCP TDX, Azure TDX's TD quote) are verified with DCAP collateral from
    # the PCCS (or Intel's PCS); it decides availability only, the collateral is checked
    # against Intel's root before use.
    setup = ProviderSetup(state, in_enclave=in_enclave, local=local, pccs_url=pccs_url or DEFAULT_PCCS_URL)
    try:
        providers, evidence = setup.load(ledger)
    except BaseException:
        ledger.close()
        raise
    controller = Controller(
        data_dir,
        tee=backend,
        key=key,
        state=state,
        ledger=ledger,
        providers=providers,
        default_policy=policy_text,
        evidence=evidence,
        clock=clock,
        setup=setup,
    )
    if providers_file is not None:
        try:
            setup.seed(_load_providers(providers_file))
        except BaseException:
            controller.close()
            raise
    return controller


def _attach_clock(clock: TrustedClock, state: StateStore) -> None:
    """The time lower bound survives restarts in the sealed state file."""
    stored = state.get_meta("time_floor")
    floor = None
    if stored is not None:
        try:
            floor = datetime.fromisoformat(stored.decode())
        except (UnicodeDecodeError, ValueError):
            log.warning("ignoring an unreadable stored time lower bound")
    clock.attach(floor, lambda when: state.set_meta("time_floor", when.isoformat().encode()))


def _load_providers(path: Path) -> dict[str, dict[str, object]]:
    """`--providers FILE` (outside an enclave only): YAML mapping a provider name to its
    settings, logged in the controller log as a `providers` entry when it changes."""
    from duet.controller.providers_config import load_providers_file

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read providers file {path}: {exc.strerror}") from None
    return load_providers_file(text, str(path))


def parse_listen(listen: str, *, tls: bool) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not tls:
        # Plain HTTP would expose owner commands and outputs on the wire.
        raise ConfigError(f"plain HTTP is served only on loopback; {host} is not a loopback address (use --tls)")
    return host, int(port)


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for the life of the process: two controllers
    on one data dir would each believe they own its logs. (Under SGX the host could still
    start two enclaves on copies of the dir; that case is the rollback defence's job.)"""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(f"data dir {data_dir} is in use by another controller process") from None
    return fd


def bind(host: str, port: int) -> socket.socket:
    """Bind before anything else starts, so a busy port is one clear error, not a log line
    from deep inside the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def serve(
    data_dir: Path,
    *,
    listen: str,
    tee: str,
    owner_key: Path | None,
    policy: Path | None,
    tls: bool = False,
    pccs_url: str | None = None,
    providers_file: Path | None = None,
    log_format: str = "text",
    log_level: str = "info",
) -> None:
    """Serve the API. Under SGX (`--tee gramine`) always over RA-TLS: the certificate is
    the controller's identity key with its quote inside, so clients attest the very
    channel their commands travel on. Plain HTTP is for the simulated TEE on loopback."""
    import uvicorn

    from duet.controller.app import create_app
    from duet.controller.limits import server_options

    tls = tls or tee == "gramine"
    host, port = parse_listen(listen, tls=tls)
    if tee == "gramine" and (log_format, log_level) != ("text", "info"):
        raise ConfigError("under --tee gramine the manifest fixes the log format and level")
    configure_logging(log_format, log_level)
    if tee != "gramine":  # Gramine's encrypted mount has no cross-process locks
        lock_data_dir(data_dir)
    sock = bind(host, port)
    controller = build_controller(data_dir, tee=tee, owner_key=owner_key, policy=policy, pccs_url=pccs_url,
                                  providers_file=providers_file)
    app = create_app(controller)
    if tls:
        from duet.tee import ratls

        certfile, keyfile = ratls.prepare(data_dir / "tls", controller.key, controller.tee)
        config = ratls.uvicorn_config(app, host=host, port=port, certfile=certfile, keyfile=keyfile,
                                      log_level="warning", access_log=False, **server_options())
        assert config.ssl is not None
        ratls.start_refresher(config.ssl, data_dir / "tls", controller.key, controller.tee)
    else:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                **server_options())
    info = controller.info()
    sim = " (SIMULATED)" if info.get("simulated") else ""
    url = f"{'https' if tls else 'http'}://{host if ':' not in host else f'[{host}]'}:{port}"
    # One line an operator can act on; a SIMULATED TEE says so here, before anything else.
    print(f"duet controller: listening on {url}, TEE {info['tee']}{sim}, controller id {info['controller_id']}, "
          f"data dir {data_dir}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
