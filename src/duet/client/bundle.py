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
import re
from pathlib import Path
from typing import Any

import rfc8785

from duet.client.api import ReadClient
from duet.client.errors import ClientError
from duet.client.http import Http
from duet.ledger.errors import LedgerError
from duet.ledger.note import parse_note

BUNDLE_VERSION = 1


#: Only what verification uses is kept, and the file is RFC 8785 canonical JSON, so no
#: byte of it can change without changing something that is checked.
CONTROLLER_FIELDS = ("controller_id", "public_key")
QUOTE_FIELDS = ("quote", "collateral", "simulated", "simulated_root_ca")
TOP_FIELDS = {"duet_bundle", "cvm", "controller", "nonce", "quote", "checkpoint", "entries"}


#: The collateral fields dcap-qvl reads; anything else would ride along unchecked.
COLLATERAL_FIELDS = frozenset({
    "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
    "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
})


HEX_COLLATERAL = frozenset({"root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"})


def _canonical_chain(chain: str) -> str | None:
    """A PEM chain in its one spelling (cryptography's PEM of each certificate, in order),
    or None if it is not a PEM chain. Text between or around the certificates (which a
    PEM reader skips) would otherwise ride along unchecked."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(chain.encode())
    except (ValueError, x509.InvalidVersion):
        return None
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _canonical_collateral(collateral: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in collateral.items():
        if k not in COLLATERAL_FIELDS:
            continue
        if isinstance(v, str) and k.endswith("_issuer_chain"):
            v = _canonical_chain(v) or v
        elif isinstance(v, str) and k in HEX_COLLATERAL:
            v = v.lower()
        out[k] = v
    return out


def _controller_lines_only(note: str, controller_id: str) -> str:
    """Keep only the controller's signature line(s): the bundle holds nothing that its
    verifier does not check (the verifier then demands that each line verifies)."""
    try:
        text, sigs = parse_note(note)
    except LedgerError as exc:
        raise ClientError("bad_response", f"the controller's checkpoint is malformed: {exc}") from None
    return text + "\n" + "".join(s.line() for s in sigs if s.name == f"duet/{controller_id}")


def export_bundle(http: Http, cvm: str) -> bytes:
    api = ReadClient(http)
    http.start_run()
    controller = api.controller()
    nonce, quote = api.quote()
    try:
        cid = str(controller["controller_id"])
        note = _controller_lines_only(api.checkpoint(cvm), cid)
        size = int(note.splitlines()[1])
        collateral = quote["collateral"]
    except (KeyError, ValueError, IndexError):
        raise ClientError("bad_response", "the controller's identity, quote or checkpoint is malformed") from None
    if not isinstance(collateral, dict):
        raise ClientError("bad_response", "the quote's collateral is not an object")
    quote = {**quote, "collateral": _canonical_collateral(collateral)}
    leaves = api.leaves(cvm, size)
    return rfc8785.dumps({
        "duet_bundle": BUNDLE_VERSION,
        "cvm": cvm,
        "controller": {k: controller[k] for k in CONTROLLER_FIELDS},
        "nonce": nonce.hex(),
        "quote": {k: quote[k] for k in QUOTE_FIELDS if k in quote},
        "checkpoint": note,
        "entries": [base64.b64encode(leaf).decode() for leaf in leaves],
    })


def _canonical_b64(value: Any) -> bool:
    """Exactly one spelling per byte string: no other base64 text decodes to it."""
    if not isinstance(value, str):
        return False
    try:
        return base64.b64encode(base64.b64decode(value, validate=True)).decode() == value
    except (binascii.Error, ValueError):
        return False


def _canonical_problem(data: dict[str, Any]) -> str | None:
    """Every byte of a bundle is either checked by verification or has one spelling:
    padding (extra collateral fields, alternative base64, upper-case hex) is refused."""
    quote = data["quote"]
    if not re.fullmatch(r"[0-9a-f]{64}", data["nonce"]):
        return "the nonce is not 32 bytes of lowercase hex"
    if not isinstance(quote.get("collateral"), dict) or not set(quote["collateral"]) <= COLLATERAL_FIELDS:
        return "the quote's collateral has fields a quote's collateral does not have"
    for k, v in quote["collateral"].items():
        if not isinstance(v, str):
            return "the quote's collateral fields are not text"
        if k.endswith("_issuer_chain") and _canonical_chain(v) != v:
            return f"collateral {k} is not exactly its PEM certificates"
        if k in HEX_COLLATERAL and not re.fullmatch(r"(?:[0-9a-f]{2})*", v):
            return f"collateral {k} is not lowercase hex"
    if quote.get("simulated") not in (None, True, False):
        return "the quote's 'simulated' flag is not a boolean"
    for name in ("quote", "simulated_root_ca"):
        if name in quote and not _canonical_b64(quote[name]):
            return f"quote.{name} is not canonical base64"
    if not _canonical_b64(data["controller"].get("public_key")):
        return "the controller key is not canonical base64"
    if not all(_canonical_b64(e) for e in data["entries"]):
        return "an entry is not canonical base64"
    return None


class BundleSource:
    live = False
    where = "bundle"

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @classmethod
    def load(cls, path: Path) -> BundleSource:
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except OSError as exc:
            raise ClientError("invalid_bundle", f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, RecursionError):
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
        problem = _canonical_problem(data)
        if problem:
            raise ClientError("invalid_bundle", f"{path}: {problem}")
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
