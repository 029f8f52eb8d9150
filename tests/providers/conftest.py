from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))

from provider_helpers import openssh_public


@pytest.fixture
def controller_key() -> str:
    return openssh_public(Ed25519PrivateKey.generate()) + " duet-controller"
