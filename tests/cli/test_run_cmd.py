"""`duet cvm run` helpers: `--timeout` durations, the fallback to a controller without
streamed runs, and the size bound of `-i`."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest

from duet.cli import run_cmd
from duet.client.errors import ClientError


def test_timeout_takes_durations() -> None:
    assert run_cmd.parse_duration("90") == 90.0
    assert run_cmd.parse_duration("90s") == 90.0
    assert run_cmd.parse_duration("5m") == 300.0
    assert run_cmd.parse_duration("1h") == 3600.0
    assert run_cmd.parse_duration("500ms") == 0.5
    assert run_cmd.parse_duration(None) is None
    for bad in ("0", "-5s", "5x", "", "1e3"):
        with pytest.raises(ClientError):
            run_cmd.parse_duration(bad)


def test_stdin_over_the_bound_is_refused_not_cut() -> None:
    assert run_cmd.read_stdin(io.BytesIO(b"abc"), 3) == b"abc"
    with pytest.raises(ClientError) as info:
        run_cmd.read_stdin(io.BytesIO(b"abcd"), 3)
    assert info.value.code == "stdin_too_large"


class _OldController:
    """An owner client whose controller predates `/v1/intents/stream`."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def run_streamed(self, *a: Any, **kw: Any) -> Any:
        raise ClientError("not_found", "Not Found", 404)

    def run(self, cvm: str, command: str, **kw: Any) -> dict[str, Any]:
        self.ran.append((cvm, command))
        return {"exit_status": 5, "stdout": base64.b64encode(b"old\n").decode(), "stderr": ""}


def test_a_controller_without_streaming_gets_the_plain_request(capfd: pytest.CaptureFixture[str]) -> None:
    from duet.cli.output import make_err

    owner = _OldController()
    status = run_cmd.run(owner, "c", "echo old", timeout=None, interactive=False, no_wait=False, err=make_err())
    assert status == 5 and owner.ran == [("c", "echo old")]
    assert capfd.readouterr().out == "old\n"
