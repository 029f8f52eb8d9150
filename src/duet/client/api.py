"""The controller's read API (`/v1/...`), spelled out once: every client module and CLI
command that reads from a controller goes through :class:`ReadClient`, which checks the
shape of each answer and keeps a run within its bounds (see :mod:`duet.client.http`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any
from urllib.parse import quote as urlquote

from duet.client.errors import ClientError, LimitExceeded
from duet.client.http import Http

#: Stands for the controller log where a CVM id is expected ("@" is in no CVM id).
CONTROLLER_LOG = "@controller"


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


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not base64") from None


class ReadClient:
    """Typed reads of one controller. All methods raise :class:`ClientError` (or its
    :class:`LimitExceeded`) on anything unexpected."""

    def __init__(self, http: Http) -> None:
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
        """Entries [0, size), page by page. The size is what the caller asked for (a
        checkpoint's size); a larger log, more pages than the size needs, a page with
        entries nobody asked for, or too many bytes all stop the download."""
        lim = self.http.limits
        if size > lim.max_entries:
            raise LimitExceeded("max_entries", f"the log has {size} entries; this run downloads at most "
                                               f"{lim.max_entries} (raise it with --max-entries)")
        leaves: list[bytes] = []
        pages = 0
        max_pages = lim.max_pages(size)
        while len(leaves) < size:
            pages += 1
            if pages > max_pages:
                raise LimitExceeded("pages", f"the controller split {size} entries into more than {max_pages} pages")
            start = len(leaves)
            page = _obj(self.http.get_json(f"{_log_path(cvm)}/entries", start=start, end=size), "a page")
            items = page.get("entries")
            if not isinstance(items, list):
                raise _bad("a page has no entry list")
            if not items:
                raise ClientError("bad_response", f"controller returned no entries at index {start}")
            if len(items) > size - start:
                raise _bad(f"a page holds {len(items)} entries, {size - start} were asked for")
            for item in items:
                item = _obj(item, "an entry")
                if item.get("index") != len(leaves):
                    raise ClientError("bad_response", "controller returned entries out of order")
                leaves.append(_b64(item.get("leaf"), f"entry {len(leaves)}"))
        return leaves

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        proof = _obj(self.http.get_json(f"{_log_path(cvm)}/proofs/consistency", old=old, new=new),
                     "the consistency proof").get("hashes")
        if not isinstance(proof, list) or len(proof) > self.http.limits.max_proof_hashes:
            raise _bad("the consistency proof is not a short list of hashes")
        return [_b64(h, "a proof hash") for h in proof]

    def submit_intent(self, jws: str, sealed: bytes | None = None) -> Any:
        """`sealed`: the attachment that travels beside the intent (credentials.set only)."""
        body: dict[str, str] = {"jws": jws}
        if sealed is not None:
            body["sealed"] = base64.b64encode(sealed).decode()
        return self.http.post_json("/v1/intents", body)
