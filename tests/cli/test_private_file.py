"""Key files are readable by their owner only, also when `keygen --force` writes over a
file that others could read, and a symbolic link planted where the key goes is refused
(the key would land wherever it points)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from duet.cli.private_file import write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_readable_file_written_over_becomes_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_private(path, b"SECRET")
    assert _mode(path) == 0o600 and path.read_bytes() == b"SECRET"


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("theirs")
    os.chmod(target, 0o644)
    (tmp_path / "k").symlink_to(target)
    with pytest.raises(OSError):
        write_private(tmp_path / "k", b"SECRET")
    assert target.read_text() == "theirs" and _mode(target) == 0o644


def test_keygen_force_over_a_readable_file_leaves_it_owner_only(tmp_path: Path) -> None:
    out = tmp_path / "owner.key"
    out.write_text("old")
    os.chmod(out, 0o644)
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "keygen", "--out", str(out), "--force"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _mode(out) == 0o600 and out.read_text().startswith("-----BEGIN PRIVATE KEY-----")
