"""Verification benchmark: a full `duet verify` of a large CVM log, then an incremental
one after a few new entries. Prints one JSON object.

    .venv/bin/python bench/verify.py                      # 10^5 entries
    .venv/bin/python bench/verify.py --entries 1000000    # 10^6 entries

The log is an honest life (tests/logbuilder.py: create, provision, SIMULATED SEV-SNP
evidence, in-service) followed by a `health` action every minute of log time (intent,
command, result: three entries each; the log starts far enough in the past that its
newest entry is now, so that intents' iats and entry times are what a controller writes
and the verifier's nonce window works as in life), generated in batches (the generator
holds one batch, never the log), written straight into a LedgerStore and served over real
HTTP by a small read-only server here that answers the controller's read routes the way
`controller/app.py` does (pages of at most 1,000 entries and 3 MiB, proofs from the
store), signed with the log's controller key and quoted by a SIMULATED SGX platform.

`cache_bytes` is the size of the replay state the full run saved (the CVM log's and the
controller log's): what a verification holds besides the page in flight, which must not
grow with the log. Times are wall-clock (`seconds`, the ratio the issue names) and the
CPU time of the verifying process (`cpu_seconds`, steadier on a shared machine).

Each verification runs in a fresh subprocess (`duet.client.verify.verify`, as `duet
verify` calls it), so that its peak memory (VmHWM: the interpreter, its imports and
everything the run held) is its own. Targets (issue 16): the second run at least 20x
faster than the first; the first's peak memory under 200 MB at 10^5 and at 10^6 entries,
and the same at both (within noise).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import rfc8785

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from duet.attestation import SimulatedSnp  # noqa: E402
from duet.ledger import entries, keys  # noqa: E402
from duet.ledger.checkpoint import Checkpoint, sign_checkpoint  # noqa: E402
from duet.ledger.note import Signer  # noqa: E402
from duet.ledger.store import LedgerStore  # noqa: E402
from duet.tee.base import controller_report_data  # noqa: E402
from duet.tee.simulated import SimulatedTee  # noqa: E402
from logbuilder import CVM_ID, LogBuilder  # noqa: E402

MAX_PAGE = 1000
MAX_PAGE_BYTES = 3 << 20
CONTROLLER_LOG = "controller"
HEALTH = "uptime; df -h . | tail -n 1"


MINUTE = 60.0
_OUT = b" 12:00:00 up 42 days,  1 user,  load average: 0.00\n/dev/vda1  20G  3.1G  16G  17% /\n"


class Health:
    """`health` actions, one a minute of log time, as encoded entries: the log's clock and
    its next index are all it keeps. Each entry is one canonical encoding (made once by
    `entries.encode`, which validates it) with its time, indices, iat and nonce put in, and
    each intent is signed afresh: canonical JSON of an object with the same keys differs
    only in those values."""

    _T = "2000-01-01T00:00:00.000000Z"
    _I, _C, _IAT = 777777777771, 777777777772, 777777777773

    def __init__(self, b: LogBuilder, size: int, start: float) -> None:
        self.b, self.size, self.t = b, size, start
        kid = keys.key_id(b.owner.public_key())
        self.header = _b64url(rfc8785.dumps({"alg": "EdDSA", "kid": kid, "typ": "duet-intent+jws"}))
        self.payload = rfc8785.dumps({"v": 1, "op": "cvm.action", "aud": b.controller_id, "args": {"name": "health"},
                                      "nonce": "bench-health-ZZZZZZZZZZZZ", "iat": self._IAT, "cvm": CVM_ID})
        jws = self._sign(0, 0)
        self.intent_tpl = entries.encode({"v": 1, "type": "intent", "time": self._T, "jws": jws, "op": "cvm.action",
                                          "kid": kid}).replace(jws.encode(), b"\0JWS\0")
        self.command_tpl = entries.encode({"v": 1, "type": "command", "time": self._T, "command": HEALTH,
                                           "intent_index": self._I, "timeout_s": 60.0, "action": "health"})
        self.result_tpl = entries.encode({
            "v": 1, "type": "result", "time": self._T, "command_index": self._C, "exit_status": 0,
            "duration_ms": 12.0, "stdout": _OUT.decode(), "stdout_encoding": "utf-8", "stdout_bytes": len(_OUT),
            "stdout_sha256": hashlib.sha256(_OUT).hexdigest(), "stdout_truncated": False, "stderr": "",
            "stderr_encoding": "utf-8", "stderr_bytes": 0, "stderr_sha256": hashlib.sha256(b"").hexdigest(),
            "stderr_truncated": False})

    def _sign(self, iat: int, n: int) -> str:
        payload = self.payload.replace(b"%d" % self._IAT, b"%d" % iat).replace(b"ZZZZZZZZZZZZ", b"%012d" % n)
        signing_input = self.header + "." + _b64url(payload)
        return signing_input + "." + _b64url(self.b.owner.sign(signing_input.encode()))

    def _time(self) -> bytes:
        return datetime.fromtimestamp(self.t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()

    def intent(self) -> bytes:
        self.t += MINUTE
        jws = self._sign(int(self.t), self.size)
        self.size += 1
        return self.intent_tpl.replace(self._T.encode(), self._time()).replace(b"\0JWS\0", jws.encode())

    def action(self) -> list[bytes]:
        it = self.size
        out = [self.intent()]
        when = self._time()
        out.append(self.command_tpl.replace(self._T.encode(), when).replace(b"%d" % self._I, b"%d" % it))
        out.append(self.result_tpl.replace(self._T.encode(), when).replace(b"%d" % self._C, b"%d" % (it + 1)))
        self.size += 2
        return out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def build(store: LedgerStore, b: LogBuilder, n: int) -> Health:
    """Append an honest life of about `n` entries to `store`, in batches; return the
    generator, which goes on where the log ends."""
    b.honest_life()
    store.create_log(CVM_ID)
    store.create_log(CONTROLLER_LOG)
    store.append_batch({CONTROLLER_LOG: [entries.encode({
        "v": 1, "type": "owner_keys", "keys": [keys.public_b64(b.owner.public_key())],
        "time": b.entries[0]["time"]})]})
    store.append_batch({CVM_ID: [entries.encode(e) for e in b.entries]})
    health = Health(b, len(b.entries), b.now())
    while health.size + 3 <= n:
        batch: list[bytes] = []
        while len(batch) < 3000 and health.size + 3 <= n:
            batch += health.action()
        store.append_batch({CVM_ID: batch})
    return health


def append_ten(store: LedgerStore, health: Health) -> None:
    store.append_batch({CVM_ID: [e for _ in range(3) for e in health.action()] + [health.intent()]})


class Served:
    """The controller's read routes over a store (what a verifier fetches)."""

    def __init__(self, store: LedgerStore, b: LogBuilder, tee_dir: Path) -> None:
        self.store = store
        self.key = b.controller
        self.cid = b.controller_id
        self.tee = SimulatedTee(tee_dir)
        self.lock = threading.Lock()

    def answer(self, path: str, q: dict[str, str]) -> tuple[int, str, bytes]:
        if path == "/v1/controller":
            return self._json({"controller_id": self.cid, "public_key": keys.public_b64(self.key.public_key()),
                               "tee": "simulated", "simulated": True, "version": "bench",
                               "measurement": self.tee.measurement()})
        if path == "/v1/controller/quote":
            raw = keys.raw_public(self.key.public_key())
            quote = self.tee.quote(controller_report_data(raw, bytes.fromhex(q["nonce"])))
            assert quote.simulated_root_ca is not None
            return self._json({"tee": "simulated", "simulated": True, "quote": base64.b64encode(quote.quote).decode(),
                               "collateral": quote.collateral, "nonce": q["nonce"],
                               "public_key": base64.b64encode(raw).decode(),
                               "simulated_root_ca": base64.b64encode(quote.simulated_root_ca).decode()})
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "controller", "log"]:
            log, rest = CONTROLLER_LOG, parts[3:]
        elif parts[:2] == ["v1", "cvms"] and len(parts) >= 4:
            log, rest = parts[2], parts[3:]
        else:
            return 404, "application/json", b'{"error":{"code":"not_found","message":"no such route"}}'
        with self.lock:
            head = self.store.tree_head(log)
            if rest == ["checkpoint"]:
                cp = Checkpoint(origin=f"duet/{self.cid}/{log}", size=head.size, root_hash=head.root_hash)
                return 200, "text/plain", sign_checkpoint(cp, Signer(f"duet/{self.cid}", self.key)).encode()
            if rest == ["entries"]:
                start, end = int(q.get("start", 0)), int(q.get("end", head.size))
                stop = min(end, head.size, start + MAX_PAGE)
                leaves = self.store.leaves_page(log, start, stop, MAX_PAGE_BYTES)
                body = b'{"tree_size":%d,"entries":[' % head.size + b",".join(
                    b'{"index":%d,"leaf":"%s"}' % (start + i, base64.b64encode(leaf))
                    for i, leaf in enumerate(leaves)) + b"]}"
                return 200, "application/json", body
            if rest == ["proofs", "consistency"]:
                proof = self.store.consistency_proof(log, int(q["old"]), int(q["new"]))
                return self._json({"hashes": [base64.b64encode(h).decode() for h in proof]})
        return 404, "application/json", b'{"error":{"code":"not_found","message":"no such route"}}'

    @staticmethod
    def _json(obj: Any) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(obj).encode()


