"""The state key K: every secret the controller holds is encrypted under it.

One random 256-bit key K encrypts the controller's identity key and each CVM's SSH client
key (AES-256-GCM, the secret's name as associated data, so a blob cannot be moved to
another slot). K is what an approved successor receives at a handover
(controller/handover.py); the secrets themselves travel encrypted, inside the state file.

K is sealed locally by the TEE (tee/seal.py) so that a restart of the same build on the same
platform opens it without help. That seal is a convenience, never the only copy in the
design: a new build, a microcode update or the loss of the host each make it unreadable,
and K then comes from an instance that holds it (docs/continuity.md).

What is *not* under K: owner public keys, CVM records, the logs and the nonce table. None
is secret (the nonces of logged intents are in the logs themselves); their integrity rests
on the signed, witnessed logs, not on encryption.

Migration: a data dir written before K existed holds the controller key as plain PEM and
the client keys as plain OpenSSH private keys. At its first start with this code a fresh K
is made and sealed, and every plaintext secret is re-encrypted under it in place (logged
once, "upgraded"). From then on a plaintext secret in the state file is refused: the host
cannot slip one in.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from duet.controller.errors import ConfigError
from duet.tee.base import TeeBackend

if TYPE_CHECKING:
    from duet.controller.state import StateStore

log = logging.getLogger("duet.controller")

MAGIC = b"duet-k1\0"
KEY_LEN = 32
_NONCE = 12
#: Meta keys in the state file.
SEALED_META = "state_key_sealed"
#: Set once every secret of the data dir is under K: from then on plaintext is refused.
UPGRADED_META = "state_key_upgraded"
#: Set once the provider secrets of an older data dir are under K (then plaintext is refused).
SECRET_METAS_UPGRADED = "state_key_upgraded_secret_metas"  # noqa: S105 - a record name
CONTROLLER_KEY_META = "controller_key"
CONTROLLER_KEY_LABEL = "controller-key"


class StateKeyError(ConfigError):
    """A secret in the state file does not open under K (damaged, replaced, or plaintext
    where only ciphertext is allowed)."""

    code = "state_key_mismatch"


def client_key_label(cvm_id: str) -> str:
    return f"cvm-client-key:{cvm_id}"


class StateKey:
    """K, and the AEAD every secret at rest goes through. Never logged, never printed."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise ValueError("a state key is 32 bytes")
        self._raw = raw
        self._aead = AESGCM(raw)

    @classmethod
    def generate(cls) -> StateKey:
        return cls(os.urandom(KEY_LEN))

    def raw(self) -> bytes:
        """The key itself: only for sealing it and for handing it to an attested successor."""
        return self._raw

    def __repr__(self) -> str:
        return "StateKey(<secret>)"

    @staticmethod
    def is_encrypted(blob: bytes) -> bool:
        return blob.startswith(MAGIC)

    def encrypt(self, label: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, MAGIC + label.encode())

    def decrypt(self, label: str, blob: bytes) -> bytes:
        if not self.is_encrypted(blob):
            raise StateKeyError(f"{label} in the state file is not encrypted under the state key; refused")
        body = blob[len(MAGIC):]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], MAGIC + label.encode())
        except InvalidTag:
            raise StateKeyError(
                f"{label} in the state file does not open under this controller's state key "
                "(damaged, or taken from another controller)") from None


def seal_state_key(state: StateStore, tee: TeeBackend, key: StateKey) -> None:
    state.set_meta(SEALED_META, tee.seal(key.raw()))


def open_state_key(state: StateStore, tee: TeeBackend) -> StateKey:
    """K from the local seal; a data dir without one (first start, or written before K
    existed) gets a fresh K, and its plaintext secrets are encrypted under it. Raises
    `duet.tee.seal.SealUnreadable` when the seal exists but does not open here."""
    sealed = state.get_meta(SEALED_META)
    if sealed is not None:
        key = StateKey(tee.unseal(sealed))
    else:
        key = StateKey.generate()
        seal_state_key(state, tee, key)
    if state.get_meta(UPGRADED_META) is None:
        # Only a data dir that never finished this upgrade: afterwards a plaintext secret
        # in the state file is the host's doing, and is refused when read.
        upgrade_plaintext(state, key)
        state.set_meta(UPGRADED_META, b"1")
    if state.get_meta(SECRET_METAS_UPGRADED) is None:
        # Data dirs whose provider credentials (and their keys) were kept in the clear,
        # before they moved under K: once, then plaintext there is refused too.
        upgrade_secret_metas(state, key)
        state.set_meta(SECRET_METAS_UPGRADED, b"1")
    return key


def upgrade_secret_metas(state: StateStore, key: StateKey) -> None:
    from duet.controller.state import is_secret_meta, secret_meta_label

    upgraded = 0
    for name, value in state.metas():
        if is_secret_meta(name) and not StateKey.is_encrypted(value):
            state.set_meta(name, key.encrypt(secret_meta_label(name), value))
            upgraded += 1
    if upgraded:
        log.warning("upgraded the data dir: %d provider secret(s) re-encrypted under the state key", upgraded)


def upgrade_plaintext(state: StateStore, key: StateKey) -> None:
    """Encrypt, in place, the secrets of a data dir written before K existed."""
    upgraded = 0
    pem = state.get_meta(CONTROLLER_KEY_META)
    if pem is not None and not StateKey.is_encrypted(pem):
        state.set_meta(CONTROLLER_KEY_META, key.encrypt(CONTROLLER_KEY_LABEL, pem))
        upgraded += 1
    for cvm_id, blob in state.raw_client_keys():
        if not StateKey.is_encrypted(blob):
            state.set_raw_client_key(cvm_id, key.encrypt(client_key_label(cvm_id), blob))
            upgraded += 1
    if upgraded:
        log.warning("upgraded the data dir: %d secret(s) re-encrypted under the state key", upgraded)

