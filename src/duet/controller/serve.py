"""Assemble a Controller from a data dir and serve it with uvicorn."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from duet.controller.errors import AddressInUse, ConfigError, DataDirInUse
from duet.controller.evidence import EvidenceCollector
from duet.controller.observe import configure_logging
from duet.controller.providers_config import GRAMINE_FLAG_REFUSED
from duet.controller.service import Controller, controller_log_keys
from duet.controller.state import StateStore
from duet.controller.statekey import (
    CONTROLLER_KEY_LABEL,
    CONTROLLER_KEY_META,
    StateKey,
    open_state_key,
    seal_state_key,
)
from duet.cvm.provider import Provider
from duet.ledger import keys
from duet.ledger.backend import LogStore
from duet.ledger.policy import DEFAULT_POLICY, parse_policy
from duet.ledger.store import LedgerStore, TreeHead
from duet.tee.base import TeeBackend
from duet.tee.clock import TrustedClock
from duet.tee.simulated import DEFAULT_CPUSVN

log = logging.getLogger("duet.controller")

#: Collateral for real quotes comes from Intel's PCS unless a PCCS is named; the host's
#: own QCNL configuration is not used (it is an unmeasured file).
DEFAULT_PCCS_URL = "https://api.trustedservices.intel.com"


@dataclass(frozen=True)
class SimulatedPlatform:
    """What `--simulated-mrenclave` / `--simulated-cpusvn` change about the simulated TEE:
    another build (None: the package's own measurement), another microcode level."""

    mrenclave: bytes | None = None
    cpusvn: int = DEFAULT_CPUSVN


def _load_or_create_key(state: StateStore, k: StateKey) -> keys.Ed25519PrivateKey:
    """The controller's identity key, encrypted under K in the state file."""
    blob = state.get_meta(CONTROLLER_KEY_META)
    if blob is None:
        key = keys.Ed25519PrivateKey.generate()
        state.set_meta(CONTROLLER_KEY_META, k.encrypt(CONTROLLER_KEY_LABEL, keys.private_pem(key)))
        return key
    pem = k.decrypt(CONTROLLER_KEY_LABEL, blob)
    return keys.load_private_pem(pem, source="the controller key (under the state key)")


def _settle_owner_keys(state: StateStore, ledger: LogStore, owner_key: Path | None) -> None:
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
    witnesses: Sequence[str] = (),
    witness_quorum: int = 1,
    store: str | None = None,
    lease_ttl: int | None = None,
    lease_wait: float | None = None,
    witness_floor: Callable[[str], TreeHead | None] | None = None,
    simulated: SimulatedPlatform | None = None,
    cvm_root: Path | None = None,
    state_key: StateKey | None = None,
    join: str | None = None,
) -> Controller:
    """``state_key``: K received at a handover (controller/handover.py), sealed here and
    used instead of the local seal. ``cvm_root``: where the local provider keeps its CVMs
    and their simulated secure processor (default: the data dir, as before)."""
    from duet.controller.witnessing import WitnessConfig, parse_witness_flag

    if witnesses and tee == "gramine":
        # In an enclave the argv is the host's to choose: only a signed witnesses.set counts.
        raise ConfigError("--witness is for development only and is refused under --tee gramine: "
                          "configure witnesses with a signed witnesses.set (duet controller witnesses set)")
    seed = WitnessConfig.parse([parse_witness_flag(w) for w in witnesses], witness_quorum,
                               "--witness (development)") if witnesses else None

    if tee == "gramine" and providers_file is not None:
        raise ConfigError(GRAMINE_FLAG_REFUSED)
    clock = TrustedClock()
    backend = make_tee(data_dir, tee, simulated, pccs_url, clock)
    policy_text = DEFAULT_POLICY
    if policy is not None:
        try:
            policy_text = policy.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read policy file {policy}: {exc.strerror}") from None
        parse_policy(policy_text)
    if join is not None and (data_dir / "state.sqlite").exists():
        # Joined before (the state file is written last): a restart keeps its argv.
        log.warning("%s already holds the state received at a handover; --join %s is ignored", data_dir, join)
        join = None
    if join is not None:
        if store is not None:
            raise ConfigError("--join hands over an embedded store; with --store etcd:// a second instance "
                              "joins as a standby, which is not built yet (docs/continuity.md)")
        if tee == "gramine":
            raise ConfigError("under --tee gramine the command line is fixed by the manifest: --join is not "
                              "taken from it (docs/continuity.md)")
        from duet.controller.continuity import join as join_predecessor

        state_key = join_predecessor(join, data_dir, backend).state_key
    ledger: LogStore
    if store is None:
        state = StateStore(data_dir / "state.sqlite")
        try:
            state.cipher = _open_cipher(state, backend, state_key)
            _attach_clock(clock, state)
            key = _load_or_create_key(state, state.cipher)
        except BaseException:
            state.close()
            raise
        ledger = LedgerStore(data_dir / "ledger.sqlite")
    else:
        state, key, ledger = _open_replicated(data_dir, clock, store, lease_ttl, lease_wait, witness_floor,
                                              backend, state_key)
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

        # The local provider's CVMs run on SIMULATED SEV-SNP "hardware" whose dev VCEK lives
        # in the CVM root (the data dir unless --cvm-root says otherwise: then the CVMs and
        # their secure processor outlive the controller's data dir, as a real host's do).
        # It needs the host's sshd and useradd: never in an enclave.
        root = cvm_root if cvm_root is not None else data_dir
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        snp = SimulatedSnp.load_or_create(root / "tee" / "snp")
        tdx = SimulatedTdx.load_or_create(root / "tee" / "tdx")
        local_provider = LocalProvider(root / "cvms", platform=snp, tdx=tdx)
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
    if seed is not None:
        controller.witnessing.seed(seed)
    return controller


