"""Fresh names for the tensors and nodes a pass adds to a graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken``; it is added to ``taken``."""
    candidate, suffix = base, 1
    while candidate in taken:
        candidate, suffix = f"{base}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


class FreshNames:
    """Names no tensor or node of ``graph`` has yet: ``names("scale")`` -> ``"scale"``, then ``"scale_1"``."""

    def __init__(self, graph: gs.Graph, prefix: str = "") -> None:
        self.taken = set(graph.tensors()) | {node.name for node in graph.nodes}
        self.prefix = prefix

    def __call__(self, base: str) -> str:
        return fresh_name(f"{self.prefix}{base}", self.taken)
