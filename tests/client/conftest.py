"""One honest controller life, recorded once per session and then served by the
malicious-controller double (`evil_controller.py`) with the real key."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from evil_controller import EvilController, Recorded, read_recorded

from duet.ledger import entries, keys
from helpers import ControllerProc


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    base = tmp_path_factory.mktemp("recorded")
    os.chmod(base, 0o755)
    owner_key = keys.Ed25519PrivateKey.generate()
    c = ControllerProc(data=base / "data", owner_key=owner_key).start()
    try:
        owner = c.owner()
        cvm = owner.create("local")["id"]
        owner.run(cvm, "echo setting up")
        owner.mode(cvm, "in-service")
        owner.mode(cvm, "in-update")
        owner.run(cvm, "id -u")  # outside the users' allowed list below
        owner.mode(cvm, "in-service")
        owner.http.close()
    finally:
        c.kill()
        from duet.cvm.cleanup import delete_all_local

        delete_all_local(c.data / "cvms")
    rec = read_recorded(c.data, cvm, owner_key)
    log = rec.decoded()
    cmds = [i for i, e in enumerate(log) if e["type"] == "command" and not e.get("builtin")]
    # honest: the first in-service entry after "echo setting up" (everything allowed so far)
    rec.marks["honest"] = next(i for i, e in enumerate(log) if e["type"] == "mode" and e["mode"] == "in-service") + 1
    # just after the result of "echo setting up" (in-update, one owner command so far)
    rec.marks["first_result"] = next(i for i, e in enumerate(log)
                                     if e["type"] == "result" and e["command_index"] == cmds[0]) + 1
    rec.marks["outside_command"] = cmds[-1]
    assert entries.decode(rec.leaves[cmds[-1]])["command"] == "id -u"
    yield rec


@pytest.fixture
def evil(recorded: Recorded) -> EvilController:
    return EvilController(recorded)
