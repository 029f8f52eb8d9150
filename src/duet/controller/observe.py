"""What an operator sees of a running controller: access logs, Prometheus metrics, health.

Under SGX everything written here leaves the enclave for the host, which is an adversary and
may publish it. So access logs and metrics carry only what the host can see anyway on the
wire or in the public read API: the route template (never the raw path with its query),
the status code, the CVM id, the client address and timings. Never a command, output, JWS,
credential or CVM name. The CVM log is where content goes; this is for operating the box.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("duet.access")


class Metrics:
    """One registry per controller (not the process-global default), so tests and several
    apps in one process never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("duet_http_requests", "HTTP requests by route template and status code",
                                ["route", "code"], registry=self.registry)
        self.request_seconds = Histogram("duet_http_request_seconds", "HTTP request latency by route template",
                                         ["route"], registry=self.registry)
        self.command_seconds = Histogram(
            "duet_command_seconds", "Time from a command's durable log entry to its logged result",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry)
        self.append_seconds = Histogram(
            "duet_log_append_seconds", "Durable log append (one transaction, fsynced)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1), registry=self.registry)
        self.cvms = Gauge("duet_cvms", "CVMs by status and mode", ["status", "mode"], registry=self.registry)

    def exposition(self, cvm_states: list[tuple[str, str]]) -> tuple[bytes, str]:
        self.cvms.clear()
        counts: dict[tuple[str, str], int] = {}
        for key in cvm_states:
            counts[key] = counts.get(key, 0) + 1
        for (status, mode), n in counts.items():
            self.cvms.labels(status=status, mode=mode).set(n)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def configure_logging(fmt: str, level: str) -> None:
    """Access lines as JSON (one object per line, for log shippers) or as plain text."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("duet")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + "Z",
                               "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        else:
            doc["message"] = record.getMessage()
        return json.dumps(doc, separators=(",", ":"))


class ObserveMiddleware:
    """Counts and logs every HTTP request by its route template, after routing has run."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(route=template, code=str(status["code"])).inc()
            self.metrics.request_seconds.labels(route=template).observe(elapsed)
            client = scope.get("client") or ("?", 0)
            params = scope.get("path_params") or {}
            fields = {"method": scope.get("method"), "route": template, "code": status["code"],
                      "ms": round(elapsed * 1000, 3), "client": client[0]}
            if "cvm_id" in params:
                fields["cvm"] = str(params["cvm_id"])[:64]
            access_log.info("%s %s %s %.1fms", fields["method"], template, status["code"], elapsed * 1000,
                            extra={"fields": fields})
