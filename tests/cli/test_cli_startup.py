"""A CLI that starts fast: `duet cvm run` (and the other owner commands without --expect)
never import the attestation package; the heavy sub-commands still work and are listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from duet.ledger import keys
from helpers import ControllerProc

PROBE = """
import sys
sys.argv = ["duet", *{argv!r}]
from duet.cli.main import main
try:
    main()
except SystemExit:
    pass
print("ATTESTATION_LOADED" if any(m == "duet.attestation" for m in sys.modules) else "LEAN", file=sys.stderr)
"""


def probe(*argv: str) -> str:
    r = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv))], capture_output=True, text=True,
                       timeout=60)
    return r.stderr.strip().splitlines()[-1]


def test_owner_commands_do_not_import_attestation(controller: ControllerProc, tmp_path: Path) -> None:
    cvm = controller.owner().create("local")["id"]
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    base = ("--controller", controller.url)
    assert probe("cvm", "run", cvm, *base, "--key", str(key), "--", "true") == "LEAN"
    assert probe("cvm", "list", *base) == "LEAN"
    assert probe("log", cvm, *base) == "LEAN"
    assert probe("--version") == "LEAN"


def test_heavy_subcommands_are_still_there() -> None:
    duet = [sys.executable, "-m", "duet.cli.main"]
    top = subprocess.run([*duet, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "attestation" in top and "witness" in top
    for sub in ("attestation", "witness"):
        r = subprocess.run([*duet, sub, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Usage" in r.stdout
