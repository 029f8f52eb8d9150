"""The service owner's SDK: every operation is a signed intent (docs/invariants.md, invariant 4).

Intents go to an RA-TLS (`https://`) controller, or over plain HTTP to loopback only.

Light to import (no httpx, no pydantic): `duet cvm run` uses this class over the standard
library's HTTP client (`duet/cli/lean.py`), so the HTTP client and the operation registry
are imported by the methods that need them, not here."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from duet.client.api import ReadClient
from duet.client.config import DEFAULT_URL, check_owner_url
from duet.client.errors import ClientError
from duet.client.results import RunResult
from duet.ledger import op_names
from duet.ledger.intent_sign import sign_intent

if TYPE_CHECKING:
    from duet.client.http import Http
    from duet.client.lean_http import LeanHttp

OnOutput = Callable[[str, bytes], None]


class OwnerClient:
    def __init__(self, key: Ed25519PrivateKey, url: str = DEFAULT_URL, *, http: Http | LeanHttp | None = None) -> None:
        self.key = key
        check_owner_url(http.url if http is not None else url)
        if http is None:
            from duet.client.http import Http as _Http

            http = _Http(url)
        self.http: Http | LeanHttp = http
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

    def submit(self, op: str, args: dict[str, Any], cvm: str | None = None, stdin: bytes | None = None) -> Any:
        return self.api.submit_intent(self.sign(op, args, cvm), stdin)

    def approve_build(self, *, mrenclave: str | None = None, mrsigner: str | None = None,
                      isv_prod_id: int | None = None, min_isv_svn: int | None = None) -> dict[str, Any]:
        """`controller.approve`: a build that may take over this controller (docs/continuity.md)."""
        from duet.ledger.operations import Op

        args: dict[str, Any] = {k: v for k, v in {"mrenclave": mrenclave, "mrsigner": mrsigner,
                                                  "isv_prod_id": isv_prod_id, "min_isv_svn": min_isv_svn}.items()
                                if v is not None}
        return dict(self.submit(Op.CONTROLLER_APPROVE, args))

    def create(self, provider: str = "local", *, name: str | None = None, tee: str | None = None,
               spec: dict[str, Any] | None = None, wait: bool = True) -> dict[str, Any]:
        """The new CVM, provisioned. With `wait=False`, the CVM as soon as the controller
        logged it (status `provisioning`); provisioning goes on in the controller, and
        `duet.cli.wait_ready` follows it to `ready`."""
        args: dict[str, Any] = {"provider": provider}
        if name:
            args["name"] = name
        if tee:
            args["tee"] = tee
        if spec:
            args["spec"] = spec
        if wait:
            return dict(self.submit(op_names.CREATE, args)["cvm"])
        from duet.client.streamed import consume

        res = consume(self.api.submit_streamed(self.sign(op_names.CREATE, args)), no_wait=True)
        cvm = res.get("cvm")
        if not isinstance(cvm, dict):
            raise ClientError("bad_response", "the controller's answer to a create names no CVM")
        return dict(cvm)

    @staticmethod
    def _run_args(command: str, timeout_s: float | None, stdin: bytes | None) -> dict[str, Any]:
        args: dict[str, Any] = {"command": command}
        if timeout_s is not None:
            args["timeout_s"] = timeout_s
        if stdin is not None:
            # The owner signs the digest; the bytes travel with the intent and are logged.
            args["stdin_sha256"] = hashlib.sha256(stdin).hexdigest()
        return args

    def run(self, cvm: str, command: str, *, timeout_s: float | None = None,
            stdin: bytes | None = None) -> dict[str, Any]:
        """Run and wait for the result. `stdin` (at most 512 KiB) is signed and logged
        whole: it is public, like the command."""
        return dict(self.submit(op_names.RUN, self._run_args(command, timeout_s, stdin), cvm, stdin))

    def run_streamed(self, cvm: str, command: str, *, timeout_s: float | None = None,
                     stdin: bytes | None = None, on_output: OnOutput | None = None,
                     wait: bool = True) -> dict[str, Any]:
        """`run`, with `on_output(stream, bytes)` called as the output is logged. With
        `wait=False`, returns `{"cvm", "command_index"}` as soon as the command is logged
        (follow it with `follow`)."""
        from duet.client.streamed import consume

        jws = self.sign(op_names.RUN, self._run_args(command, timeout_s, stdin), cvm)
        return consume(self.api.submit_streamed(jws, stdin), on_output, no_wait=not wait)

    def follow(self, cvm: str, command_index: int, on_output: OnOutput | None = None) -> dict[str, Any]:
        """Wait for a logged command's result, handing over its output as it is logged."""
        from duet.client.streamed import consume

        return consume(self.api.follow_command(cvm, command_index), on_output)

    def exec(self, cvm: str, command: str, *, timeout_s: float | None = None,
             stdin: bytes | None = None) -> RunResult:
        """`run`, as a typed result with stdout and stderr as bytes."""
        return RunResult.from_response(cvm, self.run(cvm, command, timeout_s=timeout_s, stdin=stdin))

    def mode(self, cvm: str, mode: str) -> dict[str, Any]:
        from duet.ledger.operations import Op

        return dict(self.submit(Op.MODE, {"mode": mode}, cvm)["cvm"])

    def action(self, cvm: str, name: str) -> dict[str, Any]:
        from duet.ledger.operations import Op

        return dict(self.submit(Op.ACTION, {"name": name}, cvm))

    def delete(self, cvm: str) -> dict[str, Any]:
        from duet.ledger.operations import Op

        return dict(self.submit(Op.DELETE, {}, cvm)["cvm"])

    def set_policy(self, cvm: str, policy: str) -> dict[str, Any]:
        from duet.ledger.operations import Op

        return dict(self.submit(Op.POLICY_SET, {"policy": policy}, cvm)["cvm"])

    def set_owner_keys(self, keys_b64: list[str]) -> dict[str, Any]:
        from duet.ledger.operations import Op

        return dict(self.submit(Op.OWNER_KEYS, {"keys": keys_b64}))

    def set_witnesses(self, witnesses: list[tuple[str, str]], quorum: int) -> dict[str, Any]:
        """`witnesses.set`: (vkey, url) of each witness of the controller log, and how many
        of them must answer at the controller's start-up."""
        from duet.ledger.operations import Op

        return dict(self.submit(Op.WITNESSES_SET, {
            "witnesses": [{"vkey": v, "url": u} for v, u in witnesses], "quorum": quorum}))

    def set_providers(self, providers: dict[str, dict[str, Any]],
                      control_plane_recheck_s: int | None = None) -> dict[str, Any]:
        """Replace the providers the controller drives and their non-secret settings."""
        from duet.ledger.operations import Op

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
        from duet.ledger.operations import Op

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
        return dict(self.api.submit_intent(jws, sealed=sealed))
