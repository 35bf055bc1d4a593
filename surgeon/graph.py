"""The graph kit for pass authors: build, read and name the parts of an onnx-graphsurgeon graph.

Every rewrite pass, surgeon's own and a plugin's, takes these from here
rather than writing its own:

- ``Builder``: adds nodes and constants to one graph, under names no tensor
  or node of the model has yet, and writes the operators whose form changed
  between opsets (``slice``, ``unsqueeze``, ``reduce_mean``) in the form of
  the graph's opset; ``names_in(graph)`` is where a ``taken`` set shared by
  the builders of several subgraphs starts;
- ``describe(node)``: the one way findings, messages, details and
  ``surgeon inspect`` name a node;
- ``constant_value(tensor)``, ``is_empty(tensor)``,
  ``optional_input(node, index)``: reading what a node is given;
- ``Unfixable``: what a pass's planning raises for a node it leaves as it is;
- ``INT64_MAX``: the end of a Slice or Shape that runs to the last element.

``Builder`` does not add nodes through onnx-graphsurgeon's ``Graph.layer``:
that lists every tensor of the graph on each call, which makes unrolling a
recurrence quadratic, and its names are unique in one graph only, not in the
model with its subgraphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from numpy.typing import DTypeLike

from surgeon.naming import fresh_name

INT64_MAX = int(np.iinfo(np.int64).max)

CONSTANT_ATTRIBUTES: dict[str, DTypeLike] = {
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_string": object,
    "value_strings": object,
}  # the attributes a Constant node may hold its value in besides ``value``, and the type ONNX gives each


class Unfixable(Exception):
    """Raised by a pass's planning for a node it leaves as it is; the message says why, for the user."""


def describe(node: gs.Node | onnx.NodeProto) -> str:
    """How a node is named to the user: ``node 'name' (Op)``, or ``the Op node making 'tensor'`` when unnamed.
    Takes an onnx-graphsurgeon node or an ONNX ``NodeProto`` (a converter reads those)."""
    if isinstance(node, onnx.NodeProto):
        op, outputs = node.op_type, list(node.output)
    else:
        op, outputs = node.op, [tensor.name for tensor in node.outputs]
    if node.name:
        return f"node {node.name!r} ({op})"
    output = next((name for name in outputs if name), None)
    return f"the {op} node making {output!r}" if output else f"a {op} node"


