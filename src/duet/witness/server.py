"""`POST /add-checkpoint`, exactly as C2SP tlog-witness specifies it.

Request body: ``old <size>``, up to 63 base64 consistency-proof lines, an empty line, then
the signed checkpoint. The answers, in the order the checks run:

- 400 malformed body, or old size larger than the checkpoint's;
- 404 an origin this witness does not follow; 403 no signature by the log's key verifies;
- 409 ``<latest size>\\n`` (``text/x.tlog.size``) when the old size is not the size this
  witness last cosigned, or when the sizes are equal and the roots differ (a fork);
- 422 the consistency proof does not verify;
- 200 the cosignature line(s), after the new (size, root) is durably recorded.

The witness never fetches anything: what it knows of a log is the latest checkpoint it
cosigned, so the submitter must prove consistency from exactly that one.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from duet.ledger import merkle
from duet.ledger.checkpoint import Checkpoint
from duet.ledger.cosignature import Cosigner
from duet.ledger.errors import LedgerError
from duet.ledger.note import Verifier, open_note, parse_note
from duet.witness.state import WitnessState

MAX_BODY = 64 * 1024
MAX_PROOF_LINES = 63
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})")


class Refusal(Exception):
    def __init__(self, status: int, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.size = status, message, size

    def response(self) -> Response:
        if self.size is not None:
            # Exactly this content type (the spec's), without the charset Starlette would add.
            return Response(f"{self.size}\n", status_code=self.status, headers={"content-type": "text/x.tlog.size"})
        return PlainTextResponse(self.message + "\n", status_code=self.status)


@dataclass(frozen=True)
class Submission:
    old: int
    proof: list[bytes]
    note: str


def parse_submission(body: bytes) -> Submission:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refusal(400, "body has no empty line before the checkpoint")
    lines = head.split("\n")
    m = _OLD.fullmatch(lines[0])
    if m is None:
        raise Refusal(400, "first line must be 'old <size>' (decimal, no leading zeroes)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refusal(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(lines[1:], start=1):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, f"proof line {i} is not base64") from None
        if len(h) != merkle.HASH_SIZE or base64.b64encode(h).decode() != line:
            raise Refusal(400, f"proof line {i} is not a canonical base64 SHA-256 hash")
        proof.append(h)
    return Submission(int(m.group(1)), proof, note)


class Witness:
    """The protocol logic, separate from HTTP so it is testable and reusable."""

    def __init__(self, state: WitnessState, cosigner: Cosigner, logs: Mapping[str, Sequence[Verifier]],
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.cosigner, self.logs, self.clock = state, cosigner, dict(logs), clock

    def add_checkpoint(self, body: bytes) -> str:
        sub = parse_submission(body)
        try:
            text, _ = parse_note(sub.note)
            cp = Checkpoint.parse(text)
        except LedgerError as exc:
            raise Refusal(400, f"malformed checkpoint: {exc}") from None
        keys = self.logs.get(cp.origin)
        if keys is None:
            raise Refusal(404, f"unknown log origin {cp.origin!r}")
        try:
            open_note(sub.note, keys)
        except LedgerError as exc:
            raise Refusal(403, f"checkpoint is not signed by the log's key: {exc}") from None
        if sub.old > cp.size:
            raise Refusal(400, f"old size {sub.old} is larger than the checkpoint size {cp.size}")

        def decide(size: int, root: bytes | None) -> Refusal | None:
            if sub.old != size:
                return Refusal(409, "old size is not the latest cosigned size", size=size)
            if sub.old == cp.size:
                if root is not None and root != cp.root_hash:
                    return Refusal(409, "same size, different root: a fork", size=size)
                if sub.proof:
                    return Refusal(422, "a proof between equal sizes must be empty")
                return None
            if sub.old == 0:
                return Refusal(422, "the proof must be empty when the old size is zero") if sub.proof else None
            assert root is not None
            try:
                merkle.verify_consistency(sub.old, cp.size, sub.proof, root, cp.root_hash)
            except LedgerError as exc:
                return Refusal(422, f"consistency proof does not verify: {exc}")
            return None

        objection = self.state.update(cp.origin, decide, cp.size, cp.root_hash)
        if objection is not None:
            raise objection
        return self.cosigner.cosign(text, int(self.clock())).line()


def make_app(witness: Witness) -> Starlette:
    async def add_checkpoint(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return PlainTextResponse(f"body larger than {MAX_BODY} bytes\n", status_code=413)
        try:
            return PlainTextResponse(witness.add_checkpoint(body), media_type="text/plain; charset=utf-8")
        except Refusal as refusal:
            return refusal.response()

    return Starlette(routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"])])
