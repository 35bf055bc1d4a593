"""dynamic_batch's rules: how the batch flows through each op, in the table the analysis walks with.

A rule takes the flow and a node whose inputs depend on the batch and
returns the states of its outputs (see ``state``); it raises, through
``flow.fail``, where samples would mix, and plans, through ``flow.require``
and ``flow.fix``, the rewrites that make baked-in batch sizes follow the
runtime batch. The rules of ops that move the batch between axes or
compute shapes are in ``shape_rules``, those of index arithmetic in
``indexing``.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

import surgeon_plugins.passes.dynamic_batch.indexing as indexing
import surgeon_plugins.passes.dynamic_batch.shape_rules as shape_rules
from surgeon.graph import REDUCTIONS, normalized, optional_input
from surgeon_plugins.passes.dynamic_batch.flow import Flow, Rule, batched_first
from surgeon_plugins.passes.dynamic_batch.state import Batch, Entry, State, Term, Value, as_int, independent


def unused_outputs(flow: Flow, node: gs.Node, first: int) -> None:
    for tensor in node.outputs[first:]:
        if tensor.outputs or tensor in flow.graph.outputs:
            flow.fail(node, f"output {tensor.name!r} mixes samples (it indexes across the whole batch)")


def arithmetic(op: str, a: Entry, b: Entry) -> Entry:
    """Entry arithmetic for shape computations; None when the result is not followed."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if op == "Div" and isinstance(a, int) and isinstance(b, int):
            return a // b if b and a >= 0 and b > 0 else None
        return {"Add": a + b, "Sub": a - b, "Mul": a * b, "Div": a / b if b else None}.get(op)
    if isinstance(a, int) and isinstance(b, Term) and op in ("Add", "Mul"):
        a, b = b, a
    if isinstance(a, Term) and isinstance(b, int):
        if op == "Mul":
            return Term(a.factor * b)
        if op == "Div" and b > 0 and a.factor % b == 0:
            return Term(a.factor // b)
        if op in ("Add", "Sub") and b == 0:
            return a
    return None


def value_rule(flow: Flow, node: gs.Node) -> list[State]:
    """Elementwise ops on batch-dependent shape values."""
    if node.op in ("Cast", "Identity", "Floor", "Ceil", "Abs"):
        return [flow.state(node.inputs[0])]
    if node.op in ("Add", "Sub", "Mul", "Div"):
        values = [(flow.entries(t, node), flow.rank(t, node) == 0) for t in node.inputs]
        (a, a_scalar), (b, b_scalar) = values
        length = max(len(a), len(b))
        if len(a) not in (1, length) or len(b) not in (1, length):
            return [flow.opaque(node, node.outputs[0])]
        entries = tuple(arithmetic(node.op, a[i % len(a)], b[i % len(b)]) for i in range(length))
        return [Value(entries, scalar=a_scalar and b_scalar)]
    return [flow.opaque(node, t) for t in node.outputs]


def broadcast(flow: Flow, node: gs.Node) -> list[State]:
    """Elementwise ops with numpy broadcasting: the batched inputs agree, the others broadcast or are repeated."""
    states = [flow.state(t) for t in node.inputs]
    if not any(isinstance(s, Batch) for s in states):
        return value_rule(flow, node)
    if any(isinstance(s, Value) and not s.known for s in states):
        flow.fail(node, "uses the batch size as data")
    rank = flow.rank(node.outputs[0], node)
    targets = {s.moved(s.axis + rank - flow.rank(t, node)) for t, s in zip(node.inputs, states) if isinstance(s, Batch)}
    if len(targets) != 1:
        flow.fail(node, "combines tensors whose batch sits on different axes; samples would mix")
    (target,) = targets
    for index, (tensor, state) in enumerate(zip(node.inputs, states)):
        if independent(state) and tensor.name:
            aligned = target.axis - (rank - flow.rank(tensor, node))
            if aligned >= 0:
                flow.require(node, index, target.moved(aligned), broadcast=True)
    return [target] * len(node.outputs)


def cast_like(flow: Flow, node: gs.Node) -> list[State]:
    """The second input gives only the type."""
    return [flow.state(node.inputs[0])]


def per_sample(flow: Flow, node: gs.Node) -> list[State]:
    """Ops whose axis 0 is the batch (convolution, pooling, normalization, ...)."""
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch) or state.axis != 0:
        flow.fail(node, f"expects the batch on axis 0 of {node.inputs[0].name!r}")
    for index, tensor in enumerate(node.inputs[1:], start=1):
        if index in BATCHED_PARAMETERS.get(node.op, ()) and tensor.name:
            flow.require(node, index, state)
        elif not independent(flow.state(tensor)):
            flow.fail(node, f"has a batch-dependent parameter {tensor.name!r}")
    unused_outputs(flow, node, 1)
    return [state] + [None] * (len(node.outputs) - 1)


