"""dynamic_batch's rules for index arithmetic: indices computed from the batch that gather from a flattened batch.

HuggingFace text models build their attention masks by flattening the
[batch, seq] mask to [batch * seq, 1] and gathering it with the indices
``arange(batch)[:, None, None, None] * seq + positions``. Tracing at a fixed
batch folds ``arange(batch)`` into a constant (``[[[[0]]]]`` at batch 1), so the
walk meets a Gather along the batch axis whose indices do not depend on the
batch. Such indices read each sample's own elements, and follow the runtime
batch once the folded ``arange`` does:

- the Gather rule looks behind its indices for a constant that index
  arithmetic multiplies and that numbers the samples of the export batch
  (``flow.sample_axes``), and makes the walk start again with it taken as the
  sample index (``flow.Reinterpret``); the walk then gives it the batch and
  rebuilds it from the runtime batch (``BatchBuilder.sample_index``);
- ``Range(0, N * f, f)`` computed from the batch size is the sample index too;
- Mul by a positive constant and Add of non-negative constants keep track of
  the values (``state.Positions``), and so do the ops that move entries
  without changing them;
- a Gather along the batch axis is per sample when its indices' positions
  stay within the block each sample has on that axis; anything else is
  refused naming the node, a fixed index list included (it picks the same
  samples whatever the batch).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.graph import constant_value
from surgeon_plugins.passes.dynamic_batch.flow import Flow, Reinterpret, Rule, sample_axes
from surgeon_plugins.passes.dynamic_batch.state import Batch, Positions, State, Term, Value, independent

PATH_TO_THE_SAMPLE_INDEX = frozenset({"Add", "Mul", "Cast", "Identity", "Unsqueeze", "Reshape", "Expand"})
INTEGER_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                           onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                           onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})


def gather_samples(flow: Flow, node: gs.Node, data: Batch, axis: int) -> Batch:
    """The state of a Gather along the batch axis ``axis`` of its data (state ``data``): each sample must read
    only its own elements there; the output holds the batch where the indices do."""
    indices = node.inputs[1]
    state = flow.state(indices)
    if independent(state):
        candidate = sample_index_behind(flow, indices)
        if candidate is None:
            flow.fail(node, "picks samples along the batch axis; the output depends on the batch size")
        raise Reinterpret(candidate)
    positions = flow.positions.get(id(indices))
    if not isinstance(state, Batch) or positions is None:
        flow.fail(node, "gathers along the batch axis with batch-dependent indices that dynamic_batch does not "
                        "follow; samples could mix")
    if data.outer != 1 or positions.stride != data.inner or positions.span > positions.stride:
        flow.fail(node, f"gathers along the batch axis, where each sample has {data.inner} elements, with indices "
                        f"i * {positions.stride} + (0 to {positions.span - 1}) for sample i; samples would mix")
    return state.moved(axis + state.axis)


def sample_index_behind(flow: Flow, indices: gs.Tensor) -> gs.Tensor | None:
    """A constant that index arithmetic computing ``indices`` multiplies and that can be the sample index of the
    export batch: read by that Mul alone, not yet taken as one; None when there is none (a fixed index list)."""
    if flow.opset < 11:  # the runtime sample index is a Range
        return None
    pending, seen = [indices], set()
    while pending:
        tensor = pending.pop()
        node = tensor.inputs[0] if tensor.inputs else None
        if node is None or node.op not in PATH_TO_THE_SAMPLE_INDEX or id(node) in seen:
            continue
        seen.add(id(node))
        for operand in node.inputs:
            array = constant_value(operand)
            if node.op == "Mul" and array is not None and len(operand.outputs) == 1 \
                    and operand not in flow.graph.outputs and sample_axes(array, flow.batch) \
                    and not any(operand is taken for taken in flow.sample_indices):
                return operand
            pending.append(operand)
    return None


def range_rule(flow: Flow, node: gs.Node) -> list[State]:
    """``Range(0, N * f, f)`` is the sample index, times f; other ranges computed from the batch size are values
    the walk does not follow."""
    start, limit, delta = node.inputs
    if any(isinstance(flow.state(t), Batch) for t in node.inputs):
        flow.fail(node, "reads batched data as the bounds of a range")
    size = flow.state(limit)
    first, step = flow.known(start), flow.known(delta)
    if isinstance(size, Value) and len(size.entries) == 1 and isinstance(size.entries[0], Term) \
            and first is not None and step is not None and first.item() == 0 \
            and step.item() == size.entries[0].factor:
        flow.positions[id(node.outputs[0])] = Positions(stride=size.entries[0].factor, span=1)
        return [Batch(0)]
    return [flow.opaque(node, node.outputs[0])]


def arithmetic(rule: Rule) -> Rule:
    """``rule`` (of Add or Mul) that also follows the positions of index arithmetic: positions times a positive
    integer constant, or plus non-negative integer constants, are positions again."""

    def follow(flow: Flow, node: gs.Node) -> list[State]:
        states = rule(flow, node)
        marked = [k for k, tensor in enumerate(node.inputs) if id(tensor) in flow.positions]
        if len(marked) != 1 or len(node.inputs) != 2 or not isinstance(states[0], Batch):
            return states
        other = node.inputs[1 - marked[0]]
        operand = flow.constant(other) if independent(flow.state(other)) else None
        if operand is not None and operand.size and operand.dtype.kind in "iu":
            positions = combined(node.op, flow.positions[id(node.inputs[marked[0]])], operand)
            if positions is not None:
                flow.positions[id(node.outputs[0])] = positions
        return states

    return follow


def combined(op: str, positions: Positions, operand: np.ndarray) -> Positions | None:
    """The positions of ``positions`` ``op`` (Mul or Add) the integer constant ``operand``; None when they are
    not positions any more."""
    if op == "Mul":
        factors = np.unique(operand)
        if len(factors) == 1 and factors[0] > 0:
            factor = int(factors[0])
            return Positions(positions.stride * factor, (positions.span - 1) * factor + 1)
    elif op == "Add" and operand.min() >= 0:
        return Positions(positions.stride, positions.span + int(operand.max()))
    return None


def keeping_positions(rule: Rule) -> Rule:
    """``rule`` of an op that moves entries without changing them (a Cast to an integer type): its output has the
    positions of its input."""

    def follow(flow: Flow, node: gs.Node) -> list[State]:
        states = rule(flow, node)
        positions = flow.positions.get(id(node.inputs[0]))
        keeps = node.op != "Cast" or node.attrs.get("to") in INTEGER_TYPES
        if positions is not None and keeps and isinstance(states[0], Batch):
            flow.positions[id(node.outputs[0])] = positions
        return states

    return follow
