"""What report data binds: the formulas the controller, the guest and every verifier share.

Kept in one place because they are wire formats (docs/wire-formats.md): a controller and a verifier
that computed them differently would fail closed on every report. The guest-side script
(`duet.cvm.guest.collect`, `report_client.py`) repeats the CVM formula in its own words
because it runs on the guest with only the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from .errors import ParseError

CONTROLLER_QUOTE_DOMAIN = b"duet-controller-v1"


def controller_report_data(public_key_raw: bytes, nonce: bytes) -> bytes:
    """The controller quote's report data: SHA-512("duet-controller-v1" ‖ key ‖ nonce)
    fills the 64-byte field exactly and binds the asker's nonce to the controller key."""
    return hashlib.sha512(CONTROLLER_QUOTE_DOMAIN + public_key_raw + nonce).digest()


def ssh_key_blob(line: str) -> bytes:
    """The SSH wire-format public key: the base64 field of an OpenSSH key line."""
    parts = line.split()
    if len(parts) < 2:
        raise ParseError("not an OpenSSH public key line")
    try:
        return base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("the OpenSSH public key is not valid base64") from None


def cvm_report_data(nonce: bytes, host_key_line: str) -> bytes:
    """A CVM report's data: SHA-512(nonce ‖ the guest's own SSH host key blob), so the
    evidence names the machine the controller's SSH session is connected to."""
    return hashlib.sha512(nonce + ssh_key_blob(host_key_line)).digest()


def tdx_mrconfigid(host_data: bytes) -> bytes:
    """A TD's MRCONFIGID naming its instance: the controller's 32-byte per-CVM value
    (SNP's HOST_DATA) followed by 16 zero bytes, as the host launches it."""
    if len(host_data) != 32:
        raise ParseError("the per-CVM host data is 32 bytes")
    return host_data + bytes(16)


def mrconfigid_for(host_data_hex: str) -> bytes:
    """TDX MRCONFIGID (48 bytes) carrying the controller's 32-byte per-CVM value, zero-padded."""
    return tdx_mrconfigid(bytes.fromhex(host_data_hex))


def instance_value_for(binding: str, *, host_data: str | None, instance_id: str | None) -> str | None:
    """The value a CVM's evidence must carry for its instance binding, as lowercase hex
    (or the VM id): HOST_DATA is the per-CVM value itself, MRCONFIGID that value
    zero-padded to 48 bytes, the VM id the instance the controller created."""
    if binding == "host_data":
        return host_data.lower() if host_data else None
    if binding == "mrconfigid":
        return mrconfigid_for(host_data).hex() if host_data else None
    if binding == "vm_id":
        return instance_id.lower() if instance_id else None
    return None
