"""The controller's read API (`/v1/...`), spelled out once: every client module and CLI
command that reads from a controller goes through :class:`ReadClient`, which checks the
shape of each answer and keeps a run within its bounds (see :mod:`duet.client.http`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote as urlquote

from duet.client.errors import ClientError, LimitExceeded

if TYPE_CHECKING:
    from duet.client.config import Limits

#: Stands for the controller log where a CVM id is expected ("@" is in no CVM id).
CONTROLLER_LOG = "@controller"


#: Recovery from shares (docs/continuity.md): the policy in force, the owner's fetch of the
#: encrypted shares, and a recovering enclave's session and where holders send shares.
RECOVERY_PATH = "/v1/controller/recovery"
RECOVERY_SHARES_PATH = "/v1/controller/recovery/shares"
RECOVERY_SESSION_PATH = "/v1/controller/recovery/session"
RECOVERY_SHARE_PATH = "/v1/controller/recovery/session/share"


def _seg(cvm: str) -> str:
    return urlquote(cvm, safe="")


def _log_path(cvm: str) -> str:
    """The read routes of a CVM's log, or of the controller log."""
    return "/v1/controller/log" if cvm == CONTROLLER_LOG else f"/v1/cvms/{_seg(cvm)}"


def _bad(what: str) -> ClientError:
    return ClientError("bad_response", f"the controller's answer is malformed: {what}")


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} is not an object")
    return value


