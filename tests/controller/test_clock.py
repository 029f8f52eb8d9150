"""Time the host can only delay.

The controller runs under Debian's `faketime` with its clock moved back (as a hostile host
would): entry times stay monotonic per log (clamped, the host's reading kept in
`host_time`), and certificate validity checks use the trusted lower bound, persisted across
restarts, rather than the host clock. The user's verifier fails entries dated after its own
clock, and evidence dated in the future fails `max_evidence_age`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_remote_evidence import _collected, _host_key_line

from duet.attestation import SimulatedSnp
from duet.attestation.errors import AttestationError
from duet.client.cvm_checks import MAX_CLOCK_SKEW, time_checks
from duet.client.errors import ClientError
from duet.client.verify import fetch_leaves, verify
from duet.controller.evidence_remote import RemoteEvidence
from duet.ledger import entries
from duet.ledger.intent import sign_intent
from duet.tee.clock import TrustedClock
from helpers import ControllerProc

T0 = datetime(2030, 6, 1, tzinfo=UTC)


# --- the trusted clock ---------------------------------------------------------------


def test_trusted_clock_never_goes_below_what_it_verified() -> None:
    host = [T0]
    stored: list[datetime] = []
    clock = TrustedClock(lambda: host[0])
    clock.attach(None, stored.append)
    assert clock.now() == T0
    clock.observe(T0 + timedelta(days=10), "test")
    assert clock.now() == T0 + timedelta(days=10)  # the host clock is behind what we verified
    clock.observe(T0, "older")  # never lowered
    assert clock.floor == T0 + timedelta(days=10) and stored == [T0 + timedelta(days=10)]
    host[0] = T0 + timedelta(days=20)
    assert clock.now() == T0 + timedelta(days=20)  # forward is the host's to give
    again = TrustedClock(lambda: T0)
    again.attach(stored[-1], stored.append)  # the bound survives a restart
    assert again.now() == T0 + timedelta(days=10)


def test_dcap_collateral_issue_dates_raise_the_bound(tmp_path: Path) -> None:
    from duet.tee.simulated import SimulatedTee

    collateral = SimulatedTee(tmp_path).quote(bytes(64)).collateral
    clock = TrustedClock(lambda: datetime(2020, 1, 1, tzinfo=UTC))
    clock.observe_dcap_collateral(collateral)
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)  # the simulated TCB info's issueDate


def test_clock_set_back_cannot_revive_an_expired_vcek(tmp_path: Path) -> None:
    """The simulated VCEK expires in 2036. Once the controller has verified something
    issued after that, a host clock set back to 2030 must not make the VCEK valid again."""
    snp = SimulatedSnp.load_or_create(tmp_path / "snp")
    host_key = _host_key_line()
    nonce = bytes(range(32))
    got = _collected(snp, nonce, host_key)
    collector = RemoteEvidence(trusted_arks=[snp.ark_pem])
    host_only = TrustedClock(lambda: T0)
    collector.verify_collected("snp", got, nonce=nonce, host_key=host_key, host_data=None, clock=host_only)
    bounded = TrustedClock(lambda: T0)
    bounded.observe(datetime(2036, 6, 1, tzinfo=UTC), "collateral issued after the VCEK expired")
    with pytest.raises(AttestationError, match="expired"):
        collector.verify_collected("snp", got, nonce=nonce, host_key=host_key, host_data=None, clock=bounded)


# --- the user's verifier -------------------------------------------------------------


def _entry(t: datetime, **extra: object) -> dict[str, object]:
    return {"v": 1, "type": "error", "code": "x", "message": "m",
            "time": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **extra}


def test_verifier_fails_an_entry_from_the_future() -> None:
    now = T0
    ok = time_checks([_entry(now - timedelta(hours=1)), _entry(now + MAX_CLOCK_SKEW / 2)], now)
    assert ok[0].ok
    late = time_checks([_entry(now - timedelta(hours=1)), _entry(now + MAX_CLOCK_SKEW * 2)], now)
    assert not late[0].ok and "entry 1" in late[0].detail


def test_verifier_fails_entry_times_that_go_back() -> None:
    back = time_checks([_entry(T0), _entry(T0 - timedelta(seconds=1))], T0 + timedelta(hours=1))
    assert not back[0].ok and "before entry 0" in back[0].detail
    clamped = time_checks([_entry(T0), _entry(T0, host_time="2030-05-30T00:00:00.000000Z")], T0)
    assert clamped[0].ok and "host clock was behind" in clamped[0].detail


def test_evidence_dated_in_the_future_fails_max_evidence_age() -> None:
    from duet.client.audit import LogState
    from duet.client.cvm_checks import _cvm_expectations
    from duet.client.expectations import UserExpectations

    expect = UserExpectations.model_validate({"cvm": {"max_evidence_age": "1h"}})
    future = [_entry(T0 + timedelta(days=1), type="evidence")]
    checks = _cvm_expectations(future, 0, None, LogState(), expect, T0, True)
    age = next(c for c in checks if c.name == "evidence_age")
    assert not age.ok and "in the future" in age.detail
    fresh = _cvm_expectations([_entry(T0 - timedelta(minutes=5), type="evidence")], 0, None, LogState(), expect,
                              T0, True)
    assert next(c for c in fresh if c.name == "evidence_age").ok


# --- the controller under faketime ---------------------------------------------------

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# libfaketime 0.9.10 (Debian 12) breaks clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) when
# the monotonic clock is left alone: Python's time.sleep then fails with EINVAL at random
# (inside subprocess waits). A host that moves the wall clock does not change how long a
# sleep lasts, so this shim, loaded before libfaketime, hands sleeps straight to the kernel.
_SLEEP_SHIM = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int clock_nanosleep(clockid_t c, int f, const struct timespec *r, struct timespec *rem) {
    return syscall(SYS_clock_nanosleep, c, f, r, rem) == 0 ? 0 : errno;
}
int nanosleep(const struct timespec *r, struct timespec *rem) { return (int)syscall(SYS_nanosleep, r, rem); }
"""


