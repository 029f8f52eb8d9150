"""The lean entry point (`duet.cli.lean`, what the `duet` command runs) behaves exactly as
the full typer CLI (`duet.cli.main`) for `cvm run` and `cvm wait`: same stdout, stderr and
exit status, for successes, remote failures, refusals and every kind of bad input. It
imports none of typer, rich, pydantic or httpx (that is the point of it), and over
`https://` it still attests the controller: a cached verdict spares the quote check, a
miss verifies the quote in full. No timings here: bench/cli.py measures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from duet.ledger import keys, op_names
from duet.ledger.operations import MAX_STDIN, Op
from helpers import ControllerProc

LEAN = [sys.executable, "-m", "duet.cli.lean"]
FULL = [sys.executable, "-m", "duet.cli.main"]
HEAVY = ("typer", "rich", "pydantic", "httpx", "click")


def _env(c: ControllerProc, key: Path, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_") and not k.lower().endswith("_proxy")}
    env.update(DUET_CONTROLLER=c.url, DUET_OWNER_KEY=str(key), DUET_STATE_DIR=str(tmp / "state"),
               XDG_CONFIG_HOME=str(tmp / "config"), NO_COLOR="1", **extra)
    return env


def _norm(text: str) -> str:
    """Entry indexes differ between two runs of the same command (each is logged); a
    usage message names the module it was run as."""
    text = text.replace("duet.cli.lean", "duet.cli.main")
    text = re.sub(r"entry \d+", "entry N", re.sub(r"^\d+$", "N", text, flags=re.M))
    return re.sub(r"index \d+", "index N", re.sub(r"(cvm wait \S+) \d+", r"\1 N", text))


def _both(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command with both entry points; assert they agree; return the lean run."""
    lean = subprocess.run([*LEAN, *args], capture_output=True, text=True, env=env, input=stdin, timeout=120)
    full = subprocess.run([*FULL, *args], capture_output=True, text=True, env=env, input=stdin, timeout=120)
    assert "Traceback" not in lean.stderr, lean.stderr
    assert (lean.returncode, _norm(lean.stdout), _norm(lean.stderr)) == \
        (full.returncode, _norm(full.stdout), _norm(full.stderr)), (args, lean, full)
    return lean


@pytest.fixture
def setup(controller: ControllerProc, tmp_path: Path) -> tuple[ControllerProc, Path, str, dict[str, str]]:
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(controller.owner_key))
    key.chmod(0o600)
    cvm = controller.owner().create("local", name="web")["id"]
    return controller, key, cvm, _env(controller, key, tmp_path)


def test_op_names_agree_with_the_registry() -> None:
    assert op_names.RUN == Op.RUN and op_names.CREATE == Op.CREATE and op_names.MAX_STDIN == MAX_STDIN


