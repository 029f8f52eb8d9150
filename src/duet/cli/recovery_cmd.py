"""`duet controller recovery keygen|set|show|shares` and `duet controller recover`:
recovery of the state key K from M-of-N shares (docs/continuity.md)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from duet.cli.options import ControllerOpt, ExpectOpt, KeyOpt, StateDirOpt, TrustOpt
from duet.cli.output import JsonOpt, OutputOpt, emit, resolve
from duet.cli.private_file import write_private
from duet.client.config import DEFAULT_URL


def _holder_key(path: Path, m: ModuleType) -> str:
    """A holder's public key file: the base64 line `keygen` writes (FILE.pub)."""
    from duet.ledger import recovery as rc

    try:
        text = path.read_text().strip()
    except OSError as exc:
        m.fail("invalid_request", f"cannot read {path}: {exc.strerror}", 2)
    return rc.public_b64(rc.public_from_b64(text))


def _write_shares(body: dict[str, Any], out_dir: Path) -> list[Path]:
    from duet.ledger import recovery as rc

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for s in body.get("shares", []):
        sf = rc.ShareFile(controller_id=str(body["controller_id"]), controller_key=str(body["controller_key"]),
                          owner_keys=tuple(body["owner_keys"]), index=int(s["index"]),
                          threshold=int(body["threshold"]), holder_key=str(s["holder_key"]),
                          state_key_sha256=str(body["state_key_sha256"]),
                          sealed=base64.b64decode(s["sealed"]))
        path = out_dir / f"share-{sf.index}.json"
        write_private(path, sf.to_json().encode())
        written.append(path)
    return written


