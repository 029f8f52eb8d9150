"""Tear down every local CVM under a directory (demo and test clean-up).

Local CVMs deliberately outlive the controller process, so that a crashed controller
finds them again; whoever owns a throw-away data dir removes them with this."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


def delete_all_local(base: Path) -> None:
    if not base.is_dir():
        return
    from duet.cvm.local import LocalProvider

    provider = LocalProvider(base)

    async def run() -> None:
        for d in sorted(base.iterdir()):
            if d.is_dir():
                try:
                    await provider.delete(d.name)
                except Exception as exc:  # best effort: clean up as much as possible
                    print(f"duet: could not delete local CVM {d.name}: {exc}", file=sys.stderr)

    asyncio.run(run())
