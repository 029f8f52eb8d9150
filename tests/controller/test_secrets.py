"""Secrets (the controller key, the CVM SSH client keys) never leave the controller: not in
the API, the log, the controller's own output, or error messages (docs/invariants.md, invariant 2)."""

from __future__ import annotations

import base64
import sqlite3

import httpx

from duet.client.http import ClientError
from duet.client.verify import fetch_leaves
from duet.controller.statekey import CONTROLLER_KEY_LABEL, StateKey, client_key_label
from duet.cvm.ssh import import_private
from duet.tee.simulated import SimulatedTee
from helpers import ControllerProc


def test_private_keys_never_leave(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo hi")
    owner.mode(cvm, "in-service")
    try:
        owner.run(cvm, "echo refused")
    except ClientError:  # the refusal itself is not under test here
        pass
    with controller.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        leaves = b"\n".join(fetch_leaves(http, cvm, size))
    texts = [leaves]
    for path in ["/v1/controller", "/v1/cvms", f"/v1/cvms/{cvm}", f"/v1/cvms/{cvm}/checkpoint",
                 "/v1/controller/quote?nonce=00", "/openapi.json", f"/v1/cvms/{cvm}/entries"]:
        texts.append(httpx.get(controller.url + path).content)
    controller.kill()  # it holds its database exclusively while it runs
    texts.append(controller.log().encode())

    db = sqlite3.connect(controller.data / "state.sqlite")
    client_key_at_rest = db.execute("SELECT client_key FROM cvms WHERE id=?", (cvm,)).fetchone()[0]
    controller_at_rest = db.execute("SELECT v FROM meta WHERE k='controller_key'").fetchone()[0]
    sealed_k = db.execute("SELECT v FROM meta WHERE k='state_key_sealed'").fetchone()[0]
    db.close()
    # At rest, both are encrypted under the state key K (itself sealed by the TEE).
    assert b"PRIVATE KEY" not in client_key_at_rest + controller_at_rest
    k = StateKey(SimulatedTee(controller.data / "tee").unseal(sealed_k))
    client_key_blob = k.decrypt(client_key_label(cvm), client_key_at_rest)
    controller_pem = k.decrypt(CONTROLLER_KEY_LABEL, controller_at_rest)
    client_key = import_private(client_key_blob)
    secrets = {
        "ssh key (openssh)": client_key_blob,
        "ssh key (pkcs8)": client_key.export_private_key("pkcs8-pem"),
        "controller key (pem body)": b"".join(controller_pem.splitlines()[1:-1]),
    }
    # The raw 32-byte private scalars, in the encodings an accidental dump would use.
    from cryptography.hazmat.primitives import serialization

    from duet.ledger import keys

    ctl_raw = keys.load_private_pem(controller_pem).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for label, raw in {"controller raw": ctl_raw}.items():
        secrets[label + " b64"] = base64.b64encode(raw)
        secrets[label + " hex"] = raw.hex().encode()
    for text in texts:
        for label, secret in secrets.items():
            assert secret not in text, f"{label} leaked"
    assert b"PRIVATE KEY" not in b"".join(texts)
