"""A SIMULATED AMD Secure Processor for local CVMs.

Real SNP hardware signs reports with a VCEK the guest never sees, and takes the
measurement and HOST_DATA from the launch, not from the guest. This stand-in keeps
both properties: it runs host-side (in the process that owns the local provider),
holds the development VCEK, and serves each CVM on a Unix socket in that CVM's platform
directory that only the CVM's user may open. The guest supplies only the report data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from pathlib import Path

from duet.attestation import SimulatedSnp

MAX_REQUEST = 4096


class SimulatedPsp:
    def __init__(self, snp: SimulatedSnp) -> None:
        self.snp = snp
        self._servers: dict[str, asyncio.AbstractServer] = {}

    async def serve(self, cvm_id: str, socket_path: Path, *, uid: int, measurement: bytes,
                    host_data: bytes, policy: int) -> None:
        await self.stop(cvm_id)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                if len(line) > MAX_REQUEST:
                    raise ValueError("request too large")
                report_data = bytes.fromhex(json.loads(line)["report_data"])
                if len(report_data) != 64:
                    raise ValueError("report_data must be 64 bytes")
                report = self.snp.report(report_data, measurement=measurement, host_data=host_data,
                                         policy=policy)
                reply = {"report": base64.b64encode(report).decode()}
            except (TimeoutError, ValueError, KeyError, TypeError) as exc:
                reply = {"error": str(exc) or "bad request"}
            writer.write(json.dumps(reply).encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, path=str(socket_path))
        os.chmod(socket_path, 0o600)
        if os.geteuid() == 0:
            os.chown(socket_path, uid, -1)
        self._servers[cvm_id] = server

    def running(self, cvm_id: str) -> bool:
        server = self._servers.get(cvm_id)
        return server is not None and server.is_serving()

    async def stop(self, cvm_id: str) -> None:
        server = self._servers.pop(cvm_id, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
