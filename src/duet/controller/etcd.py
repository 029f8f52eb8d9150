"""A small client for etcd's v3 JSON gateway (`/v3/kv/*`, `/v3/lease/*`), over httpx.

Why not a client library: the gRPC `etcd3` client is unmaintained. `etcd3gw` (2.7, the
JSON-gateway client) covers these calls, but its `transaction()` takes the gateway's raw
JSON dict, so for the one call that matters (the fenced append) it saves nothing, while
it adds requests, futurist and pbr to the enclave image, where every wheel is a measured
trusted file (deploy/gramine). httpx is already a dependency, and each call here is one
POST of a documented JSON body with errors mapped to typed ones.

Keys and values are bytes (base64 on the wire); int64 fields arrive as JSON strings.
Nothing read here is trusted: callers check what they read (`controller/replicated.py`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from duet.ledger.errors import StorageError


class EtcdUnavailable(StorageError):
    """etcd could not be reached or answered with an error: nothing is assumed written."""

    code = "store_unavailable"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


def parse_store_url(url: str) -> tuple[str, int]:
    """`etcd://HOST:PORT` -> (host, port). Only the address: what is accepted from the
    store is decided by verification, never by where it lives."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise ValueError(f"--store must be etcd://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


# --- transaction building blocks (the gateway's JSON form of etcdserverpb.Compare/RequestOp)


def compare_create(key: bytes, revision: int) -> dict[str, Any]:
    """The key exists and was created at `revision` (0: the key does not exist)."""
    return {"target": "CREATE", "key": _b64(key), "create_revision": str(revision), "result": "EQUAL"}


def compare_value(key: bytes, value: bytes) -> dict[str, Any]:
    return {"target": "VALUE", "key": _b64(key), "value": _b64(value), "result": "EQUAL"}


def compare_absent(key: bytes) -> dict[str, Any]:
    return {"target": "VERSION", "key": _b64(key), "version": "0", "result": "EQUAL"}


def put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


class EtcdClient:
    """One etcd endpoint. Thread-safe (httpx.Client is)."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.endpoint = f"{host}:{port}"
        self._http = httpx.Client(base_url=f"http://{host if ':' not in host else f'[{host}]'}:{port}/v3",
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(f"etcd at {self.endpoint} is unreachable: {type(exc).__name__}") from None
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if response.status_code != 200 or not isinstance(doc, dict):
            message = doc.get("message") or doc.get("error") if isinstance(doc, dict) else None
            raise EtcdUnavailable(f"etcd at {self.endpoint} answered {response.status_code}: "
                                  f"{str(message or 'no JSON body')[:200]}")
        if "error" in doc and path != "/lease/keepalive":
            raise EtcdUnavailable(f"etcd at {self.endpoint}: {str(doc['error'])[:200]}")
        return doc

    @staticmethod
    def _kv(raw: dict[str, Any]) -> KeyValue:
        return KeyValue(
            key=base64.b64decode(raw.get("key", "")),
            value=base64.b64decode(raw.get("value", "")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            version=int(raw.get("version", 0)),
            lease=int(raw.get("lease", 0)),
        )

    def get(self, key: bytes) -> KeyValue | None:
        doc = self._call("/kv/range", {"key": _b64(key)})
        kvs = doc.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: bytes, *, page: int = 512) -> list[KeyValue]:
        """Every key under `prefix`, in key order, read page by page at one revision (so
        the pages form one consistent snapshot)."""
        out: list[KeyValue] = []
        start, revision = prefix, 0
        end = prefix_end(prefix)
        while True:
            body: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end), "limit": str(page)}
            if revision:
                body["revision"] = str(revision)
            doc = self._call("/kv/range", body)
            revision = revision or int(doc.get("header", {}).get("revision", 0))
            kvs = [self._kv(raw) for raw in doc.get("kvs") or []]
            out.extend(kvs)
            if not doc.get("more") or not kvs:
                return out
            start = kvs[-1].key + b"\x00"

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        doc = self._call("/kv/put", put(key, value, lease)["request_put"])
        return int(doc.get("header", {}).get("revision", 0))

    def delete_prefix(self, prefix: bytes) -> None:
        self._call("/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})

    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> tuple[bool, int]:
        """Run a transaction; (whether every comparison held, the revision after it)."""
        doc = self._call("/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})
        return bool(doc.get("succeeded", False)), int(doc.get("header", {}).get("revision", 0))

    def lease_grant(self, ttl: int) -> int:
        doc = self._call("/lease/grant", {"TTL": str(ttl)})
        if doc.get("error") or "ID" not in doc:
            raise EtcdUnavailable(f"etcd at {self.endpoint} granted no lease")
        return int(doc["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Refresh a lease; its remaining TTL (0: the lease is gone, e.g. it expired)."""
        doc = self._call("/lease/keepalive", {"ID": str(lease)})
        result = doc.get("result")
        if not isinstance(result, dict):
            raise EtcdUnavailable(f"etcd at {self.endpoint} did not answer the lease keep-alive")
        return int(result.get("TTL", 0))

    def lease_revoke(self, lease: int) -> None:
        self._call("/lease/revoke", {"ID": str(lease)})
