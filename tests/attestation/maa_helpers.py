"""A stand-in MAA instance for tests: an RSA key, its JWKS, RS256 tokens with the claims an
Azure CVM's token carries (sevsnpvm / tdxvm, x-ms-runtime with user-data and the VM id)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ISSUER = "https://duet-test.weu.attest.azure.net"
VM_ID = "0123456789abcdef"
MEAS = "ab" * 48
MRTD = "cd" * 48


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class FakeMaa:
    def __init__(self, *, kid: str = "duet-test-key", issuer: str = ISSUER) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = kid
        self.issuer = issuer

    def jwk(self) -> dict[str, Any]:
        pub = self.key.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "n": _int(pub.n), "e": _int(pub.e)}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def claims(self, kind: str, user_data: bytes, *, vm_id: str = VM_ID, now: int | None = None,
               debug: bool = False) -> dict[str, Any]:
        t = int(time.time()) if now is None else now
        runtime = {"user-data": user_data.hex().upper(), "vm-configuration": {"vmUniqueId": vm_id,
                                                                             "secure-boot": True}}
        c: dict[str, Any] = {"iss": self.issuer, "iat": t - 5, "nbf": t - 5, "exp": t + 8 * 3600,
                             "x-ms-runtime": runtime, "x-ms-ver": "1.0"}
        if kind == "azure-snp-maa":
            p = "x-ms-sevsnpvm-"
            c.update({"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-cvm",
                      p + "launchmeasurement": MEAS, p + "is-debuggable": debug, p + "bootloader-svn": 3,
                      p + "tee-svn": 0, p + "snpfw-svn": 8, p + "microcode-svn": 115, p + "vmpl": 0,
                      p + "hostdata": "00" * 32, p + "migration-allowed": False, p + "smt-allowed": True,
                      p + "guestsvn": 1})
        else:
            c.update({"x-ms-attestation-type": "tdxvm", "x-ms-compliance-status": "azure-compliant-cvm",
                      "tdx_mrtd": MRTD, "tdx_rtmr0": "00" * 48, "tdx_mrconfigid": "00" * 48,
                      "tdx_td_attributes_debug": debug, "attester_tcb_status": "UpToDate",
                      "attester_advisory_ids": []})
        return c

    def sign(self, claims: dict[str, Any], *, header: dict[str, Any] | None = None,
             key: rsa.RSAPrivateKey | None = None) -> str:
        h = header if header is not None else {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64u(json.dumps(h).encode())}.{b64u(json.dumps(claims).encode())}"
        sig = (key or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64u(sig)}"

    def token(self, kind: str, user_data: bytes, **kw: Any) -> str:
        return self.sign(self.claims(kind, user_data, **kw))
