"""A standby becomes the primary (docs/continuity.md, "Promotion").

By the time `promote` runs, `serve` has taken the lease (a fenced etcd transaction:
`Primary.acquire`), rebuilt the local replica from etcd and verified it against the
controller's signatures, the newest checkpoint the standby verified while it followed the
primary (`StandbyInfo.known_heads`) and the sizes the witnesses cosigned
(`WitnessFloor`): a store rolled back or forked below either is refused there and
nothing is appended. Then, before anything is served:

1. a `promote` entry in the controller log (this build, and the digest of the handshake
   key its `standby_joined` named), so every CVM intent from now on names a
   controller-log size that includes it;
2. every command whose write-ahead entry has no result is closed `interrupted` (commands
   on one CVM are serialised, so it is the last entry of its log);
3. the rotation mark is set: the start-up (`Controller.startup`) gives every CVM a new
   SSH client key before the first intent (`key_rotated`, reason `promotion`), so the
   old primary's copy of the keys opens nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httpx

from duet.controller import continuity
from duet.controller.etcd import EtcdClient, EtcdUnavailable
from duet.controller.state import Status
from duet.controller.witnessing import WitnessConfig, WitnessesUnreachable
from duet.ledger import entries
from duet.ledger.store import TreeHead
from duet.witness.client import WitnessError, verified_response

if TYPE_CHECKING:
    from duet.controller.service import Controller
    from duet.controller.standby import StandbyInfo

log = logging.getLogger("duet.controller.promotion")

CONTROLLER_LOG = "controller"
PROBE_TIMEOUT_S = 10.0
#: Stands for a root the witnesses do not tell (they answer with sizes): never a real one.
_UNKNOWN_ROOT = b"\xff" * 32


class WitnessFloor:
    """`ReplicatedLedger(witness_floor=...)`: what the witnesses say of the controller log
    etcd serves. Each witness is shown etcd's signed head (`old <size>`): it cosigns it
    (it holds that very checkpoint, or none), or answers 409 with the size it holds. A
    quorum holding more than etcd, or the same size with another root, means etcd was
    rolled back or forked under what they cosigned; the floor returned then makes the
    replica refuse the store. Fewer than a quorum answering refuses the promotion
    (`witnesses_unreachable`, exit 4), as at any start with witnesses. The witnesses are
    the ones in force when the standby joined (sent by the attested primary); the
    verified log's own are probed again at start (`Witnessing.startup_check`)."""

    def __init__(self, etcd: EtcdClient, prefix: bytes, config: WitnessConfig) -> None:
        self._etcd, self._prefix, self._config = etcd, prefix, config

    def __call__(self, log_id: str) -> TreeHead | None:
        if log_id != CONTROLLER_LOG or not self._config.witnesses:
            return None
        try:
            kv = self._etcd.get(self._prefix + b"log/" + log_id.encode().hex().encode() + b"/head")
        except EtcdUnavailable:
            return None  # the replica's own read of the head fails the same way
        if kv is None:
            return None
        note = kv.value.decode("utf-8", "replace")
        try:
            size = int(note.split("\n")[1])
        except (IndexError, ValueError):
            return None  # not a checkpoint: the replica refuses it itself
        ahead: list[int] = []
        forked = answered = 0
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as http:
            for w in self._config.witnesses:
                try:
                    resp = http.post(w.url + "/add-checkpoint", content=(f"old {size}\n\n" + note).encode())
                except httpx.HTTPError as exc:
                    log.warning("witness %s: unreachable at promotion: %s", w.name, type(exc).__name__)
                    continue
                if resp.status_code == 200:
                    try:
                        verified_response(w.verifier, note, resp.text)
                    except WitnessError as exc:
                        log.warning("witness %s: %s", w.name, exc.message)
                        continue
                    answered += 1
                    continue
                text = resp.text.strip()
                if resp.status_code == 409 and text.isdigit():
                    answered += 1
                    held = int(text)
                    if held > size:
                        ahead.append(held)
                    elif held == size:
                        forked += 1
        quorum = max(1, self._config.quorum)
        if len(ahead) >= quorum:
            # The largest size at least `quorum` witnesses hold.
            floor = sorted(ahead, reverse=True)[quorum - 1]
            log.error("a quorum of witnesses cosigned the controller log up to size %d; etcd serves %d", floor, size)
            return TreeHead(floor, _UNKNOWN_ROOT)
        if len(ahead) + forked >= quorum:
            log.error("a quorum of witnesses cosigned another controller log of size %d than etcd serves", size)
            return TreeHead(size, _UNKNOWN_ROOT)
        if answered < quorum:
            # As at any start with witnesses: without a quorum, a rolled-back store cannot
            # be ruled out, so the standby does not take over on it.
            raise WitnessesUnreachable(
                f"refusing to promote: only {answered} of {len(self._config.witnesses)} witnesses answered and the "
                f"quorum is {quorum}, so a rolled-back etcd cannot be ruled out")
        return None


def promote(ctl: Controller, info: StandbyInfo, reason: str) -> int:
    """Log the promotion, close the commands the lost primary left open, mark every CVM
    key for rotation at start-up. No await: nothing interleaves."""
    mine = ctl.tee.measurement()
    index = ctl._append_controller([entries.PromoteEntry(
        mrenclave=mine.get("mrenclave", ""), mrsigner=mine.get("mrsigner", ""), key_sha256=info.key_sha256,
        reason=reason)])
    log.warning("promoted to primary (controller log entry %d): %s", index, reason)
    closed = 0
    for rec in list(ctl._records.values()):
        size = ctl.ledger.tree_head(rec.id).size
        if rec.status == Status.DELETED or not size:
            continue
        last = entries.decode(ctl.ledger.leaves(rec.id, size - 1, size)[0])
        if last["type"] in ("command", "output"):
            ci = size - 1 if last["type"] == "command" else int(last["command_index"])  # type: ignore[call-overload]
            ctl.append(rec, [entries.InterruptedEntry(
                command_index=ci, reason="the primary was lost while the command ran; a standby took over "
                                         f"(controller log entry {index})")])
            closed += 1
    if closed:
        log.warning("closed %d command(s) the lost primary left without a result", closed)
    ctl.state.set_meta(continuity.ROTATION_META, b"promotion")
    return index
