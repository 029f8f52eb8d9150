"""A SIMULATED secure processor for local CVMs: AMD's PSP (SEV-SNP) or a TDX quoting path.

Real hardware signs with a key the guest never sees (SNP's VCEK, TDX's attestation key
behind the quoting enclave), and takes the measurement and the per-instance value (SNP
HOST_DATA, TDX MRCONFIGID) from the launch, not from the guest. This stand-in keeps both
properties: it runs host-side (in the process that owns the local provider), holds the
development keys, and serves each CVM on a Unix socket in that CVM's platform directory
that only the CVM's user may open. The guest supplies only the report data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from pathlib import Path

from duet.attestation import SimulatedSnp
from duet.attestation.binding import tdx_mrconfigid
from duet.attestation.simulated.tdx import SimulatedTdx, simulated_boot_log

MAX_REQUEST = 4096


class SimulatedPsp:
    def __init__(self, snp: SimulatedSnp, tdx: SimulatedTdx | None = None) -> None:
        self.snp = snp
        self.tdx = tdx
        self._servers: dict[str, asyncio.AbstractServer] = {}

    def sign(self, kind: str, report_data: bytes, *, measurement: bytes, host_data: bytes, policy: int) -> bytes:
        """An SNP report, or a TD quote whose MRTD is the launch measurement and whose
        MRCONFIGID carries the per-CVM value, as a host sets them at launch."""
        return self.sign_with_log(kind, report_data, measurement=measurement, host_data=host_data,
                                  policy=policy)[0]

    def sign_with_log(self, kind: str, report_data: bytes, *, measurement: bytes, host_data: bytes,
                      policy: int) -> tuple[bytes, bytes | None]:
        """`sign`, and for TDX the SIMULATED CC event log of the boot, whose replay gives the
        quote's RTMRs (as a TD's firmware leaves it in the CCEL table for the guest)."""
        if kind == "simulated-tdx":
            if self.tdx is None:
                raise ValueError("this platform has no simulated TDX")
            ccel, rtmrs = simulated_boot_log(measurement)
            r0, r1, r2, r3 = rtmrs
            quote = self.tdx.quote(report_data, mrtd=measurement, mrconfigid=tdx_mrconfigid(host_data),
                                   rtmrs=(r0, r1, r2, r3))
            return quote, ccel
        return self.snp.report(report_data, measurement=measurement, host_data=host_data, policy=policy), None

    async def serve(self, cvm_id: str, socket_path: Path, *, uid: int, measurement: bytes,
                    host_data: bytes, policy: int, kind: str = "simulated-snp") -> None:
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
                report, ccel = self.sign_with_log(kind, report_data, measurement=measurement,
                                                  host_data=host_data, policy=policy)
                reply = {"report": base64.b64encode(report).decode()}
                if ccel is not None:
                    reply["ccel"] = base64.b64encode(ccel).decode()
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
