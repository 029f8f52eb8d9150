"""The lockdown judgements on recorded `sshd -T` / shadow outputs (pure)."""

from __future__ import annotations

from duet.cvm.lockdown import (
    judge_only_controller_key,
    judge_password_auth,
    judge_passwords_locked,
    judge_root_login,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJmUZAXsk1TVXt0itPBTsHxxbL7Ecx+6WvJSzGQJGquK"
AKF = "/home/duet/.ssh/authorized_keys"
SSHD = """passwordauthentication no
kbdinteractiveauthentication no
permitemptypasswords no
hostbasedauthentication no
permitrootlogin prohibit-password
authorizedkeysfile {akf}
authorizedkeyscommand none
"""


def test_relative_authorized_keys_file_resolves_to_the_users_home() -> None:
    for akf_setting in (".ssh/authorized_keys", "%h/.ssh/authorized_keys", AKF):
        out = SSHD.format(akf=akf_setting) + f"--- {AKF}\n{KEY} c\n"
        assert judge_only_controller_key(out, KEY, AKF)[0], akf_setting


def test_second_key_or_second_file_fails() -> None:
    two = SSHD.format(akf=AKF) + f"--- {AKF}\n{KEY}\nssh-ed25519 AAAAother intruder\n"
    assert not judge_only_controller_key(two, KEY, AKF)[0]
    other = SSHD.format(akf=AKF) + f"--- {AKF}\n{KEY}\n--- /root/.ssh/authorized_keys\nssh-rsa AAAAroot\n"
    ok, why = judge_only_controller_key(other, KEY, AKF)
    assert not ok and "/root/.ssh/authorized_keys" in why
    extra_file = SSHD.format(akf=".ssh/authorized_keys .ssh/authorized_keys2") + f"--- {AKF}\n{KEY}\n"
    assert not judge_only_controller_key(extra_file, KEY, AKF)[0]


def test_password_and_root_login_judgements() -> None:
    assert judge_password_auth(SSHD.format(akf=AKF))[0]
    assert not judge_password_auth(SSHD.format(akf=AKF).replace("passwordauthentication no",
                                                                 "passwordauthentication yes"))[0]
    assert not judge_password_auth("")[0]  # nothing read is a failure, not a pass
    assert judge_root_login(SSHD.format(akf=AKF))[0]
    assert not judge_root_login("permitrootlogin yes\n")[0]


def test_shadow_judgement() -> None:
    assert judge_passwords_locked("root:*\nduet:!\nsvc:!*\n")[0]
    assert not judge_passwords_locked("root:$6$salt$hash\n")[0]
    assert not judge_passwords_locked("duet:\n")[0]  # empty password
    assert not judge_passwords_locked("sudo: a password is required\n")[0]
    assert not judge_passwords_locked("")[0]