def serve(served: Served) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, ctype, body = served.answer(url.path, {k: v[0] for k, v in parse_qs(url.query).items()})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, so it
    starts afresh at exec; ru_maxrss (the fallback off Linux) would also count the
    parent's memory at fork time on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str, state: Path, full: bool) -> None:
    """One verification, as `duet verify` runs it; prints its figures."""
    from duet.client.config import Limits
    from duet.client.http import Http
    from duet.client.verify import verify

    limits = Limits(max_entries=10_000_000, max_total_bytes=16 << 30, budget=7200.0)
    t0, c0 = time.perf_counter(), time.process_time()
    with Http(url, trust_simulated=True, limits=limits) as http:
        report, _ = verify(http, CVM_ID, trust_simulated=True, state_dir=state, full=full)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": time.process_time() - c0, "ok": report.ok,
        "size": report.checkpoint.get("size"),
        "fetched": report.checkpoint.get("fetched"),
        "failed": {c.name: c.detail for c in report.checks if not c.ok},
        "peak_mb": peak_rss_mb(),
    }))


def run_child(url: str, state: Path, full: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", url, "--state", str(state)] + (["--full"] if full else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=7200)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench(n: int, work: Path) -> dict[str, Any]:
    snp = SimulatedSnp.load_or_create(work / "snp")
    b = LogBuilder(snp, offset=-(max(0, (n - 30) // 3) + 30) * MINUTE)  # the newest entry about now
    store = LedgerStore(work / "ledger.sqlite")
    t0 = time.perf_counter()
    health = build(store, b, n)
    built = time.perf_counter() - t0
    server = serve(Served(store, b, work / "tee"))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        first = run_child(url, work / "user")
        cache_bytes = sum(f.stat().st_size for f in (work / "user" / "verify-cache").iterdir())
        append_ten(store, health)
        second = run_child(url, work / "user")
    finally:
        server.shutdown()
        server.server_close()
        store.close()
    size = first["size"]
    return {
        "entries": size,
        "build_seconds": round(built, 2),
        "full": {"seconds": round(first["seconds"], 3), "entries_per_s": round(size / first["seconds"]),
                 "cpu_seconds": round(first["cpu_seconds"], 2),
                 "entries_per_cpu_s": round(size / max(first["cpu_seconds"], 1e-9)),
                 "peak_mb": round(first["peak_mb"], 1), "fetched": first["fetched"], "ok": first["ok"],
                 "failed": first["failed"], "cache_bytes": cache_bytes},
        "incremental": {"seconds": round(second["seconds"], 3), "cpu_seconds": round(second["cpu_seconds"], 3),
                        "new_entries": second["size"] - size,
                        "fetched": second["fetched"], "peak_mb": round(second["peak_mb"], 1), "ok": second["ok"],
                        "failed": second["failed"]},
        "ratio": round(first["seconds"] / second["seconds"], 1),
        "cpu_ratio": round(first["cpu_seconds"] / max(second["cpu_seconds"], 1e-9), 1),
        "targets": {"ratio": ">= 20", "full_peak_mb": "< 200"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.state), args.full)
        return
    with tempfile.TemporaryDirectory(prefix="duet-bench-verify-") as d:
        print(json.dumps(bench(args.entries, Path(d)), indent=1))


if __name__ == "__main__":
    main()
