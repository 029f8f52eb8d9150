"""A recorded-shape Azure Resource Manager, plugged into the real SDK clients through
azure-core's `transport=` hook (a `RequestsTransport` whose requests.Session has this
adapter mounted). Every request the SDK sends is recorded (method, URL, parsed body).

Resources live in a dict keyed by ARM path; PUT stores the body and answers 200 with
``provisioningState: Succeeded`` (or a 201 + Azure-AsyncOperation poll, when asked),
DELETE removes it, GET reads it, and the resource-group `resources` listing shows what is
left. `fail` / `hang` make a chosen request fail or never finish.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import requests.structures
import urllib3
from requests.adapters import BaseAdapter


@dataclass
class Sent:
    method: str
    url: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeCredential:
    """A TokenCredential stand-in: what DefaultAzureCredential would be in production."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken("fake-arm-token-SECRET", int(time.time()) + 3600)


@dataclass
class FakeArm(BaseAdapter):
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    #: (method, path regex) -> (status, json body) for a one-shot failure
    fail: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: kinds of resource whose PUT is accepted with 201 and then polled
    async_kinds: set[str] = field(default_factory=set)
    #: operation id -> final status ("Succeeded", "Failed", or "InProgress" forever)
    async_outcome: dict[str, str] = field(default_factory=dict)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_request: Callable[[Sent], None] | None = None

    def __post_init__(self) -> None:
        super().__init__()

    # requests adapter API
    def close(self) -> None:
        pass

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        raw = request.body
        if isinstance(raw, bytes):
            raw = raw.decode()
        elif hasattr(raw, "read"):
            raw = raw.read().decode()
        body = json.loads(raw) if raw else None
        sent = Sent(
            method=request.method or "",
            url=request.url or "",
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(request.headers),
            body=body,
        )
        self.sent.append(sent)
        if self.on_request is not None:
            self.on_request(sent)
        status, payload, headers = self._route(sent)
        content = json.dumps(payload).encode() if payload is not None else b""
        hdrs = {"Content-Type": "application/json", "x-ms-request-id": str(uuid.uuid4()),
                "Content-Length": str(len(content)), **headers}
        resp = requests.Response()
        resp.status_code = status
        resp.raw = urllib3.HTTPResponse(body=io.BytesIO(content), headers=hdrs, status=status,
                                        preload_content=False, decode_content=False)
        resp.headers = requests.structures.CaseInsensitiveDict(hdrs)
        resp.url = sent.url
        resp.request = request
        resp.reason = "OK" if status < 400 else "Error"
        return resp

    # ------------------------------------------------------------------ routing
    @staticmethod
    def _kind(path: str) -> str:
        p = path.lower()
        for seg, kind in (
            ("/networksecuritygroups/", "nsg"),
            ("/virtualnetworks/", "vnet"),
            ("/publicipaddresses/", "ip"),
            ("/networkinterfaces/", "nic"),
            ("/disks/", "disk"),
            ("/virtualmachines/", "vm"),
        ):
            if seg in p:
                return kind
        return "other"

    def _route(self, s: Sent) -> tuple[int, Any, dict[str, str]]:
        for (method, pattern), (status, payload) in list(self.fail.items()):
            if s.method == method and re.search(pattern, s.path):
                del self.fail[(method, pattern)]
                return status, payload, {}
        path = s.path
        low = path.lower()
        if "/operations/" in low:
            op_id = path.rsplit("/", 1)[1]
            op = self.ops.get(op_id)
            if op is None:
                return 404, {"error": {"code": "NotFound", "message": "no such operation"}}, {}
            outcome = self.async_outcome.get(op["kind"], "Succeeded")
            if op["resource"] not in self.resources:  # deleted meanwhile
                return 200, {"status": "Canceled", "error": {"code": "Canceled", "message": "deleted"}}, {}
            if outcome == "InProgress":
                return 200, {"status": "InProgress"}, {}
            if outcome == "Failed":
                return 200, {"status": "Failed", "error": {"code": "AllocationFailed",
                                                           "message": "no capacity for this size"}}, {}
            self.resources[op["resource"]]["properties"]["provisioningState"] = "Succeeded"
            return 200, {"status": "Succeeded"}, {}
        if low.endswith("/resources") and s.method == "GET":
            rg = low.split("/resources")[0]
            items = [
                {"id": rid, "name": r["name"], "type": r["type"], "tags": r.get("tags", {})}
                for rid, r in self.resources.items()
                if rid.lower().startswith(rg + "/")
            ]
            return 200, {"value": items}, {}
        key = low
        if low.endswith("/instanceview"):
            key = low[: -len("/instanceview")]
            r = self.resources.get(key)
            if r is None:
                return 404, {"error": {"code": "ResourceNotFound", "message": "not found"}}, {}
            power = r.get("_power", "running")
            return 200, {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": f"PowerState/{power}"}]}, {}
        if low.endswith("/start") and s.method == "POST":
            key = low[: -len("/start")]
            r = self.resources.get(key)
            if r is None:
                return 404, {"error": {"code": "ResourceNotFound", "message": "not found"}}, {}
            r["_power"] = "running"
            return 200, None, {}
        kind = self._kind(path)
        if s.method == "PUT":
            body = dict(s.body or {})
            props = dict(body.get("properties", {}))
            async_put = kind in self.async_kinds
            props["provisioningState"] = "Creating" if async_put else "Succeeded"
            if kind == "vm":
                props["vmId"] = "6f0e9c1a-0000-4000-8000-00000000abcd"
            if kind == "ip":
                props["ipAddress"] = "203.0.113.7"
            name = path.rsplit("/", 1)[1]
            res = {
                "id": path,
                "name": name,
                "type": "/".join(path.split("/providers/", 1)[1].split("/")[:2]),
                "location": body.get("location"),
                "tags": body.get("tags", {}),
                "properties": props,
            }
            self.resources[key] = res
            if kind == "vm":  # the OS disk comes into being with the VM
                disk = props["storageProfile"]["osDisk"]["name"]
                dpath = path.rsplit("/providers/", 1)[0] + f"/providers/Microsoft.Compute/disks/{disk}"
                self.resources[dpath.lower()] = {"id": dpath, "name": disk, "type": "Microsoft.Compute/disks",
                                                 "tags": {}, "properties": {}}
            if async_put:
                op_id = uuid.uuid4().hex
                self.ops[op_id] = {"kind": kind, "resource": key}
                base = path.rsplit("/providers/", 1)[0]
                op_url = (f"https://management.azure.com{base}/providers/Microsoft.Compute/locations/x/"
                          f"operations/{op_id}?api-version=2024-07-01")
                return 201, res, {"Azure-AsyncOperation": op_url}
            return 200, res, {}
        if s.method == "GET":
            r = self.resources.get(key)
            if r is None:
                return 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}, {}
            return 200, {k: v for k, v in r.items() if not k.startswith("_")}, {}
        if s.method == "DELETE":
            if key in self.resources:
                del self.resources[key]
                return 200, None, {}
            return 204, None, {}
        return 400, {"error": {"code": "BadRequest", "message": f"unexpected {s.method} {path}"}}, {}

    # ------------------------------------------------------------------ helpers
    def transport(self) -> Any:
        from azure.core.pipeline.transport import RequestsTransport

        session = requests.Session()
        session.mount("https://", self)
        return RequestsTransport(session=session, session_owner=False)

    def mutations(self) -> list[Sent]:
        return [s for s in self.sent if s.method in ("PUT", "DELETE", "POST") and "/operations/" not in s.path]
