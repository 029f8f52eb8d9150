"""The recovery policy's endpoints on a running controller (controller/recovery.py).

`GET /v1/controller/recovery`: the policy in force, as the controller log has it (public).
`GET /v1/controller/recovery/shares`: the encrypted shares, to an owner only (header
`Duet-Owner-Proof`, ledger/recovery.py): they are never logged and never served to
anyone else, since a stranger who kept a ciphertext could open it the day a holder's key
leaks.

`run_session` serves a recovering controller's own small API (the session and where
holders send their shares) until its state key is rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from duet.controller import errors, recovery
from duet.controller.handover_api import read_json_object
from duet.controller.service import Controller
from duet.ledger import keys
from duet.ledger import recovery as rc


def add_recovery_routes(app: FastAPI, controller: Controller) -> None:
    @app.get("/v1/controller/recovery")
    async def recovery_policy() -> dict[str, Any]:
        controller._check_controller_log()
        return recovery.show(controller)

    @app.get("/v1/controller/recovery/shares")
    async def recovery_shares(request: Request) -> dict[str, Any]:
        controller._check_controller_log()
        return recovery.shares_for_owner(controller, request.headers.get("duet-owner-proof"))


def run_session(session: recovery.RecoverySession, sock: Any, *, tls: bool, data_dir: Path) -> None:
    """Serve the recovery endpoints on `sock` until K is rebuilt (blocking)."""
    import uvicorn

    from duet.controller.app import error_response

    app = FastAPI(title="duet controller (recovering)")
    server: uvicorn.Server | None = None

    async def _typed(_: Request, exc: Exception) -> JSONResponse:
        return error_response(str(getattr(exc, "code", "invalid_request")), str(exc))

    for typed in (errors.DuetError, rc.RecoveryError):
        app.add_exception_handler(typed, _typed)

    @app.get("/v1/controller")
    async def info() -> dict[str, Any]:
        return {"recovering": True, "controller_id": session.controller_id,
                "message": "this controller is waiting for recovery shares (duet controller recover)"}

    @app.get("/v1/controller/recovery/session")
    async def get_session() -> dict[str, Any]:
        return session.info()

    @app.post("/v1/controller/recovery/session/share")
    async def post_share(request: Request) -> dict[str, Any]:
        body = await read_json_object(request, recovery.MAX_SHARE_REQUEST, "share request")
        answer = session.submit(body)
        if session.done.is_set() and server is not None:
            server.should_exit = True
        return answer

    if tls:
        from duet.tee import ratls

        # A throwaway identity: the holders rely on the quote over the session key, not on TLS.
        eph = keys.Ed25519PrivateKey.generate()
        certfile, keyfile = ratls.prepare(data_dir / "tls-recovery", eph, session.tee)
        config = ratls.uvicorn_config(app, host="", port=0, certfile=certfile, keyfile=keyfile,
                                      log_level="warning", access_log=False)
    else:
        config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not session.done.is_set():
        raise recovery.RecoveryImpossible("stopped before the state key was recovered")
