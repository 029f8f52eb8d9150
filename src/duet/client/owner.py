"""The service owner's SDK: every operation is a signed intent (docs/invariants.md, invariant 4).

Intents go to an RA-TLS (`https://`) controller, or over plain HTTP to loopback only."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.client.api import ReadClient
from duet.client.config import DEFAULT_URL, check_owner_url
from duet.client.errors import ClientError
from duet.client.http import Http
from duet.client.results import RunResult
from duet.ledger.intent import sign_intent
from duet.ledger.operations import Op


class OwnerClient:
    def __init__(self, key: Ed25519PrivateKey, url: str = DEFAULT_URL, *, http: Http | None = None) -> None:
        self.key = key
        check_owner_url(http.url if http is not None else url)
        self.http = http or Http(url)
        self.api = ReadClient(self.http)
        self._aud: str | None = None

    @property
    def controller_id(self) -> str:
        if self._aud is None:
            cid = self.api.controller().get("controller_id")
            if not isinstance(cid, str):
                raise ClientError("bad_response", "the controller names no controller id")
            self._aud = cid
        return self._aud

    def sign(self, op: str, args: dict[str, Any], cvm: str | None = None) -> str:
        return sign_intent(self.key, op=op, aud=self.controller_id, args=args, cvm=cvm, iat=int(time.time()))

    def submit(self, op: str, args: dict[str, Any], cvm: str | None = None) -> Any:
        return self.api.submit_intent(self.sign(op, args, cvm))

    def create(self, provider: str = "local", *, name: str | None = None, tee: str | None = None,
               spec: dict[str, Any] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"provider": provider}
        if name:
            args["name"] = name
        if tee:
            args["tee"] = tee
        if spec:
            args["spec"] = spec
        return dict(self.submit(Op.CREATE, args)["cvm"])

    def run(self, cvm: str, command: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"command": command}
        if timeout_s is not None:
            args["timeout_s"] = timeout_s
        return dict(self.submit(Op.RUN, args, cvm))

    def exec(self, cvm: str, command: str, *, timeout_s: float | None = None) -> RunResult:
        """`run`, as a typed result with stdout and stderr as bytes."""
        return RunResult.from_response(cvm, self.run(cvm, command, timeout_s=timeout_s))

    def mode(self, cvm: str, mode: str) -> dict[str, Any]:
        return dict(self.submit(Op.MODE, {"mode": mode}, cvm)["cvm"])

    def action(self, cvm: str, name: str) -> dict[str, Any]:
        return dict(self.submit(Op.ACTION, {"name": name}, cvm))

    def delete(self, cvm: str) -> dict[str, Any]:
        return dict(self.submit(Op.DELETE, {}, cvm)["cvm"])

    def set_policy(self, cvm: str, policy: str) -> dict[str, Any]:
        return dict(self.submit(Op.POLICY_SET, {"policy": policy}, cvm)["cvm"])

    def set_owner_keys(self, keys_b64: list[str]) -> dict[str, Any]:
        return dict(self.submit(Op.OWNER_KEYS, {"keys": keys_b64}))

    def set_providers(self, providers: dict[str, dict[str, Any]],
                      control_plane_recheck_s: int | None = None) -> dict[str, Any]:
        """Replace the providers the controller drives and their non-secret settings."""
        args: dict[str, Any] = {"providers": providers}
        if control_plane_recheck_s is not None:
            args["control_plane_recheck_s"] = control_plane_recheck_s
        return dict(self.submit(Op.PROVIDERS_SET, args))

    def set_credentials(self, provider: str, plaintext: bytes) -> dict[str, Any]:
        """Seal `plaintext` (a credentials file) to the controller's credentials key, which
        its attested identity key endorses, and send the sealed bytes beside a signed
        intent carrying only their digest. Over RA-TLS the identity key is the one the
        handshake attested; the endorsement ties the recipient key to it."""
        import hashlib

        from duet.ledger import credentials as sealing
        from duet.ledger import keys

        info = self.api.controller()
        cid = str(info.get("controller_id"))
        try:
            identity = keys.public_from_b64(str(info.get("public_key")))
        except Exception:
            raise ClientError("bad_response", "the controller's public key is malformed") from None
        if keys.key_id(identity) != cid or cid != self.controller_id:
            raise ClientError("bad_response", "the controller id is not the hash of its public key")
        recipient = sealing.check_endorsement(info.get("credentials_key"), controller_id=cid, controller_key=identity)
        sealed = sealing.seal(recipient, plaintext, controller_id=cid, provider=provider)
        jws = self.sign(Op.CREDENTIALS_SET, {"provider": provider,
                                              "ciphertext_sha256": hashlib.sha256(sealed).hexdigest(),
                                              "recipient_key_id": sealing.recipient_key_id(recipient)})
        return dict(self.api.submit_intent(jws, sealed))
