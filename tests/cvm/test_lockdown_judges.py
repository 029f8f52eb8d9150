"""The pure lockdown judges (`duet.ledger.lockdown`) on facts, attacked line by line.

Each attack here passed the judge on the old main (framing by `--- ` separators, Python's
`splitlines`, options on the controller's line, one synthetic `sshd -T` connection)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from duet.ledger.lockdown import JUDGE_VERSION, judge, judge_all, parse_authorized_keys, split_lines

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJmUZAXsk1TVXt0itPBTsHxxbL7Ecx+6WvJSzGQJGquK"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKz0gSqC8lJc2a0XJWqg4m3Wx6z0V8aA3Gp7Hn1m8b2q"
AKF = "/etc/ssh/duet/authorized_keys"
ROOT_DIRS = [{"path": "/", "owner_uid": 0, "mode": 0o755}, {"path": "/etc", "owner_uid": 0, "mode": 0o755},
             {"path": "/etc/ssh", "owner_uid": 0, "mode": 0o755},
             {"path": "/etc/ssh/duet", "owner_uid": 0, "mode": 0o755}]


def facts(key_bytes: bytes = (KEY + "\n").encode(), **over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "judge_version": JUDGE_VERSION,
        "expected": {"user": "duet", "authorized_keys_file": AKF, "controller_key": KEY,
                     "root_owned_key_file": True, "forcecommand": None, "listener_rule": "remote", "port": 22},
        "sshd": {
            "effective": {
                "port": ["22"], "pubkeyauthentication": ["yes"], "passwordauthentication": ["no"],
                "kbdinteractiveauthentication": ["no"], "permitemptypasswords": ["no"],
                "hostbasedauthentication": ["no"], "gssapiauthentication": ["no"],
                "kerberosauthentication": ["no"], "permitrootlogin": ["no"], "authenticationmethods": ["any"],
                "authorizedkeysfile": [AKF], "authorizedkeyscommand": ["none"],
                "authorizedprincipalscommand": ["none"], "authorizedprincipalsfile": ["none"],
                "trustedusercakeys": ["none"], "allowusers": ["duet"], "forcecommand": ["none"],
                "permituserenvironment": ["no"], "exposeauthinfo": ["no"], "permituserrc": ["no"],
            },
            "files": ["/etc/ssh/sshd_config"], "match_blocks": [], "config_problems": [],
        },
        "key_file": {"path": AKF, "owner_uid": 0, "mode": 0o644, "parents": ROOT_DIRS,
                     "lines": parse_authorized_keys(key_bytes)},
        "other_key_files": [],
        "listeners": [{"proto": "tcp", "addr": "0.0.0.0", "port": 22, "pid": 1, "comm": "systemd",
                       "loopback": False}],
        "accounts": [{"user": "root", "password": "locked"}, {"user": "duet", "password": "locked"}],
        "agents": [], "serial_consoles": [], "present_paths": [], "update_processes": [],
    }
    f.update(over)
    return f


def verdict(name: str, f: dict[str, Any]) -> tuple[bool, str]:
    return judge(name, f)


def test_a_clean_guest_passes_every_check() -> None:
    assert all(ok for _, ok, _ in judge_all(facts())), [r for r in judge_all(facts()) if not r[1]]


@pytest.mark.parametrize("body", [
    # A separator line: the old judge reset the file's key list at `--- <path>`.
    f"{OTHER}\n--- {AKF}\n{KEY}\n",
    # A forced command on the controller's line, then a separator and a clean copy.
    f'command="/tmp/shim" {KEY}\n--- {AKF}\n{KEY}\n',
    f"{KEY}\n{OTHER} intruder\n",                      # a second key
    f"{KEY}\nthis is not a key\n",                     # a stray line (sshd ignores it; we do not)
    f'command="/tmp/shim" {KEY}\n',                    # options on the controller's key
    f'environment="LD_PRELOAD=/tmp/x.so" {KEY}\n',
    f'no-pty,command="a b\\"c" {KEY}\n',
    f"cert-authority {OTHER}\n{KEY}\n",                # a CA: any certificate it signs logs in
    f"{KEY}\x0b{OTHER}\n",                             # one line for sshd, two for splitlines()
    f"{KEY}\u2028{OTHER}\n",
    "",                                                # no key at all
])
def test_authorized_keys_attacks_fail(body: str) -> None:
    ok, why = verdict("only_controller_key", facts(body.encode()))
    assert not ok, body
    assert AKF in why


def test_comments_and_blank_lines_are_what_sshd_skips() -> None:
    body = f"# the controller\n\n   \t\n  {KEY} a comment\n#{OTHER}\n".encode()
    assert verdict("only_controller_key", facts(body))[0]
    lines = parse_authorized_keys(body)
    assert [ln["line"] for ln in lines] == [4] and lines[0]["options"] == []


def test_lines_split_as_sshd_splits_them() -> None:
    assert split_lines(b"a\x0bb\x0cc\x1cd\r\ne\n") == [b"a\x0bb\x0cc\x1cd\r", b"e"]
    assert len(parse_authorized_keys(f"{KEY}\u2028{OTHER}\n".encode())) == 1


def test_options_are_recorded_with_their_quotes() -> None:
    [line] = parse_authorized_keys(f'from="10.0.0.1",command="echo \\"hi, there\\"" {KEY}\n'.encode())
    assert line["options"] == ['from="10.0.0.1"', 'command="echo \\"hi, there\\""']
    assert line["key"] == KEY.split()[1]


def test_a_line_that_is_not_a_key_is_recorded_without_its_text() -> None:
    secret = b"root:$6$salt$verysecrethash:19000:0:99999:7:::"
    [line] = parse_authorized_keys(secret + b"\n")
    assert "unparsed_bytes" in line and secret.decode() not in repr(line)


def test_key_file_must_be_roots_all_the_way_down() -> None:
    f = facts()
    f["key_file"]["owner_uid"] = 1000
    assert not verdict("only_controller_key", f)[0]
    f = facts()
    f["key_file"]["parents"] = [*ROOT_DIRS[:3], {"path": "/etc/ssh/duet", "owner_uid": 1000, "mode": 0o755}]
    assert "/etc/ssh/duet" in verdict("only_controller_key", f)[1]
    f = facts()
    f["key_file"]["mode"] = 0o666
    assert not verdict("only_controller_key", f)[0]
    refused = facts(key_file={"path": AKF, "refused": f"{AKF} is a symbolic link (not followed)"})
    assert "symbolic link" in verdict("only_controller_key", refused)[1]


def test_other_key_files_and_files_that_must_be_gone() -> None:
    f = facts(other_key_files=[{"path": "/home/a b/.ssh/authorized_keys", "owner_uid": 1001, "mode": 0o600,
                                "lines": parse_authorized_keys((OTHER + "\n").encode())}])
    ok, why = verdict("only_controller_key", f)
    assert not ok and "/home/a b/.ssh/authorized_keys" in why
    f = facts()
    f["expected"]["must_be_absent"] = ["/home/duet/.ssh/authorized_keys"]
    f["present_paths"] = ["/home/duet/.ssh/authorized_keys"]
    assert "still exists" in verdict("only_controller_key", f)[1]


def test_match_block_reenabling_password_login_fails() -> None:
    f = facts()
    f["sshd"]["match_blocks"] = [{"file": "/etc/ssh/sshd_config", "criteria": "Address 10.0.0.0/8",
                                  "settings": [["passwordauthentication", "yes"]]}]
    ok, why = verdict("sshd_match_blocks", f)
    assert not ok and "Address 10.0.0.0/8" in why and "passwordauthentication" in why
    f["sshd"]["match_blocks"][0]["settings"] = [["x11forwarding", "no"], ["banner", "/etc/issue"]]
    assert verdict("sshd_match_blocks", f)[0]
    f["sshd"]["match_blocks"][0]["settings"] = [["somefuturesetting", "yes"]]  # not understood: refused
    assert not verdict("sshd_match_blocks", f)[0]


@pytest.mark.parametrize(("setting", "value"), [
    ("allowusers", ["duet", "mallory"]), ("allowusers", []), ("forcecommand", ["/tmp/shim"]),
    ("permituserenvironment", ["yes"]), ("authorizedprincipalsfile", [".ssh/principals"]),
    ("trustedusercakeys", ["/etc/ssh/ca.pub"]), ("exposeauthinfo", ["yes"]), ("permituserrc", ["yes"]),
])
def test_sshd_access_settings(setting: str, value: list[str]) -> None:
    f = facts()
    f["sshd"]["effective"][setting] = value
    ok, why = verdict("sshd_access", f)
    assert not ok and setting in why


def test_forcecommand_only_the_exact_text_the_provider_sets() -> None:
    f = facts()
    f["expected"]["forcecommand"] = 'cd /w && exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"'
    f["sshd"]["effective"]["forcecommand"] = ['cd /w && exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"']
    assert verdict("sshd_access", f)[0]
    f["sshd"]["effective"]["forcecommand"] = ['cd /w && exec /tmp/shim "$SSH_ORIGINAL_COMMAND"']
    assert not verdict("sshd_access", f)[0]


def test_listeners_per_provider() -> None:
    extra = {"proto": "tcp", "addr": "0.0.0.0", "port": 2222, "pid": 99, "comm": "sshd", "loopback": False}
    ok, why = verdict("listeners", facts(listeners=[*facts()["listeners"], extra]))
    assert not ok and "2222" in why
    f = facts()
    f["sshd"]["effective"]["port"] = ["22", "2222"]
    assert not verdict("listeners", f)[0]
    local = facts(listeners=[{"proto": "tcp", "addr": "127.0.0.1", "port": 40000, "pid": 7, "comm": "sshd",
                              "cvm_owned": True, "loopback": True}])
    local["expected"].update(listener_rule="local", port=5555)
    local["sshd"]["effective"].update(port=["5555"], listenaddress=["127.0.0.1:5555"])
    ok, why = verdict("listeners", local)
    assert not ok and "40000" in why


def test_passwords_and_unknown_values_fail_closed() -> None:
    assert not verdict("passwords_locked", facts(accounts=[{"user": "root", "password": "unlocked"}]))[0]
    assert not verdict("passwords_locked", facts(accounts=[]))[0]
    f = facts()
    f["sshd"]["effective"]["permitrootlogin"] = ["prohibit-password-ish"]
    assert not verdict("root_login_off", f)[0]
    f = facts()
    f["sshd"]["effective"]["authenticationmethods"] = ["publickey,password"]
    assert not verdict("password_auth_off", f)[0]


def test_facts_of_an_older_judge_fail_and_stay_readable() -> None:
    old = copy.deepcopy(facts())
    del old["judge_version"]
    assert all(not ok and "older" in why for _, ok, why in judge_all(old))
    assert all(not ok for _, ok, _ in judge_all({"judge_version": JUDGE_VERSION, "garbage": 1}))


def test_verify_fails_a_lockdown_entry_without_facts() -> None:
    from types import SimpleNamespace

    from duet.client.cvm_checks import lockdown_checks
    from duet.client.expectations import UserExpectations

    expect = UserExpectations.model_validate({"lockdown": ["only_controller_key"]})
    old = {"type": "lockdown", "ok": True, "checks": [{"name": "only_controller_key", "ok": True, "detail": "fine",
                                                        "command": "cat", "output": KEY}]}
    [check] = lockdown_checks([old], SimpleNamespace(lockdown_indices=[0]), expect)  # type: ignore[arg-type]
    assert not check.ok and "older" in check.detail
    # Facts a weaker judge passed fail when judged again.
    lax = {**old, "facts": facts(f"{OTHER}\n--- {AKF}\n{KEY}\n".encode())}
    [check] = lockdown_checks([lax], SimpleNamespace(lockdown_indices=[0]), expect)  # type: ignore[arg-type]
    assert not check.ok and "judged again" in check.detail
    good = {**old, "facts": facts()}
    [check] = lockdown_checks([good], SimpleNamespace(lockdown_indices=[0]), expect)  # type: ignore[arg-type]
    assert check.ok, check.detail


def test_the_guest_gatherer_runs_standalone_and_is_a_registered_template() -> None:
    import hashlib
    import json
    import subprocess

    from duet.cvm.guest.lockdown_facts import guest_source
    from duet.cvm.lockdown import remote_command, remote_params
    from duet.ledger.builtins import LOCKDOWN_GATHERER_SHA256, builtin_template

    assert hashlib.sha256(guest_source().encode()).hexdigest() in LOCKDOWN_GATHERER_SHA256, (
        "the guest gatherer changed: add its digest to duet.ledger.builtins (a new template version)")
    params = remote_params(user="duet", controller_key=KEY, must_be_absent=["/home/duet/.ssh/authorized_keys"])
    command = remote_command(params)
    assert builtin_template({"action": "lockdown", "command": command}, user="duet", report_tool=None)
    assert builtin_template({"action": "lockdown", "command": command}, user="other", report_tool=None) is None
    assert builtin_template({"action": "lockdown", "command": command + " x"}, user="duet", report_tool=None) is None
    # The same script, without duet importable (python3 -I -S, as in a guest): it gathers.
    out = subprocess.run(["python3", "-I", "-S", "-c", guest_source(), json.dumps(params)], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["judge_version"] == JUDGE_VERSION and "sshd" in got and "accounts" in got, got.get("error")


def test_remote_attest_commands_are_registered_templates() -> None:
    from duet.cvm.guest.collect import collect_command
    from duet.ledger.builtins import builtin_template

    for kind in ("snp", "tdx", "azure-snp", "azure-tdx", "azure-snp-maa", "azure-tdx-maa"):
        cmd = collect_command(kind, bytes(range(32)), maa="https://duet.weu.attest.azure.net")
        assert builtin_template({"action": "attest", "command": cmd}, user="duet", report_tool=None), kind
        assert builtin_template({"action": "attest", "command": cmd.replace("-I -S ", "")}, user="duet",
                                report_tool=None) is None
    # The MAA instance is a parameter of the template; nothing else around it is.
    cmd = collect_command("azure-snp-maa", bytes(range(32)), maa="https://other.attest.example:8443")
    assert builtin_template({"action": "attest", "command": cmd}, user="duet", report_tool=None)
    assert builtin_template({"action": "attest", "command": cmd.replace("--data-binary", "-d")}, user="duet",
                            report_tool=None) is None


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root to make files of another owner")
def test_the_walker_follows_only_links_root_controls(tmp_path: Any) -> None:
    import os

    from duet.cvm.guest.lockdown_facts import Refused, open_no_follow

    os.chmod(tmp_path, 0o755)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x\n")
    os.symlink("real", tmp_path / "rootlink")  # a root-owned link in a root-owned dir: like /bin -> usr/bin
    assert open_no_follow(str(tmp_path / "rootlink" / "f"), require_root=True)[0] == b"x\n"
    os.symlink("real", tmp_path / "userlink")
    os.lchown(tmp_path / "userlink", 4242, 4242)  # a user's link: never followed
    with pytest.raises(Refused, match="not followed"):
        open_no_follow(str(tmp_path / "userlink" / "f"), require_root=True)
    os.symlink(str(tmp_path / "real" / "f"), tmp_path / "last")  # the file itself a link: never
    with pytest.raises(Refused, match="symbolic link"):
        open_no_follow(str(tmp_path / "last"), require_root=False)
    user_dir = tmp_path / "home"
    user_dir.mkdir()
    os.symlink(str(tmp_path / "real"), user_dir / "in")
    os.chown(user_dir, 4242, 4242)  # a root-owned link, but in a directory a user owns
    with pytest.raises(Refused):
        open_no_follow(str(user_dir / "in" / "f"), require_root=True)
