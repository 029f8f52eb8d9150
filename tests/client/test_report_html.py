"""The auditor's HTML report: built from a verified log, everything from the log escaped, no
script and nothing external allowed by its Content-Security-Policy, and (in `make test-slow`)
rendered by a real headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from duet.client.http import ClientError
from duet.client.report_html import render_html
from duet.client.verify import verify
from helpers import ControllerProc

HIDDEN = "\x1b[8mhidden-from-terminals"


def _life(controller: ControllerProc, tmp: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    owner = controller.owner()
    cvm = owner.create("local", name="report")["id"]
    owner.run(cvm, "echo first")
    owner.run(cvm, f"printf '{HIDDEN}<script>alert(1)</script>'")
    owner.mode(cvm, "in-service")
    with pytest.raises(ClientError):
        owner.run(cvm, "touch /tmp/evil-<b>bold</b>")
    owner.action(cvm, "health")
    with controller.http() as http:
        report, audit = verify(http, cvm, trust_simulated=True, state_dir=tmp / "user", keep_entries=True)
    assert audit is not None
    return report.to_json(), audit.decoded


@pytest.fixture
def life(controller: ControllerProc, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _life(controller, tmp_path)


Life = tuple[dict[str, Any], list[dict[str, Any]]]


def test_report_shows_every_operation_escaped_under_a_strict_csp(life: Life) -> None:
    report, decoded = life
    page = render_html(report, decoded)
    # Every command of the log is one expandable row; the refusal is a row of its own.
    commands = [e for e in decoded if e.get("type") == "command"]
    assert page.count("<details class='row command'") == len(commands)
    assert page.count("class='row refused'") == 1
    assert "touch /tmp/evil-&lt;b&gt;bold&lt;/b&gt;" in page  # the refused command's text, from the JWS
    # Log-controlled text never becomes markup, and terminal escapes are shown, not acted on.
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "\x1b" not in page and "\\x1b[8mhidden-from-terminals" in page
    # The policy forbids scripts and external loads; the one stylesheet is allowed by hash.
    csp = re.search(r"Content-Security-Policy' content=\"([^\"]+)\"", page)
    assert csp is not None and csp.group(1).startswith("default-src 'none'; style-src 'sha256-")
    assert "unsafe-inline" not in page and "<script" not in page
    assert not re.search(r"(src|href)=['\"](https?:)?//", page)  # nothing from a CDN or a font host
    # Each check links to entries that exist.
    for target in re.findall(r"href='#e(\d+)'", page):
        assert f"id='e{target}'" in page
    assert ("VERIFIED" in page) and ("SIMULATED" in page)


def test_report_marks_a_failed_verdict(life: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    report, decoded = life
    failed = dict(report, ok=False, checks=[{"name": "history", "ok": False, "detail": "entry 3: not allowed"}])
    page = render_html(failed, decoded)
    assert "NOT VERIFIED" in page and "<a href='#e3'>#3</a>" in page


@pytest.mark.slow
def test_report_renders_in_headless_chromium(life: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path) -> None:
    from browser import Chromium

    report, decoded = life
    page = tmp_path / "report.html"
    page.write_text(render_html(report, decoded))
    commands = sum(1 for e in decoded if e.get("type") == "command")
    with Chromium(tmp_path) as browser:
        browser.open(page.as_uri())
        assert browser.eval("document.querySelectorAll('svg .mark.command').length") == commands
        assert browser.eval("document.querySelectorAll('details.row.command').length") == commands
        refusal = browser.eval("(() => { const r = document.querySelector('.row.refused');"
                               " return r ? r.getBoundingClientRect().height : 0 })()")
        assert refusal > 0
        row = "[...document.querySelectorAll('details.row.command')].find(d => d.innerText.includes('printf'))"
        hidden = f"(() => {{ const p = {row}.querySelector('pre.stdout');"
        assert browser.eval(hidden + " return p.checkVisibility() })()") is False  # collapsed
        browser.eval(f"{row}.querySelector('summary').click()")
        assert browser.eval(hidden + " return p.checkVisibility() })()") is True
        assert "hidden-from-terminals" in browser.eval(hidden + " return p.innerText })()")
        browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_verify_cli_writes_the_report(controller: ControllerProc, tmp_path: Path) -> None:
    import subprocess
    import sys

    owner = controller.owner()
    cvm = owner.create("local", name="cli-report")["id"]
    owner.run(cvm, "echo via-cli")
    out = tmp_path / "audit.html"
    r = subprocess.run([sys.executable, "-m", "duet.cli.main", "verify", cvm, "--controller", controller.url,
                        "--trust-simulated", "--state-dir", str(tmp_path / "user"), "--report", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "id='verdict'>VERIFIED" in page and "echo via-cli" in page
