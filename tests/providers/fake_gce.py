"""A recorded-shape Compute Engine REST API on 127.0.0.1, for the real google-cloud-compute
clients (pointed at it through `client_options.api_endpoint`, with injected google-auth
credentials). Every request is recorded with its parsed JSON body."""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google.auth.credentials

BASE = "/compute/v1/projects/"


class FakeGoogleCredentials(google.auth.credentials.Credentials):
    """What google.auth.default() would return in production."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = "fake-gcp-token-SECRET"


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGce:
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[Req] = field(default_factory=list)
    #: (method, path regex) -> (status, body): a one-shot HTTP failure
    fail: dict[tuple[str, str], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: operation outcome for instance inserts: "DONE", "ERROR" (done with an error) or "HANG"
    instance_insert: str = "DONE"
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGce:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _do(self) -> None:
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                req = Req(self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()),
                          json.loads(raw) if raw else None)
                with fake.lock:
                    fake.sent.append(req)
                    status, body = fake.route(req)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ behaviour
    def _op(self, project: str, zone: str | None, target: str, kind: str, outcome: str = "DONE") -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op: dict[str, Any] = {"kind": "compute#operation", "id": str(uuid.uuid4().int % 10**18), "name": name,
                              "operationType": kind, "targetLink": target,
                              "status": "RUNNING" if outcome != "DONE_NOW" else "DONE", "progress": 0}
        if zone:
            op["zone"] = f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}"
        self.ops[name] = {"op": op, "outcome": outcome}
        return op

    @staticmethod
    def _err(code: int, message: str) -> dict[str, Any]:
        return {"error": {"code": code, "message": message, "errors": [{"message": message, "reason": "notFound"
                                                                        if code == 404 else "invalid"}]}}

    def route(self, r: Req) -> tuple[int, Any]:
        for (method, pattern), answer in list(self.fail.items()):
            if r.method == method and re.search(pattern, r.path):
                del self.fail[(method, pattern)]
                return answer
        if not r.path.startswith(BASE):
            return 404, self._err(404, "unknown path")
        rest = r.path[len(BASE):].split("/")
        project = rest[0]
        tail = rest[1:]
        # operations
        if "operations" in tail and tail[-1] == "wait":
            entry = self.ops.get(tail[-2])
            if entry is None:
                return 404, self._err(404, "no such operation")
            op = dict(entry["op"])
            if entry["outcome"] == "HANG":
                return 200, op
            op["status"] = "DONE"
            op["progress"] = 100
            if entry["outcome"] == "ERROR":
                op["error"] = {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                                           "message": "no capacity for n2d-standard-2 in this zone"}]}
            return 200, op
        if tail[:2] == ["global", "firewalls"]:
            if r.method == "POST" and len(tail) == 2:
                name = r.body["name"]
                if name in self.firewalls:
                    return 409, self._err(409, "already exists")
                self.firewalls[name] = {**r.body, "id": str(uuid.uuid4().int % 10**18)}
                return 200, self._op(project, None, name, "insert")
            if r.method == "GET" and len(tail) == 2:
                return 200, {"kind": "compute#firewallList", "items": list(self.firewalls.values())}
            if r.method == "DELETE" and len(tail) == 3:
                if self.firewalls.pop(tail[2], None) is None:
                    return 404, self._err(404, f"firewall {tail[2]} not found")
                return 200, self._op(project, None, tail[2], "delete")
        if len(tail) >= 3 and tail[0] == "zones":
            zone = tail[1]
            coll = tail[2]
            if coll == "instances":
                if r.method == "POST" and len(tail) == 3:
                    body = r.body
                    inst = {**body, "id": "4815162342000001", "status": "RUNNING",
                            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}/"
                                        f"instances/{body['name']}"}
                    inst["networkInterfaces"] = [
                        {**nic, "networkIP": "10.128.0.5",
                         "accessConfigs": [{**ac, "natIP": "198.51.100.77"} for ac in nic.get("accessConfigs", [])]}
                        for nic in body.get("networkInterfaces", [])
                    ]
                    self.instances[body["name"]] = inst
                    disk = body["disks"][0]["initializeParams"]["diskName"]
                    self.disks[disk] = {"name": disk, "id": "1"}
                    return 200, self._op(project, zone, body["name"], "insert", self.instance_insert)
                if r.method == "GET" and len(tail) == 3:
                    return 200, {"items": list(self.instances.values())}
                name = tail[3] if len(tail) > 3 else ""
                if r.method == "GET":
                    inst = self.instances.get(name)
                    return (200, inst) if inst else (404, self._err(404, f"instance {name} not found"))
                if r.method == "DELETE":
                    inst = self.instances.pop(name, None)
                    if inst is None:
                        return 404, self._err(404, f"instance {name} not found")
                    for d in inst.get("disks", []):
                        if d.get("autoDelete"):
                            self.disks.pop(d["initializeParams"]["diskName"], None)
                    for entry in self.ops.values():  # a hanging insert ends when the instance goes
                        if entry["op"]["targetLink"] == name:
                            entry["outcome"] = "DONE"
                    return 200, self._op(project, zone, name, "delete")
                if r.method == "POST" and tail[-1] == "start":
                    inst = self.instances.get(name)
                    if inst is None:
                        return 404, self._err(404, f"instance {name} not found")
                    inst["status"] = "RUNNING"
                    return 200, self._op(project, zone, name, "start")
            if coll == "disks":
                if r.method == "GET" and len(tail) == 3:
                    return 200, {"items": list(self.disks.values())}
                if r.method == "DELETE":
                    if self.disks.pop(tail[3], None) is None:
                        return 404, self._err(404, f"disk {tail[3]} not found")
                    return 200, self._op(project, zone, tail[3], "delete")
        return 400, self._err(400, f"unexpected {r.method} {r.path}")

    def mutations(self) -> list[Req]:
        return [s for s in self.sent if s.method in ("POST", "DELETE") and not s.path.endswith("/wait")]