def make_tee(data_dir: Path, tee: str, simulated: SimulatedPlatform | None, pccs_url: str | None,
             clock: TrustedClock) -> TeeBackend:
    """The TEE backend `--tee` names (the simulated one with its platform options)."""
    sim = simulated or SimulatedPlatform()
    if tee == "simulated":
        from duet.tee.simulated import SimulatedTee

        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
        return SimulatedTee(data_dir / "tee", mrenclave=sim.mrenclave, cpusvn=sim.cpusvn)
    if tee == "gramine":
        from duet.tee.gramine import GramineError, GramineTee, pccs_collateral

        if simulated is not None and simulated != SimulatedPlatform():
            raise ConfigError("--simulated-mrenclave and --simulated-cpusvn apply to --tee simulated only")
        try:
            GramineTee.check_environment()
            GramineTee.check_data_dir(data_dir)
        except GramineError as exc:
            raise ConfigError(str(exc)) from None
        return GramineTee(collateral=pccs_collateral(pccs_url or DEFAULT_PCCS_URL), clock=clock.now,
                          on_verified=clock.observe_dcap_collateral)
    raise ConfigError(f"unknown --tee {tee!r} (simulated or gramine)")


def _recover_if_needed(data_dir: Path, *, tee: str, simulated: SimulatedPlatform | None, pccs_url: str | None,
                       sock: socket.socket, tls: bool, explicit: bool, store: str | None, listen: tuple[str, int],
                       ) -> socket.socket:
    """`--recover` (and, under Gramine, whenever the seal does not open and the controller
    log has a recovery policy: argv is fixed there): when the local seal does not open,
    serve a recovery session on the listening socket until M holders sent their shares
    (controller/recovery.py), then go on with the recovered K. Returns the socket to serve on."""
    from duet.controller import recovery

    backend = make_tee(data_dir, tee, simulated, pccs_url, TrustedClock())
    why = recovery.needs_recovery(data_dir, backend)
    if why is None:
        if explicit:
            log.warning("--recover: the local seal opens here; nothing to recover")
        return sock
    if store is not None:
        raise recovery.RecoveryImpossible("recovery from shares is built for the embedded store only so far "
                                          "(with --store etcd:// a standby holds K)")
    try:
        session = recovery.RecoverySession(data_dir, backend)
    except recovery.RecoveryImpossible:
        if not explicit:
            return sock  # under Gramine without a policy: the seal error, as before
        raise
    assert session.policy is not None
    print(f"duet controller: RECOVERY: {why}. Waiting for {session.policy.threshold} of "
          f"{len(session.policy.holders)} recovery shares for controller {session.controller_id} "
          "(holders: duet controller recover --controller URL --share FILE --holder-key KEY)",
          file=sys.stderr, flush=True)
    from duet.controller.recovery_api import run_session

    run_session(session, sock, tls=tls, data_dir=data_dir)
    # The session's server closed the socket: listen again on the same address.
    return bind(*listen)


def _open_cipher(state: StateStore, backend: TeeBackend, state_key: StateKey | None) -> StateKey:
    """K: received at a handover (then sealed here), or opened from the local seal."""
    if state_key is not None:
        # Received at a handover, with a state file that is already all under K.
        seal_state_key(state, backend, state_key)
        return state_key
    return open_state_key(state, backend)


