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

    def approve_build(self, *, mrenclave: str | None = None, mrsigner: str | None = None,
                      isv_prod_id: int | None = None, min_isv_svn: int | None = None) -> dict[str, Any]:
        """`controller.approve`: a build that may take over this controller (docs/continuity.md)."""
        args: dict[str, Any] = {k: v for k, v in {"mrenclave": mrenclave, "mrsigner": mrsigner,
                                                  "isv_prod_id": isv_prod_id, "min_isv_svn": min_isv_svn}.items()
                                if v is not None}
        return dict(self.submit(Op.CONTROLLER_APPROVE, args))

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
