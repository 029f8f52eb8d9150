"""libvirt's TLS client material by the sealed credentials path: it reaches the provider,
survives a restart, and never shows in a response, the logs, an error (a failed create
included) or the controller's output."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from test_providers_by_intent import _cred_args, _leaves, _seal, _sign, _start, _texts_of

from duet.controller.app import create_app
from duet.cvm.libvirt import LibvirtProvider, TlsCredentials
from duet.ledger import entries, keys

CA = "-----BEGIN CERTIFICATE-----\nQ0EtZm9yLXRlc3Rz\n-----END CERTIFICATE-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nQ0VSVC1mb3ItdGVzdHM=\n-----END CERTIFICATE-----\n"
LIBVIRT = {"uri": "qemu+tls://127.0.0.1:1/system", "image": "/var/lib/libvirt/images/base.qcow2",
           "ssh_address": "127.0.0.1", "boot_timeout_s": 5}


def test_libvirt_tls_key_never_shows(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    plaintext = json.dumps({"ca_cert": CA, "client_cert": CERT, "client_key": key_pem}).encode()
    body_lines = key_pem.splitlines()[1:-1]
    secrets_ = {"key line 1": body_lines[0].encode(), "key line 2": body_lines[1].encode()[:40]}
    owner = keys.Ed25519PrivateKey.generate()
    ctl = _start(tmp_path, owner)
    answers: list[bytes] = []
    with TestClient(create_app(ctl), raise_server_exceptions=False) as client:
        def post(jws: str, sealed: bytes | None = None) -> Any:
            body: dict[str, Any] = {"jws": jws}
            if sealed is not None:
                body["sealed"] = base64.b64encode(sealed).decode()
            return client.post("/v1/intents", json=body)

        assert post(_sign(ctl, owner, "providers.set", {"providers": {"libvirt": LIBVIRT}})).status_code == 200
        sealed = _seal(ctl, plaintext, "libvirt")
        secrets_["ciphertext"] = base64.b64encode(sealed)[:60]
        r = post(_sign(ctl, owner, "credentials.set", _cred_args(ctl, sealed, "libvirt")), sealed)
        assert r.status_code == 200, r.text
        answers.append(r.content)
        provider = ctl.providers["libvirt"]
        assert isinstance(provider, LibvirtProvider) and isinstance(provider.credentials, TlsCredentials)
        assert provider.credentials.client_key == key_pem
        # A wrong field set is refused without quoting the key.
        bad = _seal(ctl, json.dumps({"client_key": key_pem, "ca": CA}).encode(), "libvirt")
        r = post(_sign(ctl, owner, "credentials.set", _cred_args(ctl, bad, "libvirt")), bad)
        assert r.status_code == 400 and "libvirt credentials file" in r.text
        answers.append(r.content)
        # A create that cannot connect (nothing listens on port 1) fails, saying so, keylessly.
        r = post(_sign(ctl, owner, "cvm.create", {"provider": "libvirt", "tee": "none"}))
        assert r.status_code >= 400, r.text
        assert "libvirt" in r.text
        answers.append(r.content)
        texts = _texts_of(client, ctl) + answers
        for cvm in ctl._records:
            texts.append(b"".join(_leaves(ctl, cvm)))
    creds = [entries.decode(leaf) for leaf in _leaves(ctl) if entries.decode(leaf)["type"] == "credentials"]
    assert [c["provider"] for c in creds] == ["libvirt"]
    ctl.close()
    again = _start(tmp_path, owner)
    try:
        assert again.providers["libvirt"].credentials.client_key == key_pem  # type: ignore[attr-defined]
    finally:
        again.close()
    captured = capsys.readouterr()
    texts += [caplog.text.encode(), captured.out.encode(), captured.err.encode()]
    for text in texts:
        for label, secret in secrets_.items():
            assert secret not in text, f"{label} leaked"
        assert b"pkipath" not in text and b"duet-libvirt-" not in text
