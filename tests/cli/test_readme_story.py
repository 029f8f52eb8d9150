"""The README's "Using duet" story, extracted from README.md and run line by line in one
shell, so that the README and the product cannot drift: it must end VERIFIED."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from helpers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- duet:story"


def story_lines() -> list[str]:
    text = README.read_text()
    assert MARKER in text, "the README no longer marks its executable story"
    block = text[text.index(MARKER):]
    m = re.search(r"```sh\n(.*?)\n```", block, re.S)
    assert m is not None
    return [line for line in m.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def expected_status(line: str) -> int:
    """A line whose comment says `exit N` must exit with N; every other line with 0."""
    comment = line.split("#", 1)[1] if " # " in line or "  #" in line else ""
    m = re.search(r"\bexit (\d+)\b", comment)
    return int(m.group(1)) if m else 0


def script(lines: list[str], port: int) -> str:
    parts = ["set -u"]
    for n, line in enumerate(lines):
        line = line.replace("127.0.0.1:6037", f"127.0.0.1:{port}")
        parts.append(f"echo '@@@ {n} start' ; echo '@@@ {n} start' >&2")
        if line.rstrip().split("#", 1)[0].rstrip().endswith("&"):
            parts.append(line)
            parts.append(f"echo '@@@ {n} rc 0'")
            continue
        parts.append(line)
        parts.append(f"rc=$?; echo \"@@@ {n} rc $rc\"; echo '@@@ {n} end' >&2")
        parts.append(f"[ $rc -eq {expected_status(line)} ] || {{ echo '@@@ FAILED {n}'; exit 1; }}")
    parts.append("for j in $(jobs -p); do kill $j; done; wait; echo '@@@ DONE'")
    return "\n".join(parts) + "\n"


def sections(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    cur = None
    for line in text.splitlines():
        m = re.fullmatch(r"@@@ (\d+) start", line)
        if m:
            cur = int(m.group(1))
            out[cur] = ""
        elif cur is not None and not line.startswith("@@@"):
            out[cur] += line + "\n"
    return out


def test_readme_story_runs_and_ends_verified(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # local CVM users must traverse it
    lines = story_lines()
    assert any("serve" in line and line.split("#")[0].rstrip().endswith("&") for line in lines)
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUET_")}
    env.update(PATH=f"{bindir}:{env.get('PATH', '')}", HOME=str(tmp_path), DUET_STATE_DIR=str(tmp_path / "state"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), NO_COLOR="1")
    proc = subprocess.Popen(["bash", "-c", script(lines, free_port())], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        from duet.cvm.cleanup import delete_all_local

        delete_all_local(tmp_path / "ctl" / "cvms")
    assert "@@@ DONE" in stdout and "@@@ FAILED" not in stdout, stdout[-4000:] + "\n---\n" + stderr[-6000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    out, err = sections(stdout), sections(stderr)

    def at(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    # the in-service refusal happened (exit 3 checked above) and names its code
    assert "forbidden_in_mode" in err[at("touch /etc/evil")]
    # the file the story wrote, read back by id
    assert out[at("cat index.html")].startswith("hello from ")
    # created without waiting, then waited for with its steps shown; stdin signed and sent
    waited = err[at("--for ready")]
    assert "provisioned:" in waited and "lockdown (provisioning): passed" in waited
    assert re.search(r"CVM [0-9a-f]{16} is ready", waited), waited
    assert out[at("echo hi | duet cvm run -i")] == "hi\n"
    # expect init pins and says it is trust on first use
    assert "TRUST ON FIRST USE" in err[at("expect init")]
    expect = (tmp_path / "expect.yaml").read_text()
    assert "min_isv_svn" in expect and "allowed_commands" in expect and "uptime" in expect
    # both verifications end VERIFIED
    assert "verdict: VERIFIED" in out[at("verify web --expect")]
    assert "verdict: VERIFIED" in out[at("verify --bundle")]
    assert "FAIL " not in out[at("verify web --expect")]
