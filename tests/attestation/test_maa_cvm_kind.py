"""MAA tokens as CVM evidence (`azure-snp-maa`, `azure-tdx-maa`), through the one registry
both the controller and `duet verify` run (`cvm_kinds.verify_evidence`).

Tokens are signed by a test key (`maa_helpers.FakeMaa`); the verification path is the real
one. A token counts only under an MAA key and instance the verifier pins, never under a
key the evidence or the token's own header brings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from maa_helpers import ISSUER, MEAS, MRTD, VM_ID, FakeMaa, b64u

from duet.attestation import cvm_kinds
from duet.attestation.azure.maa import key_fingerprint
from duet.attestation.binding import cvm_report_data
from duet.attestation.errors import (
    AttestationError,
    BindingError,
    ChainInvalid,
    SignatureInvalid,
    TokenExpired,
    WrongKind,
)
from duet.attestation.validate import Expectations, validate

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
NONCE = bytes(range(32))
RD = cvm_report_data(NONCE, HOST_KEY)
KINDS = ("azure-snp-maa", "azure-tdx-maa")


@pytest.fixture(scope="module")
def maa() -> FakeMaa:
    return FakeMaa()


def entry(token: str, kind: str = "azure-snp-maa", *, nonce: bytes = NONCE,
          logged_jwks: dict[str, Any] | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"kind": kind, "nonce": nonce.hex(), "evidence": base64.b64encode(token.encode()).decode()}
    if logged_jwks is not None:
        e["collateral"] = {"jwks": logged_jwks, "maa_url": ISSUER}
    return e


def pins(maa: FakeMaa, **kw: Any) -> cvm_kinds.Trust:
    kw.setdefault("issuer", ISSUER)
    if "jwks" not in kw and "key_sha256" not in kw:
        kw["jwks"] = maa.jwks()
    return cvm_kinds.Trust(maa=cvm_kinds.MaaPins(**kw))


def verify(e: dict[str, Any], trust: cvm_kinds.Trust, *, now: datetime | None = None,
           binding: str = "vm_id") -> cvm_kinds.Verified:
    return cvm_kinds.verify_evidence(e, host_key=HOST_KEY, now=now or datetime.now(UTC), trust=trust,
                                     binding=binding, instance_id=VM_ID)


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_under_pinned_keys_verifies_and_maps_to_the_same_claims(maa: FakeMaa, kind: str) -> None:
    v = verify(entry(maa.token(kind, RD), kind), pins(maa))
    assert v.kind == kind and not v.simulated and "MAA" in v.label
    r = v.report
    assert r.vm_id == VM_ID and r.user_data == RD.hex() and r.issuer == ISSUER
    assert r.signing_key_sha256 == key_fingerprint(maa.key.public_key())
    claims = cvm_kinds.spec_of(kind).claims(r)
    assert claims["vm_id"] == VM_ID
    if kind == "azure-snp-maa":
        assert claims["measurement"] == MEAS
        good = Expectations(kind=kind, measurement=MEAS, min_tcb={"bootloader": 3, "snp": 8, "microcode": 115},
                            no_debug=True, maa_issuer=ISSUER, maa_jwks=maa.jwks(), vm_id=VM_ID)
        assert validate(r, good) == []
        bad = Expectations(measurement="ef" * 48, min_tcb={"snp": 9})
        assert {f.field for f in validate(r, bad)} == {"measurement", "reported_tcb.snp"}
    else:
        assert claims["mrtd"] == MRTD
        good = Expectations(kind=kind, mrtd=MRTD, no_debug=True, accepted_tcb_statuses=["UpToDate"])
        assert validate(r, good) == []
        assert [f.field for f in validate(r, Expectations(rtmr0="11" * 48))] == ["rtmr0"]
    # A user who asked for the direct vTPM path is never satisfied by MAA.
    direct = "azure-snp" if kind == "azure-snp-maa" else "azure-tdx"
    assert [f.field for f in validate(r, Expectations(kind=direct))] == ["kind"]


def test_no_pins_no_trust(maa: FakeMaa) -> None:
    e = entry(maa.token("azure-snp-maa", RD), logged_jwks=maa.jwks())
    with pytest.raises(ChainInvalid, match=r"maa_jwks or cvm\.maa_signing_keys"):
        verify(e, cvm_kinds.Trust())  # the JWKS logged beside the token is not a pin
    with pytest.raises(ChainInvalid, match="maa_issuer"):
        verify(e, pins(maa, issuer=None))


def test_keys_pinned_by_fingerprint_take_their_material_from_the_logged_jwks(maa: FakeMaa) -> None:
    fp = key_fingerprint(maa.key.public_key())
    token = maa.token("azure-snp-maa", RD)
    assert verify(entry(token, logged_jwks=maa.jwks()), pins(maa, key_sha256=(fp,))).report.vm_id == VM_ID
    # An attacker swaps the logged JWKS for its own key under the same kid and signs: not pinned.
    evil = FakeMaa(kid=maa.kid)
    forged = evil.token("azure-snp-maa", RD)
    with pytest.raises(ChainInvalid, match="none of the MAA signing keys"):
        verify(entry(forged, logged_jwks=evil.jwks()), pins(maa, key_sha256=(fp,)))
    # With a pinned JWKS too, a key must be both in it and pinned.
    with pytest.raises(ChainInvalid):
        verify(entry(token), pins(maa, jwks=evil.jwks(), key_sha256=(fp,)))


def test_wrong_key_is_refused(maa: FakeMaa) -> None:
    evil = FakeMaa(kid=maa.kid)
    with pytest.raises(SignatureInvalid):
        verify(entry(evil.token("azure-snp-maa", RD)), pins(maa))
    other_kid = FakeMaa(kid="another-key")
    with pytest.raises(ChainInvalid, match="has no key"):
        verify(entry(other_kid.token("azure-snp-maa", RD)), pins(maa))


def test_a_changed_claim_is_refused(maa: FakeMaa) -> None:
    h, p, s = maa.token("azure-snp-maa", RD).split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["x-ms-sevsnpvm-is-debuggable"] = True
    with pytest.raises(SignatureInvalid):
        verify(entry(f"{h}.{b64u(json.dumps(claims).encode())}.{s}"), pins(maa))


def test_expiry_is_judged_at_the_time_given(maa: FakeMaa) -> None:
    t = int(time.time())
    token = maa.token("azure-snp-maa", RD, now=t)
    assert verify(entry(token), pins(maa), now=datetime.fromtimestamp(t + 3600, UTC))
    with pytest.raises(TokenExpired):
        verify(entry(token), pins(maa), now=datetime.fromtimestamp(t, UTC) + timedelta(hours=8, seconds=1))


def test_a_token_over_another_challenge_is_refused(maa: FakeMaa) -> None:
    other = cvm_report_data(bytes(32), HOST_KEY)
    with pytest.raises(BindingError):
        verify(entry(maa.token("azure-snp-maa", other)), pins(maa))
    # The binding of this challenge to another host key (a relaying man in the middle).
    mitm = cvm_report_data(NONCE, "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + bytes(36)).decode())
    with pytest.raises(BindingError):
        verify(entry(maa.token("azure-snp-maa", mitm)), pins(maa))
    # user-data that merely begins with the binding is not the binding.
    with pytest.raises(BindingError):
        verify(entry(maa.token("azure-snp-maa", RD + b"\x01")), pins(maa))


def test_algorithm_confusion_is_refused(maa: FakeMaa) -> None:
    claims = maa.claims("azure-snp-maa", RD)
    body = b64u(json.dumps(claims).encode())
    none = f"{b64u(json.dumps({'alg': 'none', 'kid': maa.kid}).encode())}.{body}."
    with pytest.raises(AttestationError, match="alg"):
        verify(entry(none), pins(maa))
    # HS256 keyed with the public key's own bytes (the classic confusion).
    head = b64u(json.dumps({"alg": "HS256", "kid": maa.kid}).encode())
    secret = json.dumps(maa.jwk()).encode()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(SignatureInvalid, match="only RS256"):
        verify(entry(f"{head}.{body}.{b64u(mac)}"), pins(maa))


@pytest.mark.parametrize("where", ["jku", "x5c", "jwk"])
def test_a_key_named_in_the_tokens_own_header_is_never_used(maa: FakeMaa, where: str) -> None:
    evil = FakeMaa(kid="attacker")
    header: dict[str, Any] = {"alg": "RS256", "kid": "attacker"}
    header[where] = {"jku": "https://evil.example/certs", "x5c": ["MIIB"], "jwk": evil.jwk()}[where]
    forged = evil.sign(maa.claims("azure-snp-maa", RD), header=header)
    with pytest.raises(ChainInvalid, match="has no key 'attacker'"):
        verify(entry(forged), pins(maa))
    # ... and with the pinned key's kid in the header, the attacker's signature fails.
    header["kid"] = maa.kid
    with pytest.raises(SignatureInvalid):
        verify(entry(evil.sign(maa.claims("azure-snp-maa", RD), header=header)), pins(maa))


def test_issuer_kind_and_instance_are_checked(maa: FakeMaa) -> None:
    with pytest.raises(WrongKind, match="issued by"):
        verify(entry(maa.token("azure-snp-maa", RD)), pins(maa, issuer="https://other.weu.attest.azure.net"))
    with pytest.raises(WrongKind, match="expected azure-tdx-maa"):
        verify(entry(maa.token("azure-snp-maa", RD), "azure-tdx-maa"), pins(maa))
    with pytest.raises(BindingError, match="vm_id"):
        verify(entry(maa.token("azure-snp-maa", RD, vm_id="ffffffff-other-vm")), pins(maa))


def test_debug_is_reported_for_the_verifier_to_refuse(maa: FakeMaa) -> None:
    r = verify(entry(maa.token("azure-tdx-maa", RD, debug=True), "azure-tdx-maa"), pins(maa)).report
    assert r.debug is True
    assert [f.field for f in validate(r, Expectations(no_debug=True))] == ["debug"]


# -- the user's side: a CVM log whose evidence is MAA tokens -------------------------------


def _maa_log(maa: FakeMaa, kind: str = "azure-snp-maa") -> Any:
    from logbuilder import LogBuilder

    class MaaLog(LogBuilder):
        def evidence(self, purpose: str, intent_index: int, *, report_host_data: str | None = None,
                     link: bool = True, kind: str | None = None) -> int:
            nonce = self.evidence_nonce(intent_index)
            ci = self.command(f"collect-evidence {nonce.hex()}", intent_index, action="attest", builtin=True)
            rd = cvm_report_data(nonce, self.host_key)
            return self.add("evidence", kind=self.kind, purpose=purpose, nonce=nonce.hex(), command_index=ci,
                            evidence=base64.b64encode(maa.token(self.kind, rd).encode()).decode(),
                            report_data=rd.hex(), binds={}, collateral={"maa_url": ISSUER, "jwks": maa.jwks()})

    return MaaLog(None, provider="azure", tee="snp-maa", evidence_kind=kind,  # type: ignore[arg-type]
                  binding="vm_id").honest_life()


def _checks(log: Any, expect: Any) -> dict[str, Any]:
    from logbuilder import all_checks

    return all_checks(log.leaves(), controller_id=log.controller_id, controller_key=log.controller_key,
                      expect=expect, trust_simulated=False)


def test_duet_verify_takes_maa_keys_only_from_the_users_expectations(maa: FakeMaa, tmp_path: Any) -> None:
    from duet.client.errors import ClientError
    from duet.client.expectations import load_expectations

    log = _maa_log(maa)
    (tmp_path / "maa-certs.json").write_text(json.dumps(maa.jwks()))
    path = tmp_path / "expect.yaml"
    path.write_text(f"cvm:\n  tee: azure-snp-maa\n  maa_jwks: maa-certs.json\n  maa_issuer: {ISSUER}\n"
                    f"  measurement: '{MEAS}'\n  no_debug: true\n")
    checks = _checks(log, load_expectations(path))
    assert checks["evidence"].ok, checks["evidence"].detail
    assert checks["cvm_tee"].ok and checks["cvm_claims"].ok, (checks["cvm_tee"], checks["cvm_claims"])
    # No pins: the JWKS logged beside the tokens proves nothing, the evidence check fails.
    none = _checks(log, None)
    assert not none["evidence"].ok and "maa_jwks" in none["evidence"].detail
    # Another MAA's keys pinned: fails.
    (tmp_path / "maa-certs.json").write_text(json.dumps(FakeMaa(kid=maa.kid).jwks()))
    other = _checks(log, load_expectations(path))
    assert not other["evidence"].ok and "signature" in other["evidence"].detail
    # A user who asks for the direct vTPM path is not satisfied by MAA.
    (tmp_path / "maa-certs.json").write_text(json.dumps(maa.jwks()))
    path.write_text(path.read_text().replace("tee: azure-snp-maa", "tee: azure-snp"))
    assert not _checks(log, load_expectations(path))["cvm_tee"].ok
    # A missing or malformed JWKS file is one clear line.
    (tmp_path / "maa-certs.json").write_text("{")
    with pytest.raises(ClientError, match=r"maa_jwks: .* is not JSON"):
        load_expectations(path)
    (tmp_path / "maa-certs.json").write_text('{"keys": 3}')
    with pytest.raises(ClientError, match=r"cvm\.maa_jwks"):
        load_expectations(path)
