"""A stand-in for a PCCS (Intel's Provisioning Certificate Caching Service) on 127.0.0.1,
serving a SIMULATED TDX platform's collateral (duet.attestation.simulated.tdx) in the PCCS
v4 API's shape, which is what `dcap_qvl.get_collateral(pccs_url, quote)` reads:

- `GET /sgx/certification/v4/pckcrl?ca=processor|platform[&encoding=der]`: the PCK CRL
  (DER with `encoding=der`, else the hex of its DER),
  its issuer chain in the `SGX-PCK-CRL-Issuer-Chain` header (URL-encoded PEM);
- `GET /sgx/certification/v4/rootcacrl`: the root CA CRL (hex of its DER);
- `GET /tdx/certification/v4/tcb?fmspc=...`: `{"tcbInfo": ..., "signature": hex}` with the
  `TCB-Info-Issuer-Chain` header;
- `GET /tdx/certification/v4/qe/identity`: `{"enclaveIdentity": ..., "signature": hex}`
  with the `SGX-Enclave-Identity-Issuer-Chain` header.

The signed JSON bodies are served byte for byte as signed. `tamper` changes one byte of
the TCB info (a PCCS, or a host in the way, serving altered collateral). Every request is
recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit


class FakePccs:
    def __init__(self, collateral: dict[str, Any]) -> None:
        self.collateral = collateral
        self.tamper = False
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        c = self.collateral
        route = urlsplit(path).path
        if route == "/sgx/certification/v4/pckcrl":
            crl = str(c["pck_crl"])
            body = bytes.fromhex(crl) if "encoding=der" in urlsplit(path).query else crl.encode()
            return 200, {"SGX-PCK-CRL-Issuer-Chain": quote(c["pck_crl_issuer_chain"])}, body
        if route == "/sgx/certification/v4/rootcacrl":
            return 200, {}, str(c["root_ca_crl"]).encode()
        if route == "/tdx/certification/v4/tcb":
            tcb_info = str(c["tcb_info"])
            if self.tamper:  # one byte of the signed TCB info, still valid JSON
                tcb_info = tcb_info.replace('"tcbEvaluationDataNumber":', '"tcbEvaluationDataNumber":1', 1) \
                    if '"tcbEvaluationDataNumber":' in tcb_info else tcb_info.replace("UpToDate", "UpToDatf", 1)
            body = '{"tcbInfo":' + tcb_info + ',"signature":"' + str(c["tcb_info_signature"]) + '"}'
            return 200, {"TCB-Info-Issuer-Chain": quote(c["tcb_info_issuer_chain"])}, body.encode()
        if route == "/tdx/certification/v4/qe/identity":
            body = '{"enclaveIdentity":' + str(c["qe_identity"]) + ',"signature":"' + \
                str(c["qe_identity_signature"]) + '"}'
            return 200, {"SGX-Enclave-Identity-Issuer-Chain": quote(c["qe_identity_issuer_chain"])}, body.encode()
        return 404, {}, json.dumps({"error": "not found"}).encode()

    def start(self) -> FakePccs:
        pccs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pccs.requests.append(self.path)
                status, headers, body = pccs._answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
