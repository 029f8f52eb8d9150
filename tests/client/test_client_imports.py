"""The client package's import graph has no cycle (module-level and deferred imports
alike): errors and config sit at the bottom, the read client above the HTTP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import duet.client

CLIENT = Path(duet.client.__file__).parent


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in CLIENT.glob("*.py"):
        name = f"duet.client.{path.stem}"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("duet.client"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("duet.client"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_in_the_client() -> None:
    graph = _graph()
    assert "duet.client.api" in graph and "duet.client.errors" in graph and "duet.client.config" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_errors_and_config_are_at_the_bottom() -> None:
    graph = _graph()
    assert graph["duet.client.errors"] == set()
    assert graph["duet.client.config"] <= {"duet.client.errors"}


def test_v1_paths_are_spelled_only_in_the_read_client() -> None:
    src = CLIENT.parent
    spelled = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                     if '"/v1/' in p.read_text() or "f\"/v1/" in p.read_text()
                     if not p.is_relative_to(src / "controller"))
    assert spelled == ["client/api.py"], spelled
