from __future__ import annotations

import pytest
import yaml

from duet.cvm import cloudinit


@pytest.mark.parametrize("cloud", ["azure", "gcp", "qemu"])
def test_user_data_locks_every_other_door(cloud: str, controller_key: str) -> None:
    text = cloudinit.user_data(controller_key, cloud=cloud)  # type: ignore[arg-type]
    assert text.startswith("#cloud-config\n")
    cfg = yaml.safe_load(text)
    key = " ".join(controller_key.split()[:2])
    # one user, the controller's key only (no comment, no options), no default user
    assert [u["name"] for u in cfg["users"]] == ["duet"]
    # The key lives only in a root-owned file outside any home, the only AuthorizedKeysFile.
    assert "ssh_authorized_keys" not in cfg["users"][0]
    assert cfg["users"][0]["shell"] == "/bin/sh"  # no ~/.bashrc for SSH commands
    files = {f["path"]: f for f in cfg["write_files"]}
    akf = files["/etc/ssh/duet/authorized_keys"]
    assert (akf["content"], akf["owner"], akf["permissions"]) == (key + "\n", "root:root", "0644")
    assert "rm -f /home/duet/.ssh/authorized_keys" in cfg["runcmd"]
    assert cfg["users"][0]["lock_passwd"] is True
    assert "default" not in cfg["users"]
    assert cfg["ssh_pwauth"] is False
    assert cfg["disable_root"] is True
    assert cfg["allow_public_ssh_keys"] is False  # metadata keys ignored
    assert cfg["ssh_deletekeys"] is True
    assert "passwd -l root" in cfg["runcmd"] and "passwd -l duet" in cfg["runcmd"]
    dropin = cfg["write_files"][0]
    assert dropin["path"] == "/etc/ssh/sshd_config.d/00-duet.conf"
    for line in ("PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
                 "AuthorizedKeysCommand none", "PermitEmptyPasswords no", "AllowUsers duet",
                 "AuthorizedKeysFile /etc/ssh/duet/authorized_keys", "PermitUserRC no", "ExposeAuthInfo no",
                 "AuthorizedPrincipalsFile none", "TrustedUserCAKeys none", "PermitUserEnvironment no"):
        assert line in dropin["content"].splitlines()
    assert "systemctl mask serial-getty@.service || true" in cfg["bootcmd"]
    agents = {"azure": ["walinuxagent"], "gcp": ["google-guest-agent", "google-osconfig-agent"], "qemu": []}[cloud]
    for a in agents:
        assert f"systemctl mask --now {a}.service || true" in cfg["bootcmd"]
        assert any(a in c and "apt-get purge" in c for c in cfg["runcmd"])
    if cloud == "gcp":
        assert "systemctl mask --now google-startup-scripts.service || true" in cfg["bootcmd"]
    # deterministic: a plan shows the exact bytes
    assert text == cloudinit.user_data(controller_key, cloud=cloud)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "ssh-ed25519", "ssh-ed25519 AAAA\nssh-rsa BBBB", "command=\"x\" ssh-ed25519 AAAA",
                                 "ssh-dss AAAAB3"])
def test_user_data_rejects_anything_but_one_key(bad: str) -> None:
    with pytest.raises(ValueError):
        cloudinit.user_data(bad, cloud="qemu")


def test_user_name_validated(controller_key: str) -> None:
    with pytest.raises(ValueError):
        cloudinit.user_data(controller_key, cloud="qemu", user="root")
    with pytest.raises(ValueError):
        cloudinit.user_data(controller_key, cloud="qemu", user="a b")


def test_meta_data() -> None:
    assert yaml.safe_load(cloudinit.meta_data("i-1", "h")) == {"instance-id": "i-1", "local-hostname": "h"}
