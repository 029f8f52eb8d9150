"""`duet log` shows what the log holds, never lets it drive the terminal: control and
format characters in a logged command or result are shown escaped."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ControllerProc


def test_visible_escapes_control_and_format_characters() -> None:
    from duet.cli.render import visible

    assert visible("a\x1b[8mhidden") == "a\\x1b[8mhidden"
    assert visible("x\u202ey\u200b\x7f\x85\n") == "x\\u202ey\\u200b\\x7f\\x85\\x0a"
    assert visible("plain ascii, ünïcode") == "plain ascii, ünïcode"
    assert visible("a\\x1b") == "a\\\\x1b"  # a literal backslash cannot pass for an escape


def test_duet_log_shows_escape_sequences_escaped(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local")["id"]
    owner.run(cvm, "echo 'shown\x1b[8mhidden\x1b[0m' \u202eright-to-left")
    env = {**os.environ, "COLUMNS": "400", "TERM": "xterm"}
    out = subprocess.run([sys.executable, "-m", "duet.cli.main", "log", cvm, "--controller", controller.url],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout
    assert "shown\\x1b[8mhidden\\x1b[0m" in out.stdout and "\\u202eright-to-left" in out.stdout
