"""The owner's flow against a real controller process and a real sshd (local CVM)."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import httpx
import pytest

from duet.client.http import ClientError
from duet.client.verify import fetch_leaves
from duet.ledger import entries, keys
from duet.ledger.intent import sign_intent
from helpers import ControllerProc


def _log(c: ControllerProc, cvm: str) -> list[dict[str, object]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def _size(c: ControllerProc, cvm: str) -> int:
    with c.http() as http:
        return int(http.get_json(f"/v1/cvms/{cvm}")["tree_size"])


def _cvm_dir(c: ControllerProc, cvm: str) -> Path:
    return c.data / "cvms" / cvm


def test_create_run_and_log(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local", name="web")
    assert cvm["mode"] == "in-update" and cvm["status"] == "ready"
    assert cvm["host_key"].startswith("ssh-ed25519 ")
    res = owner.run(cvm["id"], "echo out; echo err >&2; exit 7")
    assert res["exit_status"] == 7
    assert base64.b64decode(res["stdout"]) == b"out\n"
    assert base64.b64decode(res["stderr"]) == b"err\n"
    log = _log(controller, cvm["id"])
    types = [e["type"] for e in log]
    assert types[:2] == ["genesis", "intent"]
    assert "provisioned" in types
    cmd_i = max(i for i, e in enumerate(log) if e["type"] == "command")
    assert types[cmd_i - 1] == "intent" and types[cmd_i + 1] == "result"
    assert log[cmd_i]["command"] == "echo out; echo err >&2; exit 7"
    assert log[cmd_i]["intent_index"] == cmd_i - 1
    result = log[cmd_i + 1]
    assert result["command_index"] == cmd_i and result["exit_status"] == 7
    assert result["stdout"] == "out\n" and result["stdout_bytes"] == 4
    # The intent is stored verbatim: anyone can re-check the owner's signature.
    assert log[cmd_i - 1]["jws"]


def test_replay_is_refused_and_changes_nothing(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    jws = owner.sign("cvm.run", {"command": "echo once >> count"}, cvm)
    with controller.http() as http:
        http.post_json("/v1/intents", {"jws": jws})
        size = _size(controller, cvm)
        with pytest.raises(ClientError) as info:
            http.post_json("/v1/intents", {"jws": jws})
    assert info.value.code == "replayed_intent" and info.value.status == 409
    assert _size(controller, cvm) == size
    out = owner.run(cvm, "cat count")
    assert base64.b64decode(out["stdout"]) == b"once\n"


def _post(c: ControllerProc, jws: str) -> ClientError:
    with c.http() as http, pytest.raises(ClientError) as info:
        http.post_json("/v1/intents", {"jws": jws})
    return info.value


def test_each_auth_failure_has_its_code_and_logs_nothing(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    size = _size(controller, cvm)
    now = int(time.time())
    cid = owner.controller_id
    stranger = keys.Ed25519PrivateKey.generate()
    cases = {
        "wrong_audience": sign_intent(
            owner.key, op="cvm.run", aud="0" * 64, cvm=cvm, args={"command": "true"}, iat=now
        ),
        "stale_intent": sign_intent(owner.key, op="cvm.run", aud=cid, cvm=cvm, args={"command": "true"}, iat=now - 600),
        "unknown_key": sign_intent(stranger, op="cvm.run", aud=cid, cvm=cvm, args={"command": "true"}, iat=now),
    }
    good = sign_intent(owner.key, op="cvm.run", aud=cid, cvm=cvm, args={"command": "true"}, iat=now)
    h, p, s = good.split(".")
    cases["bad_signature"] = f"{h}.{p}.{s[:-4]}AAAA"
    for code, jws in cases.items():
        e = _post(controller, jws)
        assert (e.code, e.status) == (code, 401), code
    assert _size(controller, cvm) == size


def test_in_service_run_is_rejected_logged_and_never_sent(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.mode(cvm, "in-service")
    marker = Path(f"/tmp/duet-sneaky-{uuid.uuid4().hex}")
    with pytest.raises(ClientError) as info:
        owner.run(cvm, f"touch {marker}")
    assert info.value.status == 403 and info.value.code == "forbidden_in_mode"
    log = _log(controller, cvm)
    assert log[-1]["type"] == "rejected" and info.value.index == len(log) - 1
    assert log[-1]["op"] == "cvm.run" and log[-1]["code"] == "forbidden_in_mode"
    assert not marker.exists()
    # A read-only action of the policy still runs in-service.
    assert owner.action(cvm, "health")["exit_status"] == 0
    # Back in-update, commands run again.
    owner.mode(cvm, "in-update")
    assert owner.run(cvm, "true")["exit_status"] == 0


def test_policy_restricts_commands(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.set_policy(cvm, "commands:\n  in-update: ['echo [a-z]+']\nactions: {}\n")
    assert owner.run(cvm, "echo hello")["exit_status"] == 0
    with pytest.raises(ClientError) as info:
        owner.run(cvm, "echo hello; rm -rf .")
    assert info.value.code == "forbidden_by_policy"
    with pytest.raises(ClientError) as info:
        owner.set_policy(cvm, "commands:\n  in-service: ['.*']\n")
    assert info.value.code == "invalid_policy"


@pytest.mark.parametrize(
    "body,code",
    [
        (b"{not json", "invalid_json"),
        (b'{"jws": 5}', "invalid_request"),
        (b'["jws"]', "invalid_request"),
        (b'{"jws": "not-a-jws"}', "malformed_intent"),
        (b'{"jws": "a.b.c", "x": 1}', "invalid_request"),
        (b"x" * (10 * 1024 * 1024), "request_too_large"),
    ],
)
def test_bad_bodies_get_4xx_json(controller: ControllerProc, body: bytes, code: str) -> None:
    r = httpx.post(controller.url + "/v1/intents", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "path,code",
    [
        ("/v1/cvms/nope", "unknown_cvm"),
        ("/v1/cvms/nope/checkpoint", "unknown_cvm"),
        ("/v1/cvms/nope/entries", "unknown_cvm"),
        ("/v1/controller/quote?nonce=zz", "invalid_request"),
        ("/v1/controller/quote?nonce=" + "00" * 65, "invalid_request"),
        ("/v1/controller/quote", "invalid_request"),
        ("/v1/nothing", "not_found"),
    ],
)
def test_bad_reads_get_4xx_json(controller: ControllerProc, path: str, code: str) -> None:
    r = httpx.get(controller.url + path)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code


def test_bad_proof_ranges(controller: ControllerProc) -> None:
    cvm = controller.owner().create("local")["id"]
    size = _size(controller, cvm)
    for path in [
        f"/v1/cvms/{cvm}/proofs/inclusion?index=-1&tree_size=1",
        f"/v1/cvms/{cvm}/proofs/inclusion?index={size}&tree_size={size}",
        f"/v1/cvms/{cvm}/proofs/inclusion?index=0&tree_size={10**30}",
        f"/v1/cvms/{cvm}/proofs/consistency?old=5&new=2",
        f"/v1/cvms/{cvm}/proofs/consistency?old=0&new={size + 1}",
        f"/v1/cvms/{cvm}/proofs/consistency?old=abc&new=2",
        f"/v1/cvms/{cvm}/entries?start={size + 1}",
        f"/v1/cvms/{cvm}/entries?start=-3",
    ]:
        r = httpx.get(controller.url + path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert "code" in r.json()["error"]
    r = httpx.get(controller.url + f"/v1/cvms/{cvm}/proofs/inclusion?index=0&tree_size={size}")
    assert r.status_code == 200 and isinstance(r.json()["hashes"], list)


def test_unknown_cvm_intent(controller: ControllerProc) -> None:
    with pytest.raises(ClientError) as info:
        controller.owner().run("0" * 16, "true")
    assert (info.value.code, info.value.status) == ("unknown_cvm", 404)


def test_restart_with_another_owner_key_is_refused(controller: ControllerProc, tmp_path: Path) -> None:
    controller.kill()
    controller.owner_key = keys.Ed25519PrivateKey.generate()
    with pytest.raises(RuntimeError, match=r"(?i)owner keys change only through a signed owner\.keys intent"):
        controller.start()


def test_owner_key_rotation(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    new = keys.Ed25519PrivateKey.generate()
    owner.set_owner_keys([keys.public_b64(new.public_key())])
    with pytest.raises(ClientError) as info:
        owner.run(cvm, "true")
    assert info.value.code == "unknown_key"
    controller.owner_key = new
    assert controller.owner().run(cvm, "true")["exit_status"] == 0
    log = _log(controller, cvm)
    assert any(e["type"] == "owner_keys" for e in log)


def test_delete(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    assert owner.delete(cvm)["mode"] == "deleted"
    assert not _cvm_dir(controller, cvm).exists()
    with pytest.raises(ClientError) as info:
        owner.run(cvm, "true")
    assert info.value.code == "cvm_deleted"
    assert _log(controller, cvm)[-1]["type"] == "deleted"


def test_replay_after_a_crash_is_still_refused(controller: ControllerProc) -> None:
    """The replay guard is rebuilt from the log: a restart does not reopen the window."""
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    jws = owner.sign("cvm.run", {"command": "echo once >> count"}, cvm)
    with controller.http() as http:
        http.post_json("/v1/intents", {"jws": jws})
    controller.kill()
    controller.start()
    size = _size(controller, cvm)
    e = _post(controller, jws)
    assert e.code == "replayed_intent"
    assert _size(controller, cvm) == size
    assert base64.b64decode(owner.run(cvm, "cat count")["stdout"]) == b"once\n"


def test_cvm_deleted_behind_the_controllers_back_is_marked_lost(controller: ControllerProc) -> None:
    import asyncio

    from duet.cvm.local import LocalProvider

    owner = controller.owner()
    cvm = owner.create("local")["id"]
    controller.kill()
    # As if deleted in a cloud console: the provider's side is gone, the controller's log is not.
    asyncio.run(LocalProvider(controller.data / "cvms").delete(cvm))
    controller.start()
    with controller.http() as http:
        view = http.get_json(f"/v1/cvms/{cvm}")
    assert view["status"] == "lost"
    log = _log(controller, cvm)
    assert log[-1]["type"] == "error" and log[-1]["code"] == "cvm_lost"
    with pytest.raises(ClientError) as info:
        owner.run(cvm, "true")
    assert info.value.code == "cvm_not_ready"


def test_bad_duet_checkpoint_headers_are_4xx_and_change_nothing(controller: ControllerProc) -> None:
    cvm = controller.owner().create("local")["id"]
    for header in ["!!!", base64.b64encode(b"not a note").decode(),
                   base64.b64encode(b"duet/" + b"0" * 64 + b"/x\n1\nAAAA\n\n\xe2\x80\x94 k sig\n").decode()]:
        r = httpx.get(controller.url + f"/v1/cvms/{cvm}", headers={"Duet-Checkpoint": header})
        assert 400 <= r.status_code < 500, (header, r.status_code, r.text)
        assert "code" in r.json()["error"]
    assert httpx.get(controller.url + f"/v1/cvms/{cvm}").status_code == 200
