"""Assemble a Controller from a data dir and serve it with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from duet.controller.errors import ConfigError
from duet.controller.service import Controller
from duet.controller.state import StateStore
from duet.ledger import keys
from duet.ledger.policy import DEFAULT_POLICY, parse_policy
from duet.ledger.store import LedgerStore

log = logging.getLogger("duet.controller")


def _load_or_create_key(state: StateStore) -> keys.Ed25519PrivateKey:
    pem = state.get_meta("controller_key")
    if pem is None:
        key = keys.Ed25519PrivateKey.generate()
        state.set_meta("controller_key", keys.private_pem(key))
        return key
    return keys.load_private_pem(pem, source="the sealed controller key")


def _settle_owner_keys(state: StateStore, owner_key: Path | None) -> None:
    """First start sets the owner key; later starts must match it (or omit it): the
    owner keys change only through a signed `owner.keys` intent."""
    stored = state.owner_keys()
    if owner_key is None:
        if not stored:
            raise ConfigError("first start needs --owner-key (the service owner's public key file)")
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
    data_dir: Path, *, tee: str = "simulated", owner_key: Path | None = None, policy: Path | None = None
) -> Controller:
    from duet.cvm.local import LocalProvider

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    if tee == "simulated":
        from duet.tee.simulated import SimulatedTee

        backend = SimulatedTee(data_dir / "tee")
    elif tee == "gramine":
        raise ConfigError("--tee gramine needs the controller to run inside a Gramine SGX enclave")
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
    _settle_owner_keys(state, owner_key)
    key = _load_or_create_key(state)
    ledger = LedgerStore(data_dir / "ledger.sqlite")
    from duet.attestation import SimulatedSnp
    from duet.controller.evidence_local import LocalEvidence

    # The local provider's CVMs run on SIMULATED SEV-SNP "hardware" whose dev VCEK
    # lives in the data dir.
    snp = SimulatedSnp.load_or_create(data_dir / "tee" / "snp")
    local = LocalProvider(data_dir / "cvms", platform=snp)
    return Controller(
        data_dir,
        tee=backend,
        key=key,
        state=state,
        ledger=ledger,
        providers={"local": local},
        default_policy=policy_text,
        evidence=LocalEvidence(snp, local),
    )


def parse_listen(listen: str, *, tee: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        # Plain HTTP would expose owner commands and outputs on the wire; until RA-TLS
        # serves HTTPS, only loopback is allowed.
        raise ConfigError(f"plain HTTP is served only on loopback; {host} is not a loopback address")
    return host, int(port)


def serve(data_dir: Path, *, listen: str, tee: str, owner_key: Path | None, policy: Path | None) -> None:
    import uvicorn

    from duet.controller.app import create_app

    host, port = parse_listen(listen, tee=tee)
    controller = build_controller(data_dir, tee=tee, owner_key=owner_key, policy=policy)
    app = create_app(controller)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()
