"""Providers and credentials by signed intent (controller/providers_config.py): nothing
about the clouds comes from the host under --tee gramine, and a credential never shows
anywhere but inside the controller."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from duet.attestation.simulated.snp import SimulatedSnp
from duet.attestation.simulated.tdx import SimulatedTdx
from duet.client.controller_log import controller_log_checks
from duet.controller import errors
from duet.controller.app import create_app
from duet.controller.errors import ConfigError
from duet.controller.providers_config import LOCAL_REFUSED, ProviderSetup
from duet.controller.serve import build_controller
from duet.controller.service import CONTROLLER_LOG, Controller
from duet.ledger import credentials as sealing
from duet.ledger import entries, keys
from duet.ledger.intent import UnknownKey, WrongAudience, sign_intent

AZURE = {"resource_group": "rg-duet", "location": "westeurope", "controller_cidr": "198.51.100.10/32",
         "subscription_id": "00000000-0000-0000-0000-000000000000"}
GCP = {"project": "p-duet", "zone": "europe-west4-a", "controller_cidr": "198.51.100.10/32"}
SECRET = "s3cr3t-CLIENT-secret-" + "7" * 24


def _azure_creds() -> bytes:
    return json.dumps({"tenant_id": "11111111-1111-1111-1111-111111111111",
                       "client_id": "22222222-2222-2222-2222-222222222222", "client_secret": SECRET}).encode()


def _gcp_creds() -> tuple[bytes, str]:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return json.dumps({"type": "service_account", "client_email": "duet@p-duet.iam.gserviceaccount.com",
                       "private_key": pem, "private_key_id": "abc", "token_uri": "https://oauth2.googleapis.com/token",
                       "project_id": "p-duet"}).encode(), pem


def _start(tmp_path: Path, owner: keys.Ed25519PrivateKey, **kw: Any) -> Controller:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "owner.pub").write_bytes(keys.public_pem(owner.public_key()))
    return build_controller(tmp_path / "data", owner_key=tmp_path / "owner.pub", **kw)


def _sign(ctl: Controller, key: keys.Ed25519PrivateKey, op: str, args: dict[str, Any], aud: str | None = None) -> str:
    return sign_intent(key, op=op, aud=aud or ctl.controller_id, args=args, iat=int(time.time()))


def _leaves(ctl: Controller, log_id: str = CONTROLLER_LOG) -> list[bytes]:
    size = ctl.ledger.tree_head(log_id).size
    return ctl.ledger.leaves(log_id, 0, size) if size else []


def _seal(ctl: Controller, plaintext: bytes, provider: str, *, controller_id: str | None = None) -> bytes:
    info = ctl.info()
    pub = sealing.check_endorsement(info["credentials_key"], controller_id=ctl.controller_id,
                                    controller_key=ctl.public_key)
    return sealing.seal(pub, plaintext, controller_id=controller_id or ctl.controller_id, provider=provider)


def _cred_args(ctl: Controller, sealed: bytes, provider: str = "azure") -> dict[str, Any]:
    return {"provider": provider, "ciphertext_sha256": hashlib.sha256(sealed).hexdigest(),
            "recipient_key_id": sealing.recipient_key_id(ctl.setup.hpke_key.public_key())}


def test_providers_set_is_logged_survives_restart_and_verifies(tmp_path: Path) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        assert sorted(ctl.providers) == ["local"]
        status, body = asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set",
                                                    {"providers": {"azure": AZURE, "gcp": GCP},
                                                     "control_plane_recheck_s": 300})))
        assert status == 200 and body["control_plane_recheck_s"] == 300
        assert sorted(ctl.providers) == ctl.info()["providers"] == ["azure", "gcp", "local"]
        log = [entries.decode(leaf) for leaf in _leaves(ctl)]
        assert [e["type"] for e in log] == ["owner_keys", "intent", "providers"]
        assert log[1]["op"] == "providers.set" and log[2]["providers"] == {"azure": AZURE, "gcp": GCP}
        checks, ctl_log = controller_log_checks(_leaves(ctl), controller_id=ctl.controller_id, expect=None)
        assert all(c.ok for c in checks), checks
        assert ctl_log.providers == [2] and not ctl_log.host_seeded
    finally:
        ctl.close()
    again = _start(tmp_path, owner)  # the controller log, not argv, decides after a restart
    try:
        assert sorted(again.providers) == ["azure", "gcp", "local"] and again.setup.recheck_s == 300
    finally:
        again.close()


def test_a_verifier_refuses_providers_the_intent_did_not_ask_for(tmp_path: Path) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"azure": AZURE}})))
        leaves = _leaves(ctl)
    finally:
        ctl.close()
    tampered = entries.decode(leaves[2])
    tampered["providers"] = {"azure": {**AZURE, "controller_cidr": "0.0.0.0/0"}}
    tampered["providers_sha256"] = hashlib.sha256(__import__("rfc8785").dumps(tampered["providers"])).hexdigest()
    checks, _ = controller_log_checks([*leaves[:2], entries.encode(tampered)], controller_id=ctl.controller_id,
                                      expect=None)
    assert not checks[0].ok and "differs from what the preceding intent asked" in checks[0].detail
    # An intent left without the entry it authorises is flagged too.
    checks, _ = controller_log_checks(leaves[:2], controller_id=ctl.controller_id, expect=None)
    assert not checks[0].ok and "not followed by the entry it authorises" in checks[0].detail


@pytest.mark.parametrize("how", ["stranger", "replay", "other controller"])
def test_providers_or_credentials_from_a_stranger_replayed_or_for_another_controller_change_nothing(
        tmp_path: Path, how: str) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        first = _sign(ctl, owner, "providers.set", {"providers": {"gcp": GCP}})
        asyncio.run(ctl.submit(first))
        size, before = ctl.ledger.tree_head(CONTROLLER_LOG).size, dict(ctl.providers)
        sealed = _seal(ctl, _azure_creds(), "gcp")
        signer = keys.Ed25519PrivateKey.generate() if how == "stranger" else owner
        aud = keys.key_id(keys.Ed25519PrivateKey.generate().public_key()) if how == "other controller" else None
        attempts = [(_sign(ctl, signer, "providers.set", {"providers": {"azure": AZURE}}, aud), None),
                    (_sign(ctl, signer, "credentials.set", _cred_args(ctl, sealed, "gcp"), aud), sealed)]
        if how == "replay":
            attempts = [(first, None)]
        for jws, attachment in attempts:
            with pytest.raises((UnknownKey, WrongAudience, errors.ReplayedIntent)):
                asyncio.run(ctl.submit(jws, sealed=attachment))
        assert ctl.ledger.tree_head(CONTROLLER_LOG).size == size and ctl.providers == before
        assert ctl.state.get_meta("credentials:gcp") is None
    finally:
        ctl.close()


@pytest.mark.parametrize("providers,why", [
    ({"local": {}}, "local provider"),
    ({"azure": {**AZURE, "client_secret": "x"}}, "unknown config keys: client_secret"),
    ({"nimbus": {}}, "unknown provider"),
])
def test_bad_provider_settings_are_refused_and_not_logged(tmp_path: Path, providers: Any, why: str) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    try:
        with pytest.raises(errors.InvalidRequest, match=why):
            asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": providers})))
        assert ctl.ledger.tree_head(CONTROLLER_LOG).size == 1 and sorted(ctl.providers) == ["local"]
    finally:
        ctl.close()


def test_providers_flag_is_refused_under_gramine(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("azure: {resource_group: rg}\n")
    with pytest.raises(ConfigError, match="--providers is refused under --tee gramine"):
        build_controller(tmp_path / "d", tee="gramine", providers_file=tmp_path / "p.yaml")
    # The command line says so in one line, before it even looks for an enclave.
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(tmp_path / "d"),
                        "--tee", "gramine", "--providers", str(tmp_path / "p.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--providers is refused under --tee gramine" in r.stderr
    assert "providers set" in r.stderr and "Traceback" not in r.stderr


def test_the_local_provider_is_not_offered_in_an_enclave(tmp_path: Path) -> None:
    """A controller set up as under --tee gramine (the SGX backend itself cannot run here):
    no local provider, and a create naming it says why."""
    from duet.controller.state import StateStore
    from duet.controller.statekey import StateKey
    from duet.ledger.store import LedgerStore
    from duet.tee.simulated import SimulatedTee

    with pytest.raises(ConfigError, match="inside an SGX enclave it cannot work"):
        ProviderSetup(StateStore(tmp_path / "s0.sqlite"), in_enclave=True, local=(object(), object()))  # type: ignore[arg-type]
    owner = keys.Ed25519PrivateKey.generate()
    state = StateStore(tmp_path / "state.sqlite")
    state.cipher = StateKey.generate()  # as build_controller opens it before the providers
    state.set_owner_keys({keys.key_id(owner.public_key()): keys.public_b64(owner.public_key())})
    ledger = LedgerStore(tmp_path / "ledger.sqlite")
    setup = ProviderSetup(state, in_enclave=True)
    providers, evidence = setup.load(ledger)
    ctl = Controller(tmp_path, tee=SimulatedTee(tmp_path / "tee"), key=keys.Ed25519PrivateKey.generate(), state=state,
                     ledger=ledger, providers=providers, evidence=evidence, setup=setup)
    try:
        assert ctl.providers == {}
        with pytest.raises(errors.UnknownProvider) as info:
            asyncio.run(ctl.submit(_sign(ctl, owner, "cvm.create", {"provider": "local"})))
        assert "not offered under --tee gramine" in info.value.message and "sshd" in info.value.message
        assert LOCAL_REFUSED in info.value.message
        with pytest.raises(errors.InvalidRequest, match="local provider"):
            asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"local": {}}})))
        with pytest.raises(ConfigError, match="--providers is refused"):
            ctl.setup.seed({"azure": AZURE})
        # Another ARM / GCE than the public cloud's: the control-plane check would read
        # the VM's model from an endpoint the owner names. A PCCS is allowed (signed data).
        for name, settings in (("azure", {**AZURE, "arm_endpoint": "https://arm.example.org"}),
                               ("azure", {**AZURE, "ca_pem": "x"}),
                               ("gcp", {"project": "p", "zone": "z", "api_endpoint": "http://127.0.0.1:1"})):
            with pytest.raises(errors.InvalidRequest, match="refused under --tee gramine"):
                asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {name: settings}})))
        # Roots other than AMD's for the CVMs' evidence, for any provider.
        ark = SimulatedSnp.load_or_create(tmp_path / "dev-hw").ark_pem.decode()
        for name, settings in (("azure", {**AZURE, "snp_arks": [ark]}),
                               ("gcp", {"project": "p", "zone": "z", "snp_arks": [ark]})):
            with pytest.raises(errors.InvalidRequest, match=r"snp_arks refused under --tee gramine.*AMD's roots only"):
                asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {name: settings}})))
        # And roots other than Intel's for TDX quotes (gcp tdx, azure-tdx's TD quote).
        dcap = x509.load_der_x509_certificate(SimulatedTdx.load_or_create(tmp_path / "dev-tdx").root_ca_der)
        root = dcap.public_bytes(serialization.Encoding.PEM).decode()
        for name, settings, match in (
                ("azure", {**AZURE, "tdx_roots": [root]}, r"tdx_roots refused under --tee gramine.*Intel's roots only"),
                ("gcp", {"project": "p", "zone": "z", "tdx_roots": [root]}, r"tdx_roots refused.*Intel's roots only"),
                ("azure", {**AZURE, "snp_arks": [ark], "tdx_roots": [root]},
                 r"snp_arks, tdx_roots refused under --tee gramine.*AMD's and Intel's roots only")):
            with pytest.raises(errors.InvalidRequest, match=match):
                asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {name: settings}})))
        assert ctl.providers == {}
        size = ctl.ledger.tree_head(CONTROLLER_LOG).size
        assert not [leaf for leaf in ctl.ledger.leaves(CONTROLLER_LOG, 0, size)
                    if entries.decode(leaf)["type"] == "providers"]
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"azure": {
            **AZURE, "pccs_url": "https://pccs.example.org"}}})))
        assert "azure" in ctl.providers
    finally:
        ctl.close()


def test_providers_file_seeds_the_same_setting_outside_an_enclave(tmp_path: Path) -> None:
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "p.yaml").write_text("azure:\n" + "".join(f"  {k}: '{v}'\n" for k, v in AZURE.items()))
    ctl = _start(tmp_path, owner, providers_file=tmp_path / "p.yaml")
    try:
        assert "azure" in ctl.providers
        log = [entries.decode(leaf) for leaf in _leaves(ctl)]
        assert [e["type"] for e in log] == ["owner_keys", "providers"]
    finally:
        ctl.close()
    again = _start(tmp_path, owner, providers_file=tmp_path / "p.yaml")  # unchanged: nothing new logged
    try:
        leaves = _leaves(again)
        assert len(leaves) == 2
        checks, ctl_log = controller_log_checks(leaves, controller_id=again.controller_id, expect=None)
        assert checks[0].ok and ctl_log.host_seeded == [1] and "--providers" in checks[0].detail
    finally:
        again.close()


def _texts_of(client: TestClient, ctl: Controller) -> list[bytes]:
    out = [b"".join(_leaves(ctl))]
    for path in ["/v1/controller", "/v1/controller/log/entries", "/v1/controller/log/checkpoint", "/openapi.json",
                 "/v1/cvms", "/metrics"]:
        out.append(client.get(path).content)
    return out


def test_credentials_by_intent_never_show_and_reach_the_provider(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    gcp_creds, gcp_pem = _gcp_creds()
    secrets_: dict[str, bytes] = {"azure secret": SECRET.encode(),
                                  "gcp key": "".join(gcp_pem.splitlines()[1:-1]).encode()[:64]}
    app = create_app(ctl)
    with TestClient(app, raise_server_exceptions=False) as client:
        def post(jws: str, sealed: bytes | None) -> Any:
            body: dict[str, Any] = {"jws": jws}
            if sealed is not None:
                body["sealed"] = base64.b64encode(sealed).decode()
            return client.post("/v1/intents", json=body)

        both = {"providers": {"azure": AZURE, "gcp": GCP}}
        assert post(_sign(ctl, owner, "providers.set", both), None).status_code == 200
        answers = []
        sealed = {}
        for name, plaintext in (("azure", _azure_creds()), ("gcp", gcp_creds)):
            sealed[name] = _seal(ctl, plaintext, name)
            secrets_[f"{name} ciphertext"] = base64.b64encode(sealed[name])[:60]
            secrets_[f"{name} ciphertext hex"] = sealed[name].hex().encode()[:60]
            r = post(_sign(ctl, owner, "credentials.set", _cred_args(ctl, sealed[name], name)), sealed[name])
            assert r.status_code == 200, r.text
            answers.append(r.content)
        # Attacks: each refused, nothing logged, and no error message quotes the secret.
        size = ctl.ledger.tree_head(CONTROLLER_LOG).size
        az = sealed["azure"]
        other = _seal(ctl, _azure_creds(), "azure", controller_id="ab" * 32)
        for_gcp = _seal(ctl, _azure_creds(), "gcp")
        flipped = az[:-1] + bytes([az[-1] ^ 1])
        bad_json = _seal(ctl, b'{"tenant_id": "t", "client_id": "c", "client_secret": "' + SECRET.encode() + b'", ',
                         "azure")
        extra_field = _seal(ctl, json.dumps({**json.loads(_azure_creds()), "password": SECRET}).encode(), "azure")
        cases = [
            (_cred_args(ctl, az), None, "needs the sealed credentials"),
            ({**_cred_args(ctl, az), "ciphertext_sha256": "00" * 32}, az, "not the ones the intent signed"),
            ({**_cred_args(ctl, az), "recipient_key_id": "11" * 32}, az, "another credentials key"),
            (_cred_args(ctl, other), other, "do not open"),
            (_cred_args(ctl, for_gcp), for_gcp, "do not open"),  # sealed for gcp, sent as azure
            (_cred_args(ctl, flipped), flipped, "do not open"),
            (_cred_args(ctl, bad_json), bad_json, "not a JSON object"),
            (_cred_args(ctl, extra_field), extra_field, "unknown fields: password"),
            ({**_cred_args(ctl, az), "provider": "qemu"}, az, "not configured"),
        ]
        for args, attachment, why in cases:
            r = post(_sign(ctl, owner, "credentials.set", args), attachment)
            assert r.status_code in (400, 401), r.text
            assert why in r.json()["error"]["message"], (why, r.text)
            answers.append(r.content)
        r = post(_sign(ctl, owner, "providers.set", {"providers": {"azure": AZURE, "gcp": GCP}}), az)
        assert r.status_code == 400 and "takes no sealed attachment" in r.text
        assert ctl.ledger.tree_head(CONTROLLER_LOG).size == size
        texts = _texts_of(client, ctl) + answers
    log = [entries.decode(leaf) for leaf in _leaves(ctl)]
    creds = [e for e in log if e["type"] == "credentials"]
    assert [c["provider"] for c in creds] == ["azure", "gcp"]
    assert creds[0]["ciphertext_sha256"] == hashlib.sha256(sealed["azure"]).hexdigest()
    # The MAC is keyed: not the plain SHA-256 of the credentials file.
    assert creds[0]["credentials_mac"] != hashlib.sha256(_azure_creds()).hexdigest()
    # The providers got the credentials, and keep them across a restart (sealed state).
    assert type(ctl.providers["azure"]._credential).__name__ == "ClientSecretCredential"  # type: ignore[attr-defined]
    assert type(ctl.providers["gcp"]._credentials).__name__ == "Credentials"  # type: ignore[attr-defined]
    checks, ctl_log = controller_log_checks(_leaves(ctl), controller_id=ctl.controller_id, expect=None)
    assert all(c.ok for c in checks) and len(ctl_log.credentials) == 2, checks
    ctl.close()
    again = _start(tmp_path, owner)
    try:
        assert type(again.providers["azure"]._credential).__name__ == "ClientSecretCredential"  # type: ignore[attr-defined]
    finally:
        again.close()
    captured = capsys.readouterr()
    texts += [caplog.text.encode(), captured.out.encode(), captured.err.encode()]
    for text in texts:
        for label, secret in secrets_.items():
            assert secret not in text, f"{label} leaked"


def test_hpke_round_trip_and_endorsement() -> None:
    identity = keys.Ed25519PrivateKey.generate()
    cid = keys.key_id(identity.public_key())
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.generate()
    published = sealing.endorse(identity, cid, sk.public_key())
    pub = sealing.check_endorsement(published, controller_id=cid, controller_key=identity.public_key())
    blob = sealing.seal(pub, b"secret", controller_id=cid, provider="azure")
    assert sealing.open_sealed(sk, blob, controller_id=cid, provider="azure") == b"secret"
    # Another key pretending to be the controller's: the endorsement fails.
    forged = sealing.endorse(keys.Ed25519PrivateKey.generate(), cid, X25519PrivateKey.generate().public_key())
    with pytest.raises(sealing.CredentialsError, match="not endorsed"):
        sealing.check_endorsement(forged, controller_id=cid, controller_key=identity.public_key())
    with pytest.raises(sealing.CredentialsError, match="not endorsed"):
        sealing.check_endorsement(published, controller_id="ab" * 32, controller_key=identity.public_key())


def test_a_rolled_back_state_file_does_not_bring_back_replaced_credentials(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The host may restore an older sealed state file alone: credentials the controller log
    no longer names are not used (the provider stays off until credentials.set again)."""
    from duet.controller.state import StateStore

    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    old = json.dumps({"tenant_id": "t", "client_id": "c", "client_secret": "the-old-one"}).encode()
    try:
        asyncio.run(ctl.submit(_sign(ctl, owner, "providers.set", {"providers": {"azure": AZURE}})))
        old_at_rest = b""
        for plaintext in (old, _azure_creds()):
            sealed = _seal(ctl, plaintext, "azure")
            asyncio.run(ctl.submit(_sign(ctl, owner, "credentials.set", _cred_args(ctl, sealed)), sealed=sealed))
            # what an older copy of the state file holds: the old credentials, under K
            old_at_rest = old_at_rest or (ctl.state.get_meta("credentials:azure") or b"")
    finally:
        ctl.close()
    assert old_at_rest and b"the-old-one" not in old_at_rest
    for restored in (old_at_rest, None):  # an older state file; one from before any credentials
        state = StateStore(tmp_path / "data" / "state.sqlite")
        if restored is None:
            state._db.execute("DELETE FROM meta WHERE k='credentials:azure'")
        else:
            state.set_meta("credentials:azure", restored)
        state.close()
        caplog.clear()
        again = _start(tmp_path, owner)
        try:
            assert "azure" not in again.providers
            assert "not the ones the controller log last recorded" in caplog.text
            sealed = _seal(again, _azure_creds(), "azure")  # the owner sends them again: back
            asyncio.run(again.submit(_sign(again, owner, "credentials.set", _cred_args(again, sealed)), sealed=sealed))
            assert type(again.providers["azure"]._credential).__name__ == "ClientSecretCredential"  # type: ignore[attr-defined]
        finally:
            again.close()
