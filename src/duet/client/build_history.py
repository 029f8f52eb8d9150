"""Which controller builds ever held the state key K, judged against the user's list.

K is made at a controller's first start and sealed to that build; it leaves a build only
through a `handover` or to a standby (`standby_joined`), which the giver logs, naming both
builds, before it sends anything. So the builds that held K are: the first giver (with no
handover nor standby: the build the quote shows), each handover's successor and each
standby, whether or not it was ever promoted (`promote`). A user who lists
`controller.builds` in the expectations accepts a CVM only if *every* build in that
history is listed (a build that held K could have read every CVM key and signed anything
in the controller's name), not only the build that answers the quote today. An approval of
a whole signer (`build_approved` with an MRSIGNER) lets whoever holds that signing key ship
a build that receives K, so it fails unless `allow_mrsigner_approval` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from duet.client.audit import Check
from duet.client.controller_log import ControllerLog
from duet.client.expectations import UserExpectations


def build_history(ctl: ControllerLog, current: str | None) -> list[dict[str, Any]]:
    """The builds that held K, in order: {index, mrenclave, how}; `current` is the quoted
    MRENCLAVE (the only holder when nothing was handed over). A standby holds K from its
    `standby_joined` on, beside the primary; a `promote` makes it the build that acts."""
    return _walk(ctl, current)[0]


def _walk(ctl: ControllerLog, current: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The build history, and the build the controller log says acts now (holds the
    lease): the last handover's successor or promoted standby; with neither, the first
    build."""
    out: list[dict[str, Any]] = []
    active: str | None = None
    standbys: set[str] = set()
    for i, e in ctl.continuity:
        t = e["type"]
        if t == "recovered":
            if not out:
                # Recovered before any handover: the build before it is the one whose seal
                # did not open, if the recovering enclave could tell (else it is unknown).
                first = str(e["from_mrenclave"])
                out.append({"index": 0, "mrenclave": first,
                            "how": "first build" if first else "first build (unknown: not logged)"})
            out.append({"index": i, "mrenclave": str(e["mrenclave"]),
                        "how": f"recovery from {len(e['holders'])} holders' shares"})
            active = str(e["mrenclave"])
        elif t in ("handover", "standby_joined"):
            giver = str(e["from_mrenclave"])
            if not out:
                out.append({"index": 0, "mrenclave": giver, "how": "first build"})
            elif active != giver:
                out.append({"index": i, "mrenclave": giver, "how": "unexplained (no handover to it)"})
            active = giver
            to = str(e["to_mrenclave"])
            if t == "handover":
                out.append({"index": i, "mrenclave": to, "how": f"handover from {giver[:16]}…"})
                active = to
            else:
                out.append({"index": i, "mrenclave": to, "how": f"standby of {giver[:16]}… (K, not the lease)"})
                standbys.add(to)
        elif t == "promote":
            build = str(e["mrenclave"])
            how = "promoted standby" if build in standbys else "unexplained (promoted without joining as a standby)"
            out.append({"index": i, "mrenclave": build, "how": how})
            active = build
    if not out and current is not None:
        out.append({"index": 0, "mrenclave": current, "how": "first build (no handover)"})
        active = current
    return out, active


def _short(history: Sequence[dict[str, Any]]) -> str:
    return " → ".join(f"{h['mrenclave'][:16]}… (#{h['index']})" for h in history) or "none recorded"


def build_history_checks(ctl: ControllerLog, expect: UserExpectations | None,
                         current: str | None) -> list[Check]:
    history, active = _walk(ctl, current)
    refused = [e for _, e in ctl.continuity if e["type"] == "handover_refused"]
    note = f"; {len(refused)} handover(s) refused" if refused else ""
    gaps = [h for h in history if h["how"].startswith("unexplained")]
    mismatch = bool(history) and current is not None and active != current
    if gaps:
        detail = (f"build(s) {', '.join(h['mrenclave'][:16] + '…' for h in gaps)} handed over the state key or "
                  "acted with it, but the controller log never gave it to them (no handover, no standby_joined): "
                  f"{_short(history)}")
    elif mismatch:
        detail = (f"the controller log says build {str(active)[:16]}… acts (holds the state key and the lease), "
                  f"but the quote is of {str(current)[:16]}…: {_short(history)}")
    else:
        detail = f"builds that held the state key: {_short(history)}{note}"
    checks = [Check("controller_build_history", not gaps and not mismatch, detail)]
    ctl_exp = expect.controller if expect is not None else None
    if ctl_exp is None:
        return checks
    if ctl_exp.builds is not None:
        allowed = {b.mrenclave.lower() for b in ctl_exp.builds}
        outside = [h for h in history if h["mrenclave"] not in allowed]
        if current is not None and current not in allowed and all(h["mrenclave"] != current for h in outside):
            outside.append({"index": "quote", "mrenclave": current})
        checks.append(Check(
            "controller_builds", not outside and bool(history),
            ("every build that held the state key is expected: " + _short(history)) if not outside and history
            else "no build is known: the build history cannot be judged" if not outside
            else "build(s) outside controller.builds held the state key: "
                 + ", ".join(f"{h['mrenclave'][:16]}… (#{h['index']})" for h in outside)))
    checks += recovery_checks(ctl, ctl_exp.recovery)
    signer = [i for i, e in ctl.continuity if e["type"] == "build_approved" and e.get("mrsigner") is not None]
    if signer and not ctl_exp.allow_mrsigner_approval:
        checks.append(Check(
            "controller_approvals", False,
            f"the owner approved a whole MRSIGNER (entries {', '.join(map(str, signer))}): its key holder can "
            "ship a build that receives the state key; set controller.allow_mrsigner_approval to accept"))
    return checks


def recovery_checks(ctl: ControllerLog, want: Any) -> list[Check]:
    """`controller.recovery`: `none` fails if recovery was ever on in the controller log's
    history (a state key once shared stays rebuildable by those holders until it is
    replaced: the past counts, not only the present); `{min_threshold: M}` fails if any
    policy ever in force needed fewer than M shares."""
    if want is None:
        return []
    on = [(i, m, n) for i, m, n in ctl.recovery if n]
    if want == "none":
        return [Check("controller_recovery", not on,
                      "recovery from shares was never enabled" if not on else
                      "recovery from shares was enabled (" + ", ".join(f"{m} of {n} at entry {i}" for i, m, n in on)
                      + "): that many holders together could rebuild the state key outside any enclave")]
    weak = [(i, m, n) for i, m, n in on if m < want.min_threshold]
    return [Check("controller_recovery", not weak,
                  f"every recovery policy needed at least {want.min_threshold} shares" if not weak else
                  "recovery policies below the expected threshold of " + str(want.min_threshold) + ": "
                  + ", ".join(f"{m} of {n} at entry {i}" for i, m, n in weak))]
