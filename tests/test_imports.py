"""The shape of the host: no import cycle among surgeon's modules, counting every import (at module level, under
``TYPE_CHECKING`` and inside functions), so each module can be read and tested on top of the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import surgeon

PACKAGE = Path(surgeon.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The ``surgeon.*`` modules ``path`` imports anywhere in its text (``from surgeon import x`` counts as
    ``surgeon.x`` when x is a module, else as ``surgeon``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("surgeon.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "surgeon":
                found |= {f"surgeon.{alias.name}" if (PACKAGE / f"{alias.name}.py").exists() else "surgeon"
                          for alias in node.names}
            elif node.module.startswith("surgeon."):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {f"surgeon.{path.stem}": path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    modules["surgeon"] = PACKAGE / "__init__.py"
    return {name: imported_modules(path) & set(modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_host_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