def test_run_and_wait_behave_as_the_full_cli(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm, env = setup
    ok = _both(env, "cvm", "run", cvm, "--", "echo", "hi")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "hi\n", "")
    by_name = _both(env, "cvm", "run", "web", "--timeout", "30s", "-v", "--", "sh", "-c",
                    "echo out; echo err >&2; exit 7")
    assert by_name.returncode == 7 and by_name.stdout == "out\n" and "err\n" in by_name.stderr
    assert "signing command" in by_name.stderr
    piped = _both(env, "cvm", "run", "-i", cvm, "--", "cat", stdin="hi\n")
    assert piped.stdout == "hi\n"
    assert _both(env, "cvm", "run", cvm, "--sh", "echo a | tr a b").stdout == "b\n"
    assert _both(env, "cvm", "run", f"--controller={c.url}", cvm, "--", "true").returncode == 0
    started = _both(env, "cvm", "run", "--no-wait", cvm, "--", "sh", "-c", "echo later; exit 3")
    index = started.stdout.strip()
    assert started.returncode == 0 and index.isdigit()
    waited = _both(env, "cvm", "wait", cvm, index)
    assert (waited.returncode, waited.stdout) == (3, "later\n")
    # Errors: one line each, the same code and exit status.
    for args, code, status in [
        (("cvm", "run", "nosuch", "--", "true"), "unknown_cvm", 1),
        (("cvm", "run", cvm, "--timeout", "0", "--", "true"), "invalid_request", 1),
        (("cvm", "run", cvm, "--controller", "http://127.0.0.1:1", "--", "true"), "controller_unreachable", 1),
        (("cvm", "run", cvm, "--controller", "http://example.com:6037", "--", "true"), "invalid_config", 1),
        (("cvm", "run", cvm, "--controller", "ftp://127.0.0.1", "--", "true"), "invalid_config", 1),
        (("cvm", "run", cvm, "--key", str(tmp_path / "missing.key"), "--", "true"), None, 1),
        (("cvm", "wait", cvm, "1"), "out_of_range", 1),
    ]:
        r = _both(env, *args)
        assert r.returncode == status and r.stdout == "", (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error ["), r.stderr
        if code is not None:
            assert r.stderr.startswith(f"error [{code}]"), r.stderr


def test_bad_keys_and_refusals_are_the_same_line(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c, _, cvm, env = setup
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(keys.private_pem(keys.Ed25519PrivateKey.generate()))
    for k in (garbage, stranger):
        r = _both(env, "cvm", "run", cvm, "--key", str(k), "--", "true")
        assert r.returncode != 0 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    bad_trust = _both({**env, "DUET_TRUST_SIMULATED": "maybe"}, "cvm", "run", cvm, "--", "true")
    assert bad_trust.stderr.startswith("error [invalid_config]")
    c.owner().mode(cvm, "in-service")
    refused = _both(env, "cvm", "run", cvm, "--", "touch", "/etc/evil")
    assert refused.returncode == 3 and refused.stderr.startswith("error [forbidden_in_mode]")
    assert "(logged as entry" in refused.stderr


def test_the_lean_path_streams_the_first_line_before_the_command_ends(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, cvm, env = setup
    proc = subprocess.Popen([*LEAN, "cvm", "run", cvm, "--", "sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"1\n"
        running = proc.poll() is None
        rest, errs = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert running, "the first line came only when the command had ended"
    assert rest == b"2\n3\n" and proc.returncode == 0, errs


@pytest.mark.slow  # a dozen typer processes; the fallback itself is also exercised by every other CLI test
def test_what_the_lean_path_does_not_know_goes_to_typer(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, cvm, env = setup
    usage = _both(env, "cvm", "run", cvm)  # no command: typer's usage error
    assert usage.returncode == 2
    helped = _both(env, "cvm", "run", "--help")
    assert helped.returncode == 0 and "Usage" in helped.stdout
    assert _both(env, "cvm", "run", cvm, "--bogus", "--", "true").returncode == 2
    assert _both(env, "cvm", "wait", cvm, "x").returncode == 2
    assert _both(env, "cvm", "list", "-o", "id").stdout.strip() == cvm
    assert _both(env, "--version").stdout.startswith("duet ")


PROBE = """
import sys
sys.argv = ["duet", *{argv!r}]
from duet.cli.lean import main
try:
    main()
except SystemExit as e:
    code = e.code
print("MODULES", ",".join(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}
      or m.startswith("duet.attestation"))), file=sys.stderr)
"""


def _modules(env: dict[str, str], *argv: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv), heavy=HEAVY)], capture_output=True,
                       text=True, env=env, timeout=120)
    line = [x for x in r.stderr.splitlines() if x.startswith("MODULES")][-1]
    return {m for m in line.removeprefix("MODULES ").split(",") if m}


def test_the_lean_path_imports_no_heavy_package(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, cvm, env = setup
    assert _modules(env, "cvm", "run", cvm, "--", "true") == set()
    assert _modules(env, "cvm", "run", "web", "--", "true") == set()
    assert _modules(env, "cvm", "wait", cvm, "2") == set()
    assert _modules(env, "--version") == set()
    # ... and a command it does not take is the full CLI's (typer is imported then).
    assert "typer" in _modules(env, "cvm", "list")


def test_over_ratls_the_lean_path_attests_and_caches(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = controller_factory()
    c.tls = True
    c.start()
    key = tmp_path / "owner.key"
    key.write_bytes(keys.private_pem(c.owner_key))
    cvm = c.owner().create("local")["id"]
    env = _env(c, key, tmp_path)
    # A SIMULATED controller is refused in the handshake unless trusted: the same line.
    refused = _both(env, "cvm", "run", cvm, "--", "true")
    assert refused.returncode == 1 and refused.stderr.startswith("error [ratls_simulated]")
    trusted = {**env, "DUET_TRUST_SIMULATED": "1"}
    assert _both(trusted, "cvm", "run", cvm, "--", "echo", "hi").stdout == "hi\n"
    # A miss verifies the quote in full (the attestation package); a hit does not need it.
    assert any(m.startswith("duet.attestation") for m in _modules({**trusted, "DUET_RATLS_CACHE_TTL": "0"},
                                                                   "cvm", "run", cvm, "--", "true"))
    assert _modules(trusted, "cvm", "run", cvm, "--", "true") == set()
    # The key pin holds on the lean path too: another controller at the same origin is refused.
    pins = tmp_path / "state" / "ratls-pins.json"
    assert pins.exists()
    text = pins.read_text()
    pins.write_text(re.sub(r'"public_key": "[^"]+"', '"public_key": "' + "A" * 43 + '="', text))
    changed = _both(trusted, "cvm", "run", cvm, "--", "true")
    assert changed.returncode == 1 and changed.stderr.startswith("error [ratls_key_changed]")