def _preload(tmp: Path) -> str:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: make setup installs Debian's faketime")
    shim = tmp / "sleep_shim.so"
    if not shim.exists():
        (tmp / "sleep_shim.c").write_text(_SLEEP_SHIM)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(tmp / "sleep_shim.c")], check=True)
    return f"{shim}:{LIBFAKETIME}"


def _under_faketime(c: ControllerProc, back_s: int) -> ControllerProc:
    # Only the wall clock moves (asyncio's timers run on the monotonic clock, which a host
    # setting its clock does not move). NO_FAKE_STAT: file timestamps stay real.
    c.env = {"LD_PRELOAD": _preload(c.data.parent), "FAKETIME": f"-{back_s}s",
             "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}
    return c.start()


def _stop(c: ControllerProc) -> None:
    """Stop the controller and wait until its port is free (a stopped controller's
    socket may linger a moment after the process is reaped)."""
    c.kill(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", c.port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.1)
    raise AssertionError("the controller did not stop")


def _submit(c: ControllerProc, op: str, cvm: str, args: dict[str, object], back_s: int) -> dict[str, object]:
    """An intent dated by the (moved) controller clock, so its iat window admits it."""
    with c.http() as http:
        aud = http.get_json("/v1/controller")["controller_id"]
        jws = sign_intent(c.owner_key, op=op, aud=aud, cvm=cvm, args=args, iat=int(time.time()) - back_s)
        return dict(http.post_json("/v1/intents", {"jws": jws}))


def _log(c: ControllerProc, cvm: str) -> list[dict[str, object]]:
    with c.http() as http:
        size = http.get_json(f"/v1/cvms/{cvm}")["tree_size"]
        return [entries.decode(leaf) for leaf in fetch_leaves(http, cvm, size)]


def test_controller_clock_moved_back(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory().start()
    cvm = c.owner().create("local")["id"]  # provisioning verifies evidence: the bound is set
    c.owner().run(cvm, "echo before")
    before = _log(c, cvm)
    assert not [e for e in before if "host_time" in e]  # an honest clock is never clamped
    last_before = str(before[-1]["time"])
    _stop(c)

    # Twenty minutes back: entries are clamped to the log's last time, and say what the host
    # said. (An intent signed on that clock is 20 min older than the entry that logs it:
    # within LOG_DELAY_S, so it is logged.)
    back = 20 * 60
    _under_faketime(c, back)
    with c.http() as http:
        info = http.get_json("/v1/controller")
    assert info["time_lower_bound"] is not None
    assert _submit(c, "cvm.run", cvm, {"command": "echo after"}, back)["exit_status"] == 0
    after = _log(c, cvm)[len(before):]
    assert after, "the command was logged"
    assert all(str(e["time"]) >= last_before for e in after)
    assert all("host_time" in e and str(e["host_time"]) < last_before for e in after)
    times = [str(e["time"]) for e in _log(c, cvm)]
    assert times == sorted(times)
    with c.http() as http:  # the user's verifier, on its own (true) clock
        report, _ = verify(http, cvm, trust_simulated=True, state_dir=tmp_path / "user")
    entry_times = next(ch for ch in report.checks if ch.name == "entry_times")
    assert entry_times.ok and "host clock was behind" in entry_times.detail
    assert report.ok, [(ch.name, ch.detail) for ch in report.checks if not ch.ok]
    _stop(c)

    # Two days back, and before the simulated VCEK's notBefore (2026-01-01): an intent that
    # the host's clock admits is older than LOG_DELAY_S by the entry time it would get (never
    # below the log's last time, nor the trusted bound), so it is refused when it would be
    # logged (every verifier would flag it: an old intent replayed), and nothing is written.
    for back in (2 * 86400, int(time.time() - datetime(2025, 6, 1, tzinfo=UTC).timestamp())):
        _under_faketime(c, back)
        size = len(_log(c, cvm))
        with pytest.raises(ClientError) as info:
            _submit(c, "cvm.mode", cvm, {"mode": "in-service"}, back)
        assert info.value.code == "stale_intent" and "after its iat" in info.value.message
        assert len(_log(c, cvm)) == size
        _stop(c)
    c.env = {}
    c.start()  # the honest clock again: the controller works as before
    assert _submit(c, "cvm.run", cvm, {"command": "echo again"}, 0)["exit_status"] == 0
    _stop(c)