def register(controller_app: typer.Typer, m: ModuleType) -> None:
    """Add the commands to `duet controller`; `m` is `duet.cli.main` (its guard, owner
    client and output), handed in because importing it from here would be circular."""
    guard: Callable[[Callable[..., None]], Callable[..., None]] = m._guard
    app = typer.Typer(no_args_is_help=True,
                      help="Recovery of the state key from M-of-N holders' shares (off by default).")
    controller_app.add_typer(app, name="recovery")

    @app.command("keygen")
    @guard
    def recovery_keygen(
        out_path: Annotated[Path, typer.Option("--out", help="Holder's private key file to write.")],
        force: bool = typer.Option(False, help="Overwrite existing files."),
        output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Make a recovery-key holder's X25519 key pair: OUT (PEM, 0600) and OUT.pub (base64)."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from duet.ledger import recovery as rc

        fmt = resolve(output, as_json)
        pub_path = Path(str(out_path) + ".pub")
        if not force and (out_path.exists() or pub_path.exists()):
            m.fail("exists", f"{out_path} or {pub_path} exists; pass --force to overwrite")
        key = X25519PrivateKey.generate()
        write_private(out_path, rc.private_pem(key))
        pub = rc.public_b64(key.public_key())
        pub_path.write_text(pub + "\n")
        emit({"public_key": pub, "private_key": str(out_path), "public_key_file": str(pub_path)}, fmt, ids=pub,
             render=lambda: m.out.print(f"wrote {out_path} and {pub_path}; holder key {pub}", markup=False))

    @app.command("set")
    @guard
    def recovery_set(
        threshold: Annotated[int, typer.Option("--threshold", min=0, max=16,
                                               help="M: shares needed to rebuild the state key.")] = 0,
        holder: Annotated[list[Path] | None, typer.Option(
            "--holder", help="A holder's public key file (keygen's OUT.pub); repeatable, in share order.")] = None,
        none: bool = typer.Option(False, "--none", help="Turn recovery off."),
        out_dir: Annotated[Path | None, typer.Option("--out", help="Write each holder's encrypted share here.")] = None,
        controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"), expect: ExpectOpt = None,
        trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
        output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Sign and submit controller.recovery: split the state key M of N to the holders (or --none)."""
        from duet.ledger.operations import Op, check_args

        fmt = resolve(output, as_json)
        holders = [_holder_key(p, m) for p in holder or []]
        if none and (holders or threshold):
            m.fail("invalid_request", "--none takes no --holder or --threshold", 2)
        if not none and not holders:
            m.fail("invalid_request", "give --threshold M and one --holder per recovery key, or --none", 2)
        args = {"threshold": 0 if none else threshold, "holders": holders}
        try:
            check_args(Op.CONTROLLER_RECOVERY, args)
        except ValueError as exc:
            m.fail("invalid_request", str(exc), 2)
        owner = m._owner(controller, key, expect, trust_simulated, state_dir)
        res = dict(owner.submit(Op.CONTROLLER_RECOVERY, args))
        written = _write_shares(res, out_dir) if out_dir is not None and res.get("shares") else []
        pol = res["recovery"]
        public = {"recovery": pol, "controller_log_index": res.get("controller_log_index"),
                  "share_files": [str(p) for p in written]}
        emit(public, fmt, ids=str(res.get("controller_log_index")), render=lambda: m.out.print(
            (f"recovery: {pol['threshold']} of {len(pol['holders'])} holders" if pol["enabled"] else "recovery: off")
            + f" (controller log entry {res.get('controller_log_index')})"
            + (f"; shares written to {out_dir}" if written else ""), markup=False))

    @app.command("show")
    @guard
    def recovery_show(
        controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
        state_dir: StateDirOpt = None, output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Show the recovery policy in force, as the controller log records it."""
        from duet.client.api import RECOVERY_PATH

        fmt = resolve(output, as_json)
        with m.Http(controller, trust_simulated=m._trust(trust_simulated) or None, state_dir=state_dir) as http:
            body = http.get_json(RECOVERY_PATH)
        emit(body, fmt, ids=str(body.get("threshold")), render=lambda: m.out.print(
            f"recovery: {body['threshold']} of {len(body['holders'])} holders (controller log entry "
            f"{body['policy_index']}, state key commitment {str(body['state_key_sha256'])[:16]}…)"
            if body.get("enabled") else "recovery: off", markup=False))

    @app.command("shares")
    @guard
    def recovery_shares(
        out_dir: Annotated[Path, typer.Option("--out", help="Directory for the share files (one per holder).")],
        controller: ControllerOpt = DEFAULT_URL, key: KeyOpt = Path("owner.key"), expect: ExpectOpt = None,
        trust_simulated: TrustOpt = False, state_dir: StateDirOpt = None,
    ) -> None:
        """Fetch the current encrypted shares (owner only) and write one file per holder."""
        from duet.client.api import RECOVERY_SHARES_PATH
        from duet.client.http import parse_json
        from duet.ledger import recovery as rc

        owner = m._owner(controller, key, expect, trust_simulated, state_dir)
        proof = rc.shares_proof(owner.key, owner.controller_id, int(time.time()))
        body = parse_json(owner.http.read(RECOVERY_SHARES_PATH, headers={"Duet-Owner-Proof": proof}),
                          "recovery shares", 16)
        written = _write_shares(body, out_dir)
        m.out.print(f"{len(written)} share file(s) written to {out_dir} (threshold {body['threshold']})",
                    markup=False)

    @controller_app.command("recover")
    @guard
    def controller_recover(
        share: Annotated[Path, typer.Option("--share", help="This holder's share file (from the owner).")],
        holder_key: Annotated[Path, typer.Option("--holder-key", help="This holder's private key (keygen's OUT).")],
        owner_key: Annotated[list[str] | None, typer.Option(
            "--owner-key", help="Also trust approvals signed by this owner key (base64); repeatable.")] = None,
        controller: ControllerOpt = DEFAULT_URL, trust_simulated: TrustOpt = False,
        output: OutputOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """As a recovery-key holder: check the recovering enclave's quote against the owner's approved
        builds, then hand it this share (re-encrypted to its attested key)."""
        from duet.client.recovery import recover
        from duet.ledger import recovery as rc

        fmt = resolve(output, as_json)
        try:
            sf = rc.ShareFile.from_json(share.read_text(), str(share))
            hk = rc.load_private(holder_key.read_bytes(), str(holder_key))
        except OSError as exc:
            m.fail("invalid_request", f"cannot read {exc.filename}: {exc.strerror}", 2)
        res = recover(controller, sf, hk, trust_simulated=m._trust(trust_simulated),
                      extra_owner_keys=owner_key or ())
        sim = " (SIMULATED)" if res.get("simulated") else ""
        emit(res, fmt, ids=json.dumps(res.get("received")), render=lambda: m.out.print(
            f"share {sf.index} handed to build {str(res['mrenclave'])[:16]}…{sim}; "
            + ("the controller rebuilt its state key" if res.get("recovered")
               else f"{res.get('needed')} more share(s) needed"), markup=False))
