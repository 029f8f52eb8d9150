"""Offline bundles: one self-contained file a user can verify with no network at all.

A bundle holds the controller's identity, a quote over a nonce chosen by the exporter
(with its collateral), the signed checkpoint and every entry up to it; evidence
certificates already live in the entries. Verification runs the very same code as live
verification; only freshness differs (the quote's nonce is the exporter's, and the
evidence age is measured against the verifier's clock).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from pathlib import Path
from typing import Any

import rfc8785

from duet.client.http import ClientError, Http
from duet.client.verify import fetch_leaves

BUNDLE_VERSION = 1


#: Only what verification uses is kept, and the file is RFC 8785 canonical JSON, so no
#: byte of it can change without changing something that is checked.
CONTROLLER_FIELDS = ("controller_id", "public_key")
QUOTE_FIELDS = ("quote", "collateral", "simulated", "simulated_root_ca")
TOP_FIELDS = {"duet_bundle", "cvm", "controller", "nonce", "quote", "checkpoint", "entries"}


def export_bundle(http: Http, cvm: str) -> bytes:
    nonce = secrets.token_bytes(32)
    controller = http.get_json("/v1/controller")
    quote = http.get_json("/v1/controller/quote", nonce=nonce.hex())
    note = http.get_text(f"/v1/cvms/{cvm}/checkpoint")
    size = int(note.splitlines()[1])
    leaves = fetch_leaves(http, cvm, size)
    return rfc8785.dumps({
        "duet_bundle": BUNDLE_VERSION,
        "cvm": cvm,
        "controller": {k: controller[k] for k in CONTROLLER_FIELDS},
        "nonce": nonce.hex(),
        "quote": {k: quote[k] for k in QUOTE_FIELDS if k in quote},
        "checkpoint": note,
        "entries": [base64.b64encode(leaf).decode() for leaf in leaves],
    })


class BundleSource:
    live = False

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def load(cls, path: Path) -> BundleSource:
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except OSError as exc:
            raise ClientError("invalid_bundle", f"cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise ClientError("invalid_bundle", f"{path} is not JSON") from None
        if not isinstance(data, dict) or data.get("duet_bundle") != BUNDLE_VERSION:
            raise ClientError("invalid_bundle", f"{path} is not a duet bundle (version {BUNDLE_VERSION})")
        if set(data) != TOP_FIELDS or not isinstance(data.get("controller"), dict) \
                or set(data["controller"]) != set(CONTROLLER_FIELDS) \
                or not isinstance(data.get("quote"), dict) or not set(data["quote"]) <= set(QUOTE_FIELDS):
            raise ClientError("invalid_bundle", f"{path} has fields a duet bundle does not have")
        if rfc8785.dumps(data) != raw:
            raise ClientError("invalid_bundle", f"{path} is not in canonical form (RFC 8785): it was edited")
        for key, kind in (("cvm", str), ("controller", dict), ("nonce", str), ("quote", dict),
                          ("checkpoint", str), ("entries", list)):
            if not isinstance(data.get(key), kind):
                raise ClientError("invalid_bundle", f"bundle field {key!r} is missing or malformed")
        return cls(data)

    @property
    def cvm(self) -> str:
        return str(self.data["cvm"])

    def controller(self) -> dict[str, Any]:
        return dict(self.data["controller"])

    def quote(self, nonce: bytes | None) -> tuple[bytes, dict[str, Any]]:
        try:
            return bytes.fromhex(self.data["nonce"]), dict(self.data["quote"])
        except ValueError:
            raise ClientError("invalid_bundle", "bundle nonce is not hex") from None

    def checkpoint(self, cvm: str, shown: str | None = None) -> str:
        return str(self.data["checkpoint"])

    def leaves(self, cvm: str, size: int) -> list[bytes]:
        try:
            leaves = [base64.b64decode(e, validate=True) for e in self.data["entries"]]
        except (binascii.Error, ValueError, TypeError):
            raise ClientError("invalid_bundle", "bundle entries are not base64") from None
        if len(leaves) != size:
            raise ClientError("invalid_bundle", f"bundle has {len(leaves)} entries, its checkpoint says {size}")
        return leaves

    def consistency(self, cvm: str, old: int, new: int) -> list[bytes]:
        raise ClientError("offline", "an offline bundle carries no proofs; consistency is checked from the leaves")
