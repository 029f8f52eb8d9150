"""The cloud-init configuration every real provider (qemu, azure, gcp) boots its CVM with.

It makes the controller's key the only way in (invariant 2):

* one user (``duet`` by default), the only one sshd lets in (``AllowUsers``); the
  controller's key, and nothing else, in ``/etc/ssh/duet/authorized_keys`` (root-owned,
  0644, every directory above it root's), the only ``AuthorizedKeysFile``: nothing in a
  home directory, which its user could rewrite or swap. No default distribution user;
  keys the cloud offers through its metadata are ignored (``allow_public_ssh_keys:
  false``); Azure's osProfile can only place a key in ``~/.ssh/authorized_keys``, so that
  file is removed (and the lockdown checks it is gone);
* the user's shell is ``/bin/sh`` (dash): a non-interactive ``sh -c`` reads no start-up
  file, where Debian's and Ubuntu's bash read ``~/.bashrc`` for every SSH command;
* passwords locked (the user's and root's), password / keyboard-interactive SSH login
  off, root login off, fresh host keys generated in the guest (``ssh_deletekeys``);
* serial console logins masked (``serial-getty@.service``);
* on clouds, the guest agents that can inject keys or run commands (Azure's
  walinuxagent — VMAccess, Run Command —, Google's guest, OS Config and metadata-script
  agents) masked early at boot (``bootcmd``) and purged afterwards (``runcmd``).

The text is deterministic for given inputs, so a plan shows it exactly and the log
records the very bytes the CVM was given. The controller's lockdown checks
(`duet.cvm.lockdown`) later verify the result from inside the CVM.
"""

from __future__ import annotations

import re
from typing import Literal

import yaml

Cloud = Literal["azure", "gcp", "qemu"]

DEFAULT_USER = "duet"
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PUBKEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|"
    r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) ([A-Za-z0-9+/]+={0,3})$"
)

#: systemd units that can put keys into the guest or run commands on the cloud's behalf.
AGENT_UNITS: dict[str, tuple[str, ...]] = {
    "azure": ("walinuxagent.service",),
    "gcp": (
        "google-guest-agent.service",
        "google-osconfig-agent.service",
        "google-startup-scripts.service",
        "google-shutdown-scripts.service",
        "google-oslogin-cache.timer",
    ),
    "qemu": (),
}
#: Packages holding those agents, purged once the system is up.
AGENT_PACKAGES: dict[str, tuple[str, ...]] = {
    "azure": ("walinuxagent",),
    "gcp": ("google-guest-agent", "google-osconfig-agent"),
    "qemu": (),
}

SSHD_DROPIN_PATH = "/etc/ssh/sshd_config.d/00-duet.conf"
AUTHORIZED_KEYS_PATH = "/etc/ssh/duet/authorized_keys"


def sshd_dropin(user: str) -> str:
    """sshd settings for the CVM; first match wins in sshd, and the drop-in directory is
    read before the rest of Ubuntu's / Debian's sshd_config, so these take precedence."""
    return "\n".join([
        "# written by duet at provisioning: the controller's key is the only way in",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "ChallengeResponseAuthentication no",
        "PermitEmptyPasswords no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        "KerberosAuthentication no",
        "PermitRootLogin no",
        f"AllowUsers {user}",
        f"AuthorizedKeysFile {AUTHORIZED_KEYS_PATH}",
        "AuthorizedKeysCommand none",
        "AuthorizedPrincipalsFile none",
        "AuthorizedPrincipalsCommand none",
        "TrustedUserCAKeys none",
        "PermitUserEnvironment no",
        "PermitUserRC no",
        "ExposeAuthInfo no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "AcceptEnv DUET_RUN",
        "",
    ])


def key_line(authorized_key: str) -> str:
    """The key as ``<type> <base64>``: one OpenSSH public key, no options, no comment."""
    line = authorized_key.strip()
    fields = line.split()
    if "\n" in line or "\r" in line or len(fields) < 2 or not _PUBKEY_RE.match(f"{fields[0]} {fields[1]}"):
        raise ValueError("authorized_key must be one OpenSSH public key line")
    return f"{fields[0]} {fields[1]}"


def user_data(authorized_key: str, *, cloud: Cloud, user: str = DEFAULT_USER) -> str:
    """The ``#cloud-config`` user-data for a CVM (deterministic text)."""
    if not _USER_RE.match(user) or user == "root":
        raise ValueError(f"invalid user name {user!r}")
    key = key_line(authorized_key)
    units = AGENT_UNITS[cloud]
    packages = AGENT_PACKAGES[cloud]
    bootcmd: list[str] = [f"systemctl mask --now {u} || true" for u in units]
    bootcmd.append("systemctl mask serial-getty@.service || true")
    bootcmd.append("systemctl stop 'serial-getty@*.service' || true")
    runcmd: list[str] = [
        # Azure's osProfile key (the same key, now in the root-owned file) must not stay.
        f"rm -f /home/{user}/.ssh/authorized_keys",
        f"chown root:root /etc/ssh/duet && chmod 0755 /etc/ssh/duet && chmod 0644 {AUTHORIZED_KEYS_PATH}",
        f"passwd -l {user}",
        "passwd -l root",
        "systemctl stop 'serial-getty@*.service' || true",
    ]
    if packages:
        runcmd.append(
            "DEBIAN_FRONTEND=noninteractive apt-get purge -y " + " ".join(packages) + " || true"
        )
    runcmd.append("systemctl reload ssh || systemctl reload sshd || true")
    config: dict[str, object] = {
        "users": [
            {
                "name": user,
                "gecos": "duet controller",
                "shell": "/bin/sh",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        "allow_public_ssh_keys": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519"],
        "ssh_quiet_keygen": True,
        # cloud-init's fingerprint printer (final stage, after runcmd) re-creates an empty
        # ~/.ssh/authorized_keys while reading it (cloud-init 22.4 at least), undoing the
        # removal above; the lockdown requires that file to be absent.
        "no_ssh_fingerprints": True,
        "chpasswd": {"expire": False},
        "write_files": [
            {"path": SSHD_DROPIN_PATH, "owner": "root:root", "permissions": "0644", "content": sshd_dropin(user)},
            {"path": AUTHORIZED_KEYS_PATH, "owner": "root:root", "permissions": "0644", "content": key + "\n"},
        ],
        "bootcmd": bootcmd,
        "runcmd": runcmd,
    }
    body = yaml.safe_dump(config, sort_keys=True, default_flow_style=False, width=1000)
    return "#cloud-config\n" + body


def meta_data(instance_id: str, hostname: str) -> str:
    """NoCloud ``meta-data``."""
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=True)

