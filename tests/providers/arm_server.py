"""The fake ARM (tests/providers/fake_arm.py) and an Entra ID token endpoint behind a real
HTTPS server on 127.0.0.1, for a controller in another process: its azure-mgmt-* clients
and azure-identity's `ClientSecretCredential` reach it through the provider's settings
(`arm_endpoint`, `authority_host`, `ca_pem`), set by intent, not through a transport hook.

The server's certificate is issued by a throwaway test CA (`ca_pem`), for the IP address
127.0.0.1. The token endpoint answers `client_credentials` grants only for the one client
secret it was given, with a token derived from it; the fake ARM then sees that token.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fake_arm import FakeArm


def token_for(secret: str) -> str:
    return "tok-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def _tls(directory: Path) -> tuple[str, Path, Path]:
    """(CA PEM, server cert file, server key file) for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duet test ARM CA (TEST ONLY)")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode(), directory / "server.pem", directory / "server.key"


class ArmServer:
    def __init__(self, arm: FakeArm, *, tenant: str, client_id: str, client_secret: str) -> None:
        self.arm, self.tenant, self.client_id = arm, tenant, client_id
        self._secret = client_secret
        self.token = token_for(client_secret)
        #: (path, grant_type, client_id, whether the secret was right); never the secret itself.
        self.token_requests: list[tuple[str, str, str, bool]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="duet-arm-"))
        self.ca_pem, cert, key = _tls(self._dir)
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(cert, key)
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def _entra(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]] | None:
        base = f"{self.url}/{self.tenant}"
        if method == "GET" and path == f"/{self.tenant}/v2.0/.well-known/openid-configuration":
            return 200, {"token_endpoint": f"{base}/oauth2/v2.0/token", "issuer": f"{base}/v2.0",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                         "end_session_endpoint": f"{base}/oauth2/v2.0/logout"}
        if method == "POST" and path == f"/{self.tenant}/oauth2/v2.0/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            ok = form.get("client_id") == self.client_id and form.get("client_secret") == self._secret
            self.token_requests.append((path, form.get("grant_type", ""), form.get("client_id", ""), ok))
            if not ok or form.get("grant_type") != "client_credentials":
                return 401, {"error": "invalid_client", "error_description": "AADSTS7000215: invalid client secret"}
            return 200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600,
                         "access_token": self.token}
        return None

    def start(self) -> ArmServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                entra = server._entra(self.command, path, body)
                if entra is not None:
                    status, doc = entra
                    self._send(status, {"Content-Type": "application/json"}, json.dumps(doc).encode())
                    return
                prepared = requests.Request(self.command, server.url + self.path, data=body or None,
                                            headers={k: v for k, v in self.headers.items()}).prepare()
                resp = server.arm.send(prepared)
                content = resp.raw.read()
                headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
                self._send(resp.status_code, headers, content)

            def _send(self, status: int, headers: dict[str, str], content: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = self._ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
