"""RA-TLS serving end to end, and claiming a controller that has no owner yet."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from duet.client.http import ClientError, Http
from duet.ledger import keys
from duet.ledger.intent import sign_intent
from helpers import ControllerProc


def test_owner_commands_over_ratls(controller_factory) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory()
    c.tls = True
    c.start()
    assert c.url.startswith("https://")
    owner = c.owner()
    cvm = owner.create("local")["id"]
    assert owner.run(cvm, "echo over tls")["exit_status"] == 0
    # Without explicitly trusting the SIMULATED root, the handshake itself fails: nothing is sent.
    with Http(c.url, trust_simulated=False, state_dir=c.data.parent / "other-state") as http:
        with pytest.raises(ClientError) as info:
            http.get_json("/v1/controller")
    assert info.value.code.startswith("ratls_") or "simulated" in info.value.message.lower()
    # The CLI speaks RA-TLS too.
    env = {**os.environ, "DUET_TRUST_SIMULATED": "1", "DUET_STATE_DIR": str(c.data.parent / "cli-state")}
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", cvm, "--controller", c.url,
                        "--trust-simulated"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plain_http_off_loopback_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    owner = keys.Ed25519PrivateKey.generate()
    (tmp_path / "o.pub").write_bytes(keys.public_pem(owner.public_key()))
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(tmp_path / "d"),
                        "--listen", "0.0.0.0:6999", "--owner-key", str(tmp_path / "o.pub")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "loopback" in r.stderr and "Traceback" not in r.stderr


def test_gramine_outside_an_enclave_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(tmp_path / "d"),
                        "--tee", "gramine"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "enclave" in r.stderr.lower() and "Traceback" not in r.stderr


def test_claim_an_unowned_controller(controller_factory) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory()
    c.with_owner_key = False
    c.start()
    owner = c.owner()
    with pytest.raises(ClientError) as info:
        owner.create("local")
    assert info.value.code == "unknown_key" and "claim" in info.value.message
    # A claim must be self-signed: naming someone else's key does not work.
    stranger = keys.Ed25519PrivateKey.generate()
    bad = sign_intent(stranger, op="owner.keys", aud=owner.controller_id,
                      args={"keys": [keys.public_b64(owner.key.public_key())]}, iat=int(time.time()))
    with c.http() as http, pytest.raises(ClientError) as info2:
        http.post_json("/v1/intents", {"jws": bad})
    assert info2.value.code == "unknown_key"
    owner.set_owner_keys([keys.public_b64(owner.key.public_key())])
    cvm = owner.create("local")["id"]
    assert owner.run(cvm, "true")["exit_status"] == 0
    # Once owned, another self-signed claim is just an unknown key.
    late = sign_intent(stranger, op="owner.keys", aud=owner.controller_id,
                       args={"keys": [keys.public_b64(stranger.public_key())]}, iat=int(time.time()))
    with c.http() as http, pytest.raises(ClientError) as info3:
        http.post_json("/v1/intents", {"jws": late})
    assert info3.value.code == "unknown_key"