def is_empty(tensor: gs.Tensor | None) -> bool:
    """An optional input or output left out (ONNX gives it an empty name)."""
    return tensor is None or not tensor.name


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``; None when the node leaves it out."""
    tensor = node.inputs[index] if index < len(node.inputs) else None
    return None if is_empty(tensor) else tensor


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None when it is computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor is None or len(tensor.inputs) != 1 or tensor.inputs[0].op != "Constant":
        return None
    attrs = tensor.inputs[0].attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    for attribute, dtype in CONSTANT_ATTRIBUTES.items():
        if attribute in attrs:
            return np.array(attrs[attribute], dtype=dtype)
    return None  # a sparse_value, which onnx-graphsurgeon does not import


def names_in(graph: gs.Graph) -> set[str]:
    """Every tensor and node name of ``graph`` and of its subgraphs."""
    names: set[str] = set()
    for each in (graph, *graph.subgraphs(recursive=True)):
        names.update(each.tensors())
        names.update(node.name for node in each.nodes)
    return names


class Builder:
    """Adds nodes and constants to one graph, named so that no tensor or node of the model shares a name.

    A node ``op(..., "scale")`` is named ``PREFIX + "scale"`` and its output
    ``PREFIX + "scale_output"``, each with ``_1``, ``_2``... appended when
    taken. ``taken`` holds the names in use: by default those of ``graph``
    and its subgraphs; builders for several graphs of one model share one
    set (start it with ``names_in(model_graph)``). Without a graph the
    builder only makes tensors, for planning on stand-ins of nodes; then it
    needs ``opset``, which otherwise is the graph's.
    """

    def __init__(self, graph: gs.Graph | None, prefix: str = "", taken: set[str] | None = None,
                 opset: int | None = None) -> None:
        if opset is None:
            if graph is None:
                raise ValueError("a Builder without a graph needs the opset")
            opset = int(graph.opset)
        if taken is None:
            taken = names_in(graph) if graph is not None else set()
        self.graph, self.prefix, self.taken, self.opset = graph, prefix, taken, opset
        self.sizes: dict[tuple[int, int, int], gs.Tensor] = {}

    def name(self, base: str) -> str:
        """A name no tensor or node has yet, from ``base``; it is taken from now on."""
        return fresh_name(f"{self.prefix}{base}", self.taken)

    def const(self, base: str, values: Any, dtype: DTypeLike | None = None) -> gs.Constant:
        """A constant tensor holding ``values`` (as ``dtype`` when given)."""
        return gs.Constant(self.name(base), np.asarray(values, dtype=dtype, order="C"))

    def ints(self, base: str, values: int | Sequence[int]) -> gs.Constant:
        """An int64 constant: the type of shapes, axes, pads and indices."""
        return self.const(base, values, np.int64)

    def op(self, op: str, inputs: Sequence[gs.Tensor], base: str, /, *, output: gs.Variable | None = None,
           dtype: DTypeLike | None = None, **attrs: Any) -> gs.Variable:
        """Add an ``op`` node with attributes ``attrs`` reading ``inputs``; return its output.

        The output is ``output`` when given (a tensor whose producer the
        caller removed), else a new tensor of element type ``dtype``.
        """
        if output is None:
            output = gs.Variable(self.name(f"{base}_output"), dtype=dtype)
        node_name = self.name(base)
        if self.graph is not None:
            self.graph.nodes.append(gs.Node(op, node_name, attrs, list(inputs), [output]))
        return output

    def insert_after(self, node: gs.Node, op: str, extra: Sequence[gs.Tensor], base: str, **attrs: Any) -> None:
        """Put an ``op`` node after ``node``: it reads the node's first output (and ``extra``) and takes over
        producing that tensor, so every consumer now reads the new node's result."""
        output = node.outputs[0]
        node.outputs[0] = gs.Variable(self.name(f"{base}_input"), dtype=output.dtype)
        self.op(op, [node.outputs[0], *extra], base, output=output, **attrs)

    def cast(self, x: gs.Tensor, dtype: DTypeLike, base: str) -> gs.Variable:
        """``x`` as NumPy type ``dtype``."""
        return self.op("Cast", [x], base, dtype=dtype, to=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def slice(self, x: gs.Tensor, starts: Sequence[int], ends: Sequence[int], base: str) -> gs.Variable:
        """``x[starts:ends]`` on its first axes: bounds as inputs from opset 10, as attributes before."""
        if self.opset >= 10:
            return self.op("Slice", [x, self.ints(f"{base}/starts", starts), self.ints(f"{base}/ends", ends)], base,
                           dtype=x.dtype)
        return self.op("Slice", [x], base, dtype=x.dtype, starts=list(starts), ends=list(ends))

    def dims(self, x: gs.Tensor, start: int, end: int, base: str) -> gs.Variable:
        """The sizes of axes ``start`` to ``end`` (excluded) of ``x`` at run time, as an int64 1-D tensor."""
        shape = self.op("Shape", [x], f"{base}/shape", dtype=np.int64)
        return self.slice(shape, [start], [end], base)

    def size(self, x: gs.Tensor, axis: int, base: str, factor: int = 1) -> gs.Tensor:
        """The size of axis ``axis`` of ``x`` at run time times ``factor``, as an int64 [1] tensor (made once per
        tensor, axis and factor by this builder)."""
        key = (id(x), axis, factor)
        if key not in self.sizes:
            self.sizes[key] = self.dims(x, axis, axis + 1, base) if factor == 1 else self.op(
                "Mul", [self.size(x, axis, base), self.ints(f"x{factor}", [factor])], f"{base}_x{factor}",
                dtype=np.int64)
        return self.sizes[key]

    def unsqueeze(self, x: gs.Tensor, axes: Sequence[int], base: str) -> gs.Variable:
        """``x`` with size-1 axes inserted at ``axes``: an input from opset 13, an attribute before."""
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(f"{base}/axes", axes)], base, dtype=x.dtype)
        return self.op("Unsqueeze", [x], base, dtype=x.dtype, axes=list(axes))

    def reduce_mean(self, x: gs.Tensor, axes: Sequence[int], base: str) -> gs.Variable:
        """The mean of ``x`` over ``axes``, which are kept: an input from opset 18, an attribute before."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(f"{base}/axes", axes)], base, dtype=x.dtype, keepdims=1)
        return self.op("ReduceMean", [x], base, dtype=x.dtype, axes=list(axes), keepdims=1)


def normalized(axis: int, rank: int) -> int:
    """A possibly negative axis as counted from 0."""
    return axis + rank if axis < 0 else axis


REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
"""ONNX's reduce operators: their axes an attribute (an input from opset 13 or 18), ``keepdims`` and
``noop_with_empty_axes`` alike."""


__all__ = [
    "INT64_MAX",
    "REDUCTIONS",
    "Builder",
    "Unfixable",
    "constant_value",
    "describe",
    "is_empty",
    "names_in",
    "normalized",
    "optional_input",
]