def _open_replicated(data_dir: Path, clock: TrustedClock, store: str, lease_ttl: int | None,
                     lease_wait: float | None, witness_floor: Callable[[str], TreeHead | None] | None,
                     backend: TeeBackend, state_key: StateKey | None,
                     ) -> tuple[StateStore, keys.Ed25519PrivateKey, LogStore]:
    """`--store etcd://HOST:PORT`: become the primary (the lease), then open the state and
    the logs from etcd, verifying what is read (controller/replicated.py). `witness_floor`
    (log id -> the newest head the witnesses cosigned) is the hook for the witnesses'
    check: a store behind it, or inconsistent with it, is refused."""
    from duet.controller.etcd import EtcdClient, parse_store_url
    from duet.controller.replicated import (
        DEFAULT_LEASE_TTL,
        HeadNotary,
        Primary,
        ReplicatedLedger,
        ReplicatedState,
        state_key_of,
    )
    from duet.ledger.note import Signer, Verifier

    try:
        host, port = parse_store_url(store)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    state = ReplicatedState(data_dir / "state.sqlite")
    try:
        state.cipher = _open_cipher(state, backend, state_key)
        key = _load_or_create_key(state, state.cipher)
    except BaseException:
        state.close()
        raise
    cid = keys.key_id(key.public_key())
    prefix = f"duet/{cid}/".encode()
    etcd = EtcdClient(host, port)
    ttl = lease_ttl or DEFAULT_LEASE_TTL
    primary = Primary(etcd, prefix, ttl=ttl)
    primary.acquire(wait=3 * ttl if lease_wait is None else lease_wait)
    try:
        state.attach(etcd, prefix, primary, state_key_of(state))
        name = f"duet/{cid}"
        notary = HeadNotary(Signer(name, key), Verifier(name, key.public_key()), cid)
        # Replica of the logs; the embedded store's file name is not reused, so switching
        # a data dir between the two stores never mixes them.
        ledger = ReplicatedLedger(data_dir / "ledger-replica.sqlite", etcd=etcd, prefix=prefix,
                                  primary=primary, notary=notary, witness_floor=witness_floor)
        # Only once the logs verified: nothing is written to a store that is refused.
        state.publish_missing()
        _attach_clock(clock, state)
    except BaseException:
        primary.release()
        state.close()
        raise
    return state, key, ledger


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
    doc = load_providers_file(text, str(path))
    for name, config in doc.items():
        # A development file may name the MAA keys by file; an intent carries them inline.
        jwks = config.get("maa_jwks")
        if isinstance(jwks, str):
            try:
                config["maa_jwks"] = json.loads(Path(jwks).read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: {name}: maa_jwks {jwks}: {exc}") from None
    return doc


def _close_on_shutdown(app: Any, controller: Controller) -> None:
    """Close the stores once the server has stopped taking requests (uvicorn re-raises
    SIGTERM after its shutdown, so nothing after `run()` would run). With `--store
    etcd://` this gives up the primary lease at once: a successor need not wait it out."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            yield state
        controller.close()

    app.router.lifespan_context = lifespan


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
    witnesses: Sequence[str] = (),
    witness_quorum: int = 1,
    store: str | None = None,
    lease_ttl: int | None = None,
    simulated: SimulatedPlatform | None = None,
    cvm_root: Path | None = None,
    join: str | None = None,
    recover: bool = False,
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
    # Under Gramine the flags it refuses are refused first (build_controller), as before.
    if recover or (tee == "gramine" and not witnesses and providers_file is None):
        sock = _recover_if_needed(data_dir, tee=tee, simulated=simulated, pccs_url=pccs_url, sock=sock, tls=tls,
                                  explicit=recover, store=store, listen=(host, port))
    controller = build_controller(data_dir, tee=tee, owner_key=owner_key, policy=policy, pccs_url=pccs_url,
                                  providers_file=providers_file, witnesses=witnesses, witness_quorum=witness_quorum,
                                  store=store, lease_ttl=lease_ttl, simulated=simulated, cvm_root=cvm_root,
                                  join=join)
    try:
        # Before anything is served or appended: a data dir older than what a quorum of
        # witnesses cosigned is a rollback, and the controller does not start on it.
        for line in controller.witnessing.startup_check():
            print(f"duet controller: {line}", file=sys.stderr, flush=True)
    except BaseException:
        controller.close()
        raise
    app = create_app(controller)
    _close_on_shutdown(app, controller)
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
          f"data dir {data_dir}{f', store {store}' if store else ''}", file=sys.stderr, flush=True)
    from duet.controller.shutdown import PromptServer

    PromptServer(config).run(sockets=[sock])
