"""How opset_compat changes a node: the edits, the steps they make up, and the stand-in they plan on.

An ``Edit`` changes a node in place, adding what it needs through a graph
kit ``Builder``. Planning runs the edits of a node's steps on a ``Sketch``
of it with a builder without a graph, so the model stays untouched until
the plan is chosen; fitting then runs the same edits on the node itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_graphsurgeon as gs

from surgeon.graph import Builder, is_empty

Edit = Callable[[Any, Builder], None]  # edits a node (or a Sketch of it) in place


@dataclass(frozen=True)
class Step:
    """One change to a node: what it does, for people, and the edit."""

    what: str | None
    edit: Edit


@dataclass
class Sketch:
    """A stand-in for a node during planning: the edits of earlier steps run on it, the graph stays untouched."""

    op: str
    name: str
    attrs: dict[str, Any]
    inputs: list[gs.Tensor]
    outputs: list[gs.Tensor]

    @classmethod
    def of(cls, node: gs.Node) -> Sketch:
        """A sketch of ``node`` as it stands."""
        return cls(node.op, node.name, dict(node.attrs), list(node.inputs), list(node.outputs))


def base_name(node: gs.Node) -> str:
    """What the names of the nodes and tensors replacing ``node`` start with."""
    return node.name or f"{node.op}_{node.outputs[0].name}"


def take_outputs(node: gs.Node) -> list[gs.Tensor | None]:
    """Detach the node from its tensors; its outputs, which the replacement then produces (omitted ones None)."""
    outputs = [None if is_empty(tensor) else tensor for tensor in node.outputs]
    node.outputs.clear()
    node.inputs.clear()
    return outputs


def trim_inputs(node: gs.Node, count: int) -> None:
    """Keep the first ``count`` inputs, without omitted ones at the end."""
    while len(node.inputs) > count or node.inputs and is_empty(node.inputs[-1]):
        node.inputs.pop()
