"""The recovery policy's endpoints on a running controller (controller/recovery.py).

`GET /v1/controller/recovery`: the policy in force, as the controller log has it (public).
`GET /v1/controller/recovery/shares`: the encrypted shares, to an owner only (header
`Duet-Owner-Proof`, ledger/recovery.py): they are never logged and never served to
anyone else, since a stranger who kept a ciphertext could open it the day a holder's key
leaks."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request

from duet.controller import recovery
from duet.controller.errors import InvalidRequest
from duet.controller.service import Controller
from duet.ledger import recovery as rc


def add_recovery_routes(app: FastAPI, controller: Controller) -> None:
    @app.get("/v1/controller/recovery")
    async def recovery_policy() -> dict[str, Any]:
        controller._check_controller_log()
        return recovery.show(controller)

    @app.get("/v1/controller/recovery/shares")
    async def recovery_shares(request: Request) -> dict[str, Any]:
        controller._check_controller_log()
        proof = request.headers.get("duet-owner-proof")
        if not proof:
            raise InvalidRequest("the encrypted shares are served to an owner only: send Duet-Owner-Proof")
        rc.check_shares_proof(proof, controller.controller_id, controller._owner_keys(), int(time.time()))
        return recovery.shares_view(controller)