def b64_field(value: Any, what: str, bad: Callable[[str], ClientError] = _bad) -> bytes:
    """A base64 field of a controller's answer, or `bad` naming it (never a traceback)."""
    if not isinstance(value, str):
        raise bad(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{what} is not base64") from None


_b64 = b64_field


class Transport(Protocol):
    """What a ReadClient reads through: `duet.client.http.Http` (httpx), or
    `duet.client.lean_http.LeanHttp` (the standard library, for `duet cvm run`)."""

    url: str
    limits: Limits

    def get_json(self, path: str, **params: Any) -> Any: ...

    def get_text(self, path: str, headers: dict[str, str] | None = None) -> str: ...

    def stream_lines(self, method: str, path: str, body: Any = None) -> Iterator[Any]: ...

    def post_json(self, path: str, body: Any) -> Any: ...


class ReadClient:
    """Typed reads of one controller. All methods raise :class:`ClientError` (or its
    :class:`LimitExceeded`) on anything unexpected."""

    def __init__(self, http: Transport) -> None:
        self.http = http

    @property
    def url(self) -> str:
        return self.http.url

    def controller(self) -> dict[str, Any]:
        return _obj(self.http.get_json("/v1/controller"), "/v1/controller")

    def quote(self, nonce: bytes | None = None) -> tuple[bytes, dict[str, Any]]:
        nonce = nonce or secrets.token_bytes(32)
        return nonce, _obj(self.http.get_json("/v1/controller/quote", nonce=nonce.hex()), "the quote")

    def cvms(self) -> list[dict[str, Any]]:
        cvms = _obj(self.http.get_json("/v1/cvms"), "/v1/cvms").get("cvms")
        if not isinstance(cvms, list) or not all(isinstance(c, dict) for c in cvms):
            raise _bad("the CVM list is not a list of objects")
        return cvms

    def cvm(self, cvm: str) -> dict[str, Any]:
        return _obj(self.http.get_json(f"/v1/cvms/{_seg(cvm)}"), "the CVM")

    def tree_size(self, cvm: str) -> int:
        size = self.cvm(cvm).get("tree_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("tree_size is not a count")
        return size

    def checkpoint(self, cvm: str, shown: str | None = None) -> str:
        """`shown`: the checkpoint we verified last; the controller refuses to serve a log
        older than it (a rolled-back enclave state) instead of answering."""
        headers = {"Duet-Checkpoint": base64.b64encode(shown.encode()).decode()} if shown else None
        if cvm == CONTROLLER_LOG:
            headers = None  # the controller log's rollback is caught by the consistency check
        return self.http.get_text(f"{_log_path(cvm)}/checkpoint", headers=headers)

    def leaves(self, cvm: str, size: int) -> list[bytes]:
        """Entries [0, size), page by page (see :meth:`pages`)."""
        return [leaf for page in self.pages(cvm, 0, size) for leaf in page]

    def pages(self, cvm: str, start: int, end: int) -> Iterator[list[bytes]]:
        """Entries [start, end), one page at a time, so that a caller that checks them as
        they come holds one page, never the log. `end` is what the caller asked for (a
        checkpoint's size); a larger log, more pages than the range needs, a page with
        entries nobody asked for, or too many bytes all stop the download."""
        lim = self.http.limits
        if end - start > lim.max_entries:
            raise LimitExceeded("max_entries", f"the log has {end - start} entries to fetch; this run downloads "
                                               f"at most {lim.max_entries} (raise it with --max-entries)")
        pages = 0
        max_pages = lim.max_pages(end - start)
        at = start
        while at < end:
            pages += 1
            if pages > max_pages:
                raise LimitExceeded("pages", f"the controller split {end - start} entries into more than "
                                             f"{max_pages} pages")
            page = _obj(self.http.get_json(f"{_log_path(cvm)}/entries", start=at, end=end), "a page")
            items = page.get("entries")
            if not isinstance(items, list):
                raise _bad("a page has no entry list")
            if not items:
                raise ClientError("bad_response", f"controller returned no entries at index {at}")
            if len(items) > end - at:
                raise _bad(f"a page holds {len(items)} entries, {end - at} were asked for")
            out: list[bytes] = []
            for item in items:
                item = _obj(item, "an entry")
                if item.get("index") != at + len(out):
                    raise ClientError("bad_response", "controller returned entries out of order")
                out.append(_b64(item.get("leaf"), f"entry {at + len(out)}"))
            at += len(out)
            yield out

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        proof = _obj(self.http.get_json(f"{_log_path(cvm)}/proofs/consistency", old=old, new=new),
                     "the consistency proof").get("hashes")
        if not isinstance(proof, list) or len(proof) > self.http.limits.max_proof_hashes:
            raise _bad("the consistency proof is not a short list of hashes")
        return [_b64(h, "a proof hash") for h in proof]

    def witnessed(self, cvm: str, size: int) -> dict[str, Any]:
        """The proof that the CVM head of `size` is in a witness-cosigned controller-log
        checkpoint (judged by `witness_check.py`)."""
        return _obj(self.http.get_json(f"/v1/cvms/{_seg(cvm)}/witnessed", size=size), "the witnessed proof")

    def controller_witnessed(self) -> dict[str, Any]:
        """The newest controller-log checkpoint a quorum of witnesses cosigned (judged by
        `witness_check.controller_log_witness_check`)."""
        return _obj(self.http.get_json("/v1/controller/log/witnessed"), "the witnessed controller-log checkpoint")

    def submit_intent(self, jws: str, stdin: bytes | None = None, sealed: bytes | None = None) -> Any:
        """`sealed`: the attachment that travels beside the intent (credentials.set only)."""
        return self.http.post_json("/v1/intents", _intent_body(jws, stdin, sealed))

    def submit_streamed(self, jws: str, stdin: bytes | None = None) -> Iterator[Any]:
        """`POST /v1/intents/stream`: its events as they arrive (`duet.client.streamed`)."""
        return self.http.stream_lines("POST", "/v1/intents/stream", _intent_body(jws, stdin))

    def follow_command(self, cvm: str, index: int) -> Iterator[Any]:
        """A logged command's output and result, as they are logged."""
        return self.http.stream_lines("GET", f"/v1/cvms/{_seg(cvm)}/commands/{int(index)}/follow")


def _intent_body(jws: str, stdin: bytes | None, sealed: bytes | None = None) -> dict[str, str]:
    body = {"jws": jws}
    if stdin is not None:
        body["stdin"] = base64.b64encode(stdin).decode()
    if sealed is not None:
        body["sealed"] = base64.b64encode(sealed).decode()
    return body
