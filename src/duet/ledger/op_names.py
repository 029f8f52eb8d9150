"""The few operation names and bounds the owner's lean command path (`duet cvm run`,
`duet/cli/lean.py`) needs, in a module that imports nothing: `duet.ledger.operations`
holds the whole registry, but its argument models bring in pydantic, which a new `duet`
process should not pay for to sign one `cvm.run` intent. `operations.Op` uses the same
strings (tests/cli/test_lean_cli.py checks that they agree)."""

from __future__ import annotations

RUN = "cvm.run"
CREATE = "cvm.create"
#: Largest stdin a `cvm.run` may carry (`duet cvm run -i`): it is logged whole, and its
#: base64 with the JWS stays under the controller's 1 MiB request body limit.
MAX_STDIN = 512 * 1024
