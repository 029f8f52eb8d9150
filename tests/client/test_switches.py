"""Switches mean what they say: strict boolean environment variables, no owner intents
over plain HTTP off loopback, loud warnings (and --strict failures) for expectations
that leave the controller open."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from duet.client.config import check_owner_url, env_bool
from duet.client.errors import ClientError
from duet.client.expectations import load_expectations, weak_points
from duet.client.http import Http
from duet.client.owner import OwnerClient
from duet.ledger import keys


@pytest.mark.parametrize("value", ["false", "False", "no", "off", "0", "OFF", ""])
def test_false_words_do_not_trust_simulated(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUET_TRUST_SIMULATED", value)
    with Http("https://127.0.0.1:1", state_dir=tmp_path) as http:
        assert http.ratls is not None and http.ratls.trust_simulated is False


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_true_words_trust_simulated(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUET_TRUST_SIMULATED", value)
    with Http("https://127.0.0.1:1", state_dir=tmp_path) as http:
        assert http.ratls is not None and http.ratls.trust_simulated is True


@pytest.mark.parametrize("value", ["maybe", "2", "tru", "enabled", " "])
def test_other_words_are_an_error(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DUET_TRUST_SIMULATED", value)
    with pytest.raises(ClientError) as info:
        env_bool("DUET_TRUST_SIMULATED")
    assert info.value.code == "invalid_config"
    with pytest.raises(ClientError):
        Http("https://127.0.0.1:1", state_dir=tmp_path)


def test_cli_refuses_an_ambiguous_switch(tmp_path: Path) -> None:
    env = {"DUET_TRUST_SIMULATED": "perhaps", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "info", "--controller",
                          "https://127.0.0.1:1"], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "invalid_config" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("url", ["http://10.0.0.5:6037", "http://controller.example:6037", "ftp://127.0.0.1",
                                 "http://127.0.0.1.evil.example:6037"])
def test_owner_refuses_plain_http_off_loopback(url: str) -> None:
    with pytest.raises(ClientError) as info:
        check_owner_url(url)
    assert info.value.code == "invalid_config"
    with pytest.raises(ClientError):
        OwnerClient(keys.Ed25519PrivateKey.generate(), url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6037", "http://localhost:1", "http://[::1]:6037",
                                 "https://controller.example:6037"])
def test_owner_accepts_loopback_and_ratls(url: str) -> None:
    check_owner_url(url)


def test_owner_cli_refuses_plain_http_before_sending(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(keys.Ed25519PrivateKey.generate()))
    res = subprocess.run([sys.executable, "-m", "duet.cli.main", "cvm", "run", "--controller",
                          "http://192.0.2.1:6037", "--key", str(key), "abc", "--", "id"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "plain http" in res.stderr and "Traceback" not in res.stderr


def _yaml(tmp: Path, doc: object) -> Path:
    path = tmp / "expect.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_weak_expectations_are_named(tmp_path: Path) -> None:
    assert len(weak_points(None)) == 2
    assert len(weak_points(load_expectations(_yaml(tmp_path, {"controller": {"tee": "sgx"}})))) == 2
    pinned = load_expectations(_yaml(tmp_path, {"controller": {"mrsigner": "ab" * 32,
                                                               "accepted_tcb_statuses": ["UpToDate"]}}))
    assert weak_points(pinned) == []


def test_verify_strict_fails_on_weak_expectations(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"controller": {"mrenclave": "ab" * 32}})  # no TCB statuses
    res = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", "abc", "--controller",
                          "http://127.0.0.1:1", "--expect", str(path), "--strict", "--state-dir",
                          str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "weak_expectations" in res.stderr
    assert "WARNING" in res.stderr and "accepted_tcb_statuses" in res.stderr


def test_owner_commands_over_ratls_check_the_controller_expectations(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = controller_factory()
    c.tls = True
    c.start()
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(c.owner_key))
    wrong = _yaml(tmp_path, {"controller": {"mrenclave": "00" * 32}})
    env = {"DUET_TRUST_SIMULATED": "1", "DUET_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    base = [sys.executable, "-m", "duet.cli.main", "cvm", "create", "--controller", c.url, "--key", str(key)]
    res = subprocess.run([*base, "--expect", str(wrong)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "ratls_expectations" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    with c.http() as http:  # nothing was sent: no CVM exists
        assert http.get_json("/v1/cvms")["cvms"] == []