def within_axis(default: int | None, drops_axis: bool = False) -> Rule:
    """Ops that work along one axis (attribute ``axis``) of each sample; no axis at all means every axis."""

    def rule(flow: Flow, node: gs.Node) -> list[State]:
        state = batched_first(flow, node)
        axis = node.attrs.get("axis", default)
        if axis is not None:
            axis = normalized(axis, flow.rank(node.inputs[0], node))
        if axis is None or axis == state.axis:
            flow.fail(node, "works along the batch axis; samples would mix")
        if drops_axis and not node.attrs.get("keepdims", 1) and axis < state.axis:
            state = state.moved(state.axis - 1)
        return [state] * len(node.outputs)

    return rule


def softmax(flow: Flow, node: gs.Node) -> list[State]:
    """Softmax, LogSoftmax, Hardmax: along one axis from opset 13, before that over all axes from ``axis`` on."""
    state = batched_first(flow, node)
    rank = flow.rank(node.inputs[0], node)
    if flow.opset >= 13:
        mixes = normalized(node.attrs.get("axis", -1), rank) == state.axis
    else:
        mixes = state.axis >= normalized(node.attrs.get("axis", 1), rank)
    if mixes:
        flow.fail(node, "normalizes over the batch axis; samples would mix")
    return [state]


def reduce(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    rank = flow.rank(node.inputs[0], node)
    axes = node.attrs.get("axes")
    axes_input = optional_input(node, 1)
    if axes is None and axes_input is not None:
        axes = list(flow.entries(axes_input, node))
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [state]
        flow.fail(node, "reduces over every axis, the batch included; samples would mix")
    axes = [normalized(a, rank) for a in axes]
    if state.axis in axes:
        flow.fail(node, f"reduces over axis {state.axis}, which holds the batch; samples would mix")
    if node.attrs.get("keepdims", 1):
        return [state]
    return [state.moved(state.axis - sum(a < state.axis for a in axes))]


def cumsum(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    (axis,) = flow.entries(node.inputs[1], node)
    if normalized(as_int(axis), flow.rank(node.inputs[0], node)) == state.axis:
        flow.fail(node, "accumulates along the batch axis; samples would mix")
    return [state]


def layer_normalization(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    axis = normalized(node.attrs.get("axis", -1), flow.rank(node.inputs[0], node))
    if state.axis >= axis:
        flow.fail(node, f"normalizes over axes {axis}.., which include the batch axis; samples would mix")
    return [state] * len(node.outputs)


def mean_variance_normalization(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    rank = flow.rank(node.inputs[0], node)
    if state.axis in [normalized(a, rank) for a in node.attrs.get("axes", [0, 2, 3])]:
        flow.fail(node, "normalizes over the batch axis; samples would mix")
    return [state]


def quantize(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    scale = flow.dims_of(node.inputs[1])
    axis = normalized(node.attrs.get("axis", 1), flow.rank(node.inputs[0], node))
    if scale and scale[0] != 1 and axis == state.axis:
        flow.fail(node, "quantizes per channel along the batch axis")
    return [state]


def gemm(flow: Flow, node: gs.Node) -> list[State]:
    a, b = node.inputs[:2]
    targets = set()
    for tensor, kept, out_axis in ((a, 1 if node.attrs.get("transA", 0) else 0, 0),
                                   (b, 0 if node.attrs.get("transB", 0) else 1, 1)):
        state = flow.state(tensor)
        if isinstance(state, Value) or (isinstance(state, Batch) and state.axis != kept):
            flow.fail(node, f"contracts over the batch axis of {tensor.name!r}; samples would mix")
        if isinstance(state, Batch):
            targets.add(state.moved(out_axis))
    if len(targets) != 1:
        flow.fail(node, "multiplies two batched matrices; samples would mix")
    (target,) = targets
    bias = optional_input(node, 2)
    if bias is not None and flow.state(bias) != target:
        aligned = target.axis - (2 - flow.rank(bias, node))
        if aligned >= 0:
            flow.require(node, 2, target.moved(aligned), broadcast=True)
    return [target]


def matmul(flow: Flow, node: gs.Node) -> list[State]:
    a, b = node.inputs[:2]
    ranks = [flow.rank(a, node), flow.rank(b, node)]
    rank = flow.rank(node.outputs[0], node)
    stacked = rank - (2 if min(ranks) > 1 else 1)  # leading, broadcast axes of the output
    targets, aligned = set(), {}
    for side, tensor in enumerate((a, b)):
        state, r = flow.state(tensor), ranks[side]
        if r > 2:
            aligned[side] = stacked - (r - 2)
        if state is None or independent(state):  # None narrows the type; independent() is True for it too
            continue
        if isinstance(state, Value) or r == 1:
            flow.fail(node, f"contracts over the batch axis of {tensor.name!r}; samples would mix")
        if state.axis == (r - 1 if side == 0 else r - 2):
            flow.fail(node, f"contracts over the batch axis of {tensor.name!r}; samples would mix")
        if state.axis == r - 2 + side:
            targets.add(state.moved(rank - 1 if side == 1 or ranks[1] == 1 else rank - 2))
        else:
            targets.add(state.moved(state.axis + aligned[side]))
    if len(targets) != 1:
        flow.fail(node, "multiplies tensors whose batch sits on different axes; samples would mix")
    (target,) = targets
    for side, tensor in enumerate((a, b)):
        if independent(flow.state(tensor)) and target.axis < stacked and side in aligned:
            if target.axis - aligned[side] >= 0:
                flow.require(node, side, target.moved(target.axis - aligned[side]), broadcast=True)
    return [target]


def einsum(flow: Flow, node: gs.Node) -> list[State]:
    """The batch is one label: kept in the output, shared by every operand that has it (no ellipsis)."""
    equation = node.attrs["equation"].replace(" ", "")
    terms, arrow, output = equation.partition("->")
    operands = terms.split(",")
    if "." in equation:
        flow.fail(node, "has an ellipsis in its equation, which dynamic_batch does not follow")
    if not arrow:
        output = "".join(sorted(label for label in set(terms) - {","} if terms.count(label) == 1))
    batched = [(operands[i][s.axis], s) for i, s in enumerate(map(flow.state, node.inputs)) if isinstance(s, Batch)]
    if len({label for label, _ in batched}) != 1 or len({(s.inner, s.outer) for _, s in batched}) != 1:
        flow.fail(node, "combines tensors whose batch sits on different labels; samples would mix")
    label, state = batched[0]
    if label not in output:
        flow.fail(node, f"sums over label {label!r}, which holds the batch; samples would mix")
    for index, operand in enumerate(operands):
        if label in operand:
            flow.require(node, index, state.moved(operand.index(label)))
    return [state.moved(output.index(label))]


def recurrent(flow: Flow, node: gs.Node) -> list[State]:
    """RNN, GRU, LSTM: X is [seq, batch, in] (layout 0) or [batch, seq, in] (layout 1)."""
    layout = node.attrs.get("layout", 0)
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch) or state.axis != (0 if layout else 1):
        flow.fail(node, f"expects the batch on axis {0 if layout else 1} of its input")
    for index, tensor in enumerate(node.inputs[1:], start=1):
        if not tensor.name:
            continue
        if index == 4:
            flow.require(node, index, state.moved(0))
        elif index in (5, 6):
            flow.require(node, index, state.moved(0 if layout else 1))
        elif not independent(flow.state(tensor)):
            flow.fail(node, f"has a batch-dependent parameter {tensor.name!r}")
    outputs: list[State] = [state.moved(0 if layout else 2)]
    return outputs + [state.moved(0 if layout else 1)] * (len(node.outputs) - 1)


def one_hot(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    axis = normalized(node.attrs.get("axis", -1), flow.rank(node.inputs[0], node) + 1)
    return [state.moved(state.axis if state.axis < axis else state.axis + 1)]


def matrix_last_two(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    if state.axis >= flow.rank(node.inputs[0], node) - 2:
        flow.fail(node, "works on matrices that contain the batch axis; samples would mix")
    return [state]


def reverse_sequence(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch) or state.axis != node.attrs.get("batch_axis", 1):
        flow.fail(node, "reverses along the batch axis, or has the batch where batch_axis does not say")
    flow.require(node, 1, state.moved(0))
    return [state]


ELEMENTWISE = """Abs Acos Acosh Add And Asin Asinh Atan Atanh Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr
    BitwiseXor Cast Ceil Celu Clip Cos Cosh Div Dropout Elu Equal Erf Exp Floor Gelu Greater GreaterOrEqual
    HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or
    Pow PRelu RandomNormalLike RandomUniformLike Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus
    Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu Where Xor""".split()
PER_SAMPLE = """AveragePool BatchNormalization Col2Im Conv ConvInteger ConvTranspose DeformConv DepthToSpace
    GlobalAveragePool GlobalLpPool GlobalMaxPool GridSample GroupNormalization InstanceNormalization LpPool LRN
    MaxPool SpaceToDepth""".split()
BATCHED_PARAMETERS = {"GridSample": (1,), "DeformConv": (2, 4)}  # per-sample inputs besides input 0

RULES: dict[str, Rule] = {
    **{op: broadcast for op in ELEMENTWISE},
    **{op: per_sample for op in PER_SAMPLE},
    **{op: reduce for op in REDUCTIONS},
    "Add": indexing.arithmetic(broadcast),
    "Mul": indexing.arithmetic(broadcast),
    "Cast": indexing.keeping_positions(broadcast),
    "Identity": indexing.keeping_positions(broadcast),
    "Range": indexing.range_rule,
    "CastLike": cast_like,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Hardmax": softmax,
    "LpNormalization": within_axis(-1),
    "ArgMax": within_axis(0, drops_axis=True),
    "ArgMin": within_axis(0, drops_axis=True),
    "TopK": within_axis(-1),
    "Compress": within_axis(None),
    "CumSum": cumsum,
    "LayerNormalization": layer_normalization,
    "MeanVarianceNormalization": mean_variance_normalization,
    "QuantizeLinear": quantize,
    "DequantizeLinear": quantize,
    "Transpose": indexing.keeping_positions(shape_rules.transpose),
    "Squeeze": indexing.keeping_positions(shape_rules.squeeze),
    "Unsqueeze": indexing.keeping_positions(shape_rules.unsqueeze),
    "Reshape": indexing.keeping_positions(shape_rules.reshape),
    "Flatten": indexing.keeping_positions(shape_rules.flatten),
    "Expand": indexing.keeping_positions(shape_rules.expand),
    "Tile": shape_rules.tile,
    "ConstantOfShape": shape_rules.constant_of_shape,
    "Shape": shape_rules.shape_of,
    "Size": shape_rules.size_of,
    "Gather": shape_rules.gather,
    "GatherElements": shape_rules.gather_elements,
    "Concat": shape_rules.concat,
    "Split": shape_rules.split,
    "Slice": shape_rules.slice_rule,
    "Pad": shape_rules.pad,
    "Resize": shape_rules.resize,
    "Upsample": shape_rules.resize,
    "Gemm": gemm,
    "MatMul": matmul,
    "RNN": recurrent,
    "GRU": recurrent,
    "LSTM": recurrent,
    "Einsum": einsum,
    "OneHot": one_hot,
    "Trilu": matrix_last_two,
    "Det": matrix_last_two,
    "ReverseSequence": reverse_sequence,
}
