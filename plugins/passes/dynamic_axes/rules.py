"""dynamic_axes's rules: how the length flows through each op, in the table the walk uses.

A rule takes the flow and a node with an input that depends on the length and returns the states of its outputs
(see ``flow``). Mixing along the length is what a sequence model does (attention, softmax, a mean over tokens), so
unlike the batch it is followed, not refused; what a rule cannot follow exactly fails through ``flow.fail``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from surgeon.graph import REDUCTIONS, normalized, optional_input
from surgeon_plugins.passes.dynamic_axes.flow import Along, Carries, Entries, Flow, Rule, State


def carried(flow: Flow, node: gs.Node, index: int = 0) -> tuple[Along, ...]:
    state = flow.carries(node.inputs[index])
    return state.alongs if state else ()


# -- small integer tensors computed from shapes


def factor_arithmetic(flow: Flow, node: gs.Node) -> list[State]:
    """Elementwise ops on shape values: factors add, scale by a fixed number, and compare unequal to a fixed number
    the entry never reaches (``Where(Equal(shape, -1), ...)``, as torch writes ``expand``)."""
    result = flow.values.get(node.outputs[0].name)
    if result is None or result.ndim > 1:
        return [None]  # data computed from the length, no axis of it holds the length
    size = result.size
    inputs = [t for t in node.inputs if t.name]
    factors = [broadcast_to(flow.factors(t, node), size) for t in inputs]
    observed = [None if (value := flow.fixed(t)) is None else broadcast_to(tuple(value.reshape(-1).tolist()), size)
                for t in inputs]
    return [Entries(tuple(entry_factor(node.op, k, factors, observed, flow.length) for k in range(size)))]


def entry_factor(op: str, k: int, factors: Sequence[tuple[int | None, ...]], observed: Sequence[tuple | None],
                 length: int) -> int | None:
    """The factor of entry ``k`` of ``op``'s output, from its inputs' ``factors`` and ``observed`` values (at the
    export length ``length``; None where they depend on the inputs' data)."""
    column = [f[k] for f in factors]
    if None in column:
        return None
    if all(f == 0 for f in column):
        return 0
    fixed = [values if factor[k] == 0 else None for values, factor in zip(observed, factors)]
    if op == "Where":
        condition = fixed[0]
        return None if condition is None else column[1] if condition[k] else column[2]
    left, right = observed[0], observed[1] if len(observed) > 1 else None
    if op == "Equal" and column[0] == column[1] and left is not None and right is not None:
        return 0 if left[k] == right[k] else None  # f * S + c against itself: always equal
    if op == "Equal" and 0 in column:  # f * S + c, for 1 <= S <= L, against a fixed number outside that range
        plain = column.index(0)
        scaled, factor = observed[1 - plain], column[1 - plain]
        other = fixed[plain]
        if scaled is not None and other is not None and factor is not None and factor > 0 \
                and not scaled[k] - factor * (length - 1) <= other[k] <= scaled[k]:
            return 0
    if op in ("Add", "Sum"):
        return sum(f for f in column if f is not None)
    if op == "Sub":
        return column[0] - column[1] if column[0] is not None and column[1] is not None else None
    if op == "Mul" and len(column) == 2:
        for scaled_index, other_index in ((0, 1), (1, 0)):
            plain_values, factor = fixed[other_index], column[scaled_index]
            if plain_values is not None and factor is not None and float(plain_values[k]).is_integer():
                return factor * int(plain_values[k])
    if op == "Div" and column[1] == 0:
        divisor, factor = fixed[1], column[0]
        if divisor is not None and factor is not None and divisor[k] and factor % int(divisor[k]) == 0:
            return factor // int(divisor[k])
    return None


def broadcast_to(entries: tuple, size: int) -> tuple:
    return entries if len(entries) == size else entries * size if len(entries) == 1 else (None,) * size


def shape_of(flow: Flow, node: gs.Node) -> list[State]:
    x = node.inputs[0]
    dims, state = flow.dims(x, node), flow.carries(x)
    factors = tuple(dims[k] // flow.length if state and state.at(k) else 0 for k in range(len(dims)))
    start = normalized(node.attrs.get("start", 0), len(dims))
    end = normalized(node.attrs.get("end", len(dims)), len(dims))
    return [Entries(factors[max(start, 0):min(end, len(dims))])]


def size_of(flow: Flow, node: gs.Node) -> list[State]:
    alongs = carried(flow, node)
    size = math.prod(flow.dims(node.inputs[0], node))
    return [Entries((0 if not alongs else size // flow.length if len(alongs) == 1 else None,))]


# -- elementwise


def unary(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if isinstance(state, Entries):
        keeps = node.op in ("Identity", "Cast", "Floor", "Ceil", "Round")
        return [Entries(state.factors if keeps else (None,) * len(state.factors))]
    if node.op in ELEMENTWISE_UNARY and id(node.inputs[0]) in flow.copies:
        flow.copies[id(node.outputs[0])] = flow.copies[id(node.inputs[0])]
    return [state] * len(node.outputs)


def broadcast(flow: Flow, node: gs.Node) -> list[State]:
    """Elementwise ops with numpy broadcasting: the length's axes agree; other inputs broadcast or are cut."""
    inputs = [t for t in node.inputs if t.name]
    if not any(flow.carries(t) for t in inputs):
        return factor_arithmetic(flow, node)
    rank = flow.rank(node.outputs[0], node)
    alongs = aligned(flow, node, [(t, rank - flow.rank(t, node)) for t in inputs])
    for index, tensor in enumerate(node.inputs):
        if tensor.name:
            meet_all(flow, node, index, alongs, rank - flow.rank(tensor, node), broadcast=True)
    return [Carries.of(list(alongs.values()))] * len(node.outputs)


def aligned(flow: Flow, node: gs.Node, inputs: Sequence[tuple[gs.Tensor, int]]) -> dict[int, Along]:
    """The output axes that hold the length, from inputs placed ``shift`` axes to the right."""
    alongs: dict[int, Along] = {}
    for tensor, shift in inputs:
        state = flow.carries(tensor)
        for along in state.alongs if state else ():
            axis = along.axis + shift
            if axis in alongs and alongs[axis].inner != along.inner:
                flow.fail(node, f"combines {tensor.name!r} with a tensor that holds the length differently on axis "
                                f"{axis}")
            alongs[axis] = Along(axis, along.inner)
    return alongs


def meet_all(flow: Flow, node: gs.Node, index: int, alongs: dict[int, Along], shift: int, broadcast: bool) -> None:
    """Input ``index``, placed ``shift`` axes to the right, meets the length on each axis of ``alongs``."""
    state = flow.carries(node.inputs[index])
    for axis, along in alongs.items():
        own = axis - shift
        if own < 0:
            continue
        if state and state.at(own):
            if state.at(own) != Along(own, along.inner):
                flow.fail(node, f"combines {node.inputs[index].name!r} with a tensor that holds the length "
                                f"differently on axis {own}")
            continue
        flow.meet(node, index, own, along, broadcast)


# -- ops that move the length between axes


def relayout(flow: Flow, node: gs.Node, dims: Sequence[int], alongs: Sequence[Along],
             out_dims: Sequence[int]) -> list[Along]:
    """Where the length goes through an op that keeps the elements in order (Reshape, Flatten, Squeeze): the axis
    of the output whose span holds the length's block of elements whole."""
    if 0 in out_dims:
        flow.fail(node, "makes the length part of an empty tensor")
    out = []
    for along in alongs:
        stride = along.inner * math.prod(dims[along.axis + 1:])
        block = stride * flow.length
        for axis in range(len(out_dims)):
            below, upto = math.prod(out_dims[axis + 1:]), math.prod(out_dims[axis:])
            if stride % below == 0 and upto % block == 0:
                out.append(Along(axis, stride // below))
                break
        else:
            flow.fail(node, f"splits the length (axis {along.axis} of {node.inputs[0].name!r}) over several axes")
    return out


def reshape_like(flow: Flow, node: gs.Node) -> list[State]:
    """Reshape, Flatten, Squeeze, Unsqueeze: the length follows the element order; a Reshape's shape entry that
    bakes L where the length goes is replaced."""
    x, out = node.inputs[0], node.outputs[0]
    state = flow.state(x)
    if isinstance(state, Entries):
        return [state if flow.rank(out, node) <= 1 else None]
    shape_factors = flow.factors(node.inputs[1], node) if node.op == "Reshape" else ()
    if state is None:
        if any(f != 0 for f in shape_factors):
            flow.fail(node, f"reshapes {x.name!r}, whose size does not depend on the length, to the length")
        return [None]
    out_dims = flow.dims(out, node)
    alongs = relayout(flow, node, flow.dims(x, node), state.alongs, out_dims)
    if node.op == "Reshape":
        follow_reshape_entries(flow, node, out_dims, alongs, shape_factors)
    return [Carries.of(alongs)]


def follow_reshape_entries(flow: Flow, node: gs.Node, out_dims: Sequence[int], alongs: Sequence[Along],
                           factors: Sequence[int | None]) -> None:
    entries = flow.value(node.inputs[1], node).reshape(-1).tolist()
    copies = not node.attrs.get("allowzero", 0)
    for along in alongs:
        axis, wanted = along.axis, out_dims[along.axis] // flow.length
        entry, factor = entries[axis], factors[axis]
        if entry == -1 or factor == wanted or (entry == 0 and copies):
            continue
        if factor != 0:
            flow.fail(node, f"computes the size of axis {axis}, where the length goes, in a way dynamic_axes does "
                            "not follow")
        flow.replace_entry(node, 1, axis, wanted, f"shape entry {axis} ({entry}) bakes the export length "
                                                  f"{flow.length}; it follows the runtime length instead")
    held = {along.axis for along in alongs}
    for axis, factor in enumerate(factors):
        if axis not in held and factor not in (0, None):
            flow.fail(node, f"scales axis {axis} with the length, but the length does not go there")


def transpose(flow: Flow, node: gs.Node) -> list[State]:
    rank = flow.rank(node.inputs[0], node)
    perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
    return [Carries.of([Along(perm.index(a.axis), a.inner) for a in carried(flow, node)])]


def gather(flow: Flow, node: gs.Node) -> list[State]:
    data, indices = node.inputs[0], node.inputs[1]
    data_state, index_state = flow.state(data), flow.carries(indices)
    if isinstance(data_state, Entries) and index_state is None:
        picked = np.asarray(np.asarray(data_state.factors, dtype=object)[flow.value(indices, node)], dtype=object)
        return [Entries(tuple(picked.reshape(-1).tolist())) if picked.ndim <= 1 else None]
    rank = flow.rank(data, node)
    axis = normalized(node.attrs.get("axis", 0), rank)
    index_rank = flow.rank(indices, node)
    alongs = [Along(a.axis if a.axis < axis else a.axis + index_rank - 1, a.inner)
              for a in carried(flow, node) if a.axis != axis]
    alongs += [Along(a.axis + axis, a.inner) for a in (index_state.alongs if index_state else ())]
    return [Carries.of(alongs)]


def gather_elements(flow: Flow, node: gs.Node) -> list[State]:
    """The output has the indices' shape: data's length axes other than the gathered one must be the indices'."""
    axis = normalized(node.attrs.get("axis", 0), flow.rank(node.inputs[0], node))
    alongs = {a.axis: a for a in carried(flow, node, 1)}
    data_alongs = {a.axis: a for a in carried(flow, node, 0) if a.axis != axis}
    meet_all(flow, node, 1, data_alongs, 0, broadcast=False)
    return [Carries.of(list({**data_alongs, **alongs}.values()))]


def concat(flow: Flow, node: gs.Node) -> list[State]:
    inputs = [t for t in node.inputs if t.name]
    if not any(flow.carries(t) for t in inputs):
        rank = flow.rank(node.outputs[0], node)
        if rank > 1:
            return [None]
        return [Entries(tuple(f for t in inputs for f in flow.factors(t, node)))]
    axis = normalized(node.attrs["axis"], flow.rank(node.outputs[0], node))
    alongs = aligned(flow, node, [(t, 0) for t in inputs])
    if axis in alongs:  # only past an empty tensor (an empty cache of keys, say) does the length stay whole
        holding = [t for t in inputs if (state := flow.carries(t)) and state.at(axis)]
        empty = [t for t in inputs if flow.dims(t, node)[axis] == 0]
        if len(holding) != 1 or len(holding) + len(empty) != len(inputs):
            flow.fail(node, "concatenates along the length; dynamic_axes does not follow a length that grows")
    others = {a: along for a, along in alongs.items() if a != axis}
    for index, tensor in enumerate(node.inputs):
        if tensor.name:
            meet_all(flow, node, index, others, 0, broadcast=False)
    return [Carries.of(list(alongs.values()))]


def split(flow: Flow, node: gs.Node) -> list[State]:
    axis = normalized(node.attrs.get("axis", 0), flow.rank(node.inputs[0], node))
    state = flow.carries(node.inputs[0])
    if state and state.at(axis):
        flow.fail(node, "splits along the length")
    return [state] * len(node.outputs)


def slice_(flow: Flow, node: gs.Node) -> list[State]:
    """Slicing along the length keeps it whole (0 to the end or past it); a fixed tensor sliced up to a multiple of
    the length (a buffer of positions cut to ``x.shape[1]``) takes the length on."""
    if len(node.inputs) < 3:
        flow.fail(node, "has its bounds as attributes (opset 9 or older); dynamic_axes follows Slice from opset 10")
    x = node.inputs[0]
    state = flow.state(x)
    starts = flow.value(node.inputs[1], node).reshape(-1).tolist()
    ends = flow.value(node.inputs[2], node).reshape(-1).tolist()
    end_factors = flow.factors(node.inputs[2], node)
    dims = flow.dims(x, node)
    rank = len(dims)
    axes_input, steps_input = optional_input(node, 3), optional_input(node, 4)
    axes = [normalized(a, rank) for a in flow.value(axes_input, node).reshape(-1).tolist()] \
        if axes_input is not None else list(range(len(starts)))
    steps = flow.value(steps_input, node).reshape(-1).tolist() if steps_input is not None else [1] * len(starts)
    if isinstance(state, Entries):
        picked = np.asarray(state.factors, dtype=object)[slice(starts[0], ends[0], steps[0])]
        return [Entries(tuple(picked.tolist()))]
    alongs = {a.axis: a for a in (state.alongs if state else ())}
    for k, axis in enumerate(axes):
        whole = starts[k] in (0, -dims[axis]) or starts[k] <= -dims[axis]
        if axis in alongs:
            keeps = whole and steps[k] == 1 and (ends[k] >= dims[axis] or end_factors[k] == dims[axis] // flow.length)
            if not keeps:
                flow.fail(node, f"cuts the length (axis {axis}) to a fixed part")
        elif end_factors[k] not in (0, None) and whole and steps[k] == 1:
            alongs[axis] = Along(axis, end_factors[k] or 1)
        elif end_factors[k] is None:
            flow.fail(node, f"slices axis {axis} to a size computed in a way dynamic_axes does not follow")
    return [Carries.of(list(alongs.values()))]


def expand(flow: Flow, node: gs.Node) -> list[State]:
    """Expand keeps the data's length axes (an entry that bakes L there becomes 1, which keeps them) and takes the
    length on where its shape entries scale with it."""
    x, shape = node.inputs
    entries = flow.value(shape, node).reshape(-1).tolist()
    factors = flow.factors(shape, node)
    rank = flow.rank(node.outputs[0], node)
    shift, offset = rank - flow.rank(x, node), rank - len(entries)
    alongs = {a.axis + shift: Along(a.axis + shift, a.inner) for a in carried(flow, node)}
    for axis, along in alongs.items():
        position = axis - offset
        if position < 0 or entries[position] == 1 or factors[position] == along.inner:
            continue
        if factors[position] != 0:
            flow.fail(node, f"expands axis {axis}, which holds the length, to a size computed in a way dynamic_axes "
                            "does not follow")
        flow.replace_entry(node, 1, position, None, f"shape entry {position} ({entries[position]}) bakes the export "
                                                    f"length {flow.length}; 1 keeps the runtime length instead")
    for position, factor in enumerate(factors):
        if factor not in (0, None) and position + offset not in alongs:
            alongs[position + offset] = Along(position + offset, factor)
    dims, out_dims = flow.dims(x, node), flow.dims(node.outputs[0], node)
    flow.copies[id(node.outputs[0])] = {axis for axis in range(rank) if out_dims[axis] > 1 and axis not in alongs
                                        and (axis < shift or dims[axis - shift] == 1)}
    return [Carries.of(list(alongs.values()))]


def constant_of_shape(flow: Flow, node: gs.Node) -> list[State]:
    factors = flow.factors(node.inputs[0], node)
    return [Carries.of([Along(axis, factor) for axis, factor in enumerate(factors) if factor not in (0, None)])]


def range_(flow: Flow, node: gs.Node) -> list[State]:
    start, limit, delta = (flow.factors(t, node)[0] for t in node.inputs)
    if start == limit == delta == 0:
        return [None]
    if start != 0 or delta != 0 or flow.value(node.inputs[0], node).item() != 0 \
            or flow.value(node.inputs[2], node).item() != 1 or not limit:
        flow.fail(node, "counts along the length other than from 0 by 1")
    return [Carries((Along(0, limit),))]


def tile(flow: Flow, node: gs.Node) -> list[State]:
    repeats = flow.value(node.inputs[1], node).reshape(-1).tolist()
    if any(f != 0 for f in flow.factors(node.inputs[1], node)) or any(repeats[a.axis] != 1 for a in carried(flow, node)):
        flow.fail(node, "repeats along the length")
    return [flow.state(node.inputs[0])]


def pad(flow: Flow, node: gs.Node) -> list[State]:
    alongs = carried(flow, node)
    pads_input = optional_input(node, 1)
    pads = flow.value(pads_input, node).reshape(-1).tolist() if pads_input is not None else node.attrs.get("pads", [])
    axes_input = optional_input(node, 3)
    rank = flow.rank(node.inputs[0], node)
    axes = [normalized(a, rank) for a in flow.value(axes_input, node).reshape(-1).tolist()] \
        if axes_input is not None else list(range(rank))
    for k, axis in enumerate(axes):
        if any(a.axis == axis for a in alongs) and (pads[k] or pads[k + len(axes)]):
            flow.fail(node, f"pads along the length (axis {axis}); dynamic_axes does not follow a length that grows")
    return [flow.state(node.inputs[0])]


# -- ops that contract or reduce


def contract(flow: Flow, node: gs.Node, axis_a: int, axis_b: int) -> None:
    """Inputs 0 and 1 are summed over together along ``axis_a`` and ``axis_b``: where one holds the length there,
    the other meets it (a weight L rows long is cut to the runtime length)."""
    state_a, state_b = flow.carries(node.inputs[0]), flow.carries(node.inputs[1])
    along_a = state_a.at(axis_a) if state_a else None
    along_b = state_b.at(axis_b) if state_b else None
    if along_a and not along_b:
        flow.meet(node, 1, axis_b, along_a, broadcast=False)
    if along_b and not along_a:
        flow.meet(node, 0, axis_a, along_b, broadcast=False)


def matmul(flow: Flow, node: gs.Node) -> list[State]:
    a, b = node.inputs[:2]
    rank_a, rank_b, rank = flow.rank(a, node), flow.rank(b, node), flow.rank(node.outputs[0], node)
    state_a, state_b = flow.carries(a), flow.carries(b)
    contract(flow, node, rank_a - 1, rank_b - 2 if rank_b >= 2 else 0)
    alongs: dict[int, Along] = {}
    rows = state_a.at(rank_a - 2) if state_a and rank_a >= 2 else None
    if rows:
        axis = rank - 2 if rank_b >= 2 else rank - 1
        alongs[axis] = Along(axis, rows.inner)
    columns = state_b.at(rank_b - 1) if state_b and rank_b >= 2 else None
    if columns:
        alongs[rank - 1] = Along(rank - 1, columns.inner)
    # the broadcast batch axes come first in the output; a 1-D operand drops its own axis, not the other's
    shifts = [0 if rank_b == 1 else rank - rank_a, 0 if rank_a == 1 else rank - rank_b]
    batch_end = rank - (1 if 1 in (rank_a, rank_b) else 2)
    stacked = [(t, shift) for t, shift in zip((a, b), shifts) if flow.rank(t, node) > 2]
    batch = {axis: along for axis, along in aligned(flow, node, stacked).items() if axis < batch_end}
    for index, (tensor, shift) in enumerate(zip((a, b), shifts)):
        if flow.rank(tensor, node) > 2:
            meet_all(flow, node, index, batch, shift, broadcast=True)
    return [Carries.of([*alongs.values(), *batch.values()])]


def gemm(flow: Flow, node: gs.Node) -> list[State]:
    a, b = node.inputs[:2]
    trans_a, trans_b = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    state_a, state_b = flow.carries(a), flow.carries(b)
    contract(flow, node, 0 if trans_a else 1, 1 if trans_b else 0)
    rows = state_a.at(1 if trans_a else 0) if state_a else None
    columns = state_b.at(0 if trans_b else 1) if state_b else None
    alongs = {axis: Along(axis, along.inner) for axis, along in ((0, rows), (1, columns)) if along}
    if len(node.inputs) > 2 and node.inputs[2].name:
        meet_all(flow, node, 2, alongs, 2 - flow.rank(node.inputs[2], node), broadcast=True)
    return [Carries.of(list(alongs.values()))]


def reduce(flow: Flow, node: gs.Node) -> list[State]:
    """Reductions (and ArgMax, ArgMin): a reduced axis no longer holds the length; the others move down when the
    reduced axes are dropped."""
    rank = flow.rank(node.inputs[0], node)
    axes_input = optional_input(node, 1)
    if node.op in ("ArgMax", "ArgMin"):
        axes = [node.attrs.get("axis", 0)]
    elif axes_input is not None:
        axes = flow.value(axes_input, node).reshape(-1).tolist()
    else:
        axes = list(node.attrs.get("axes", []))
    if not axes and not node.attrs.get("noop_with_empty_axes", 0):
        axes = list(range(rank))
    reduced = {normalized(a, rank) for a in axes}
    keep = node.attrs.get("keepdims", 1)
    return [Carries.of([Along(a.axis if keep else a.axis - sum(r < a.axis for r in reduced), a.inner)
                        for a in carried(flow, node) if a.axis not in reduced])]


def layer_normalization(flow: Flow, node: gs.Node) -> list[State]:
    """The output keeps the input's length axes; its mean and inverse deviation outputs are not followed."""
    for tensor in node.outputs[1:]:
        if tensor.outputs or tensor in flow.graph.outputs:
            flow.fail(node, f"output {tensor.name!r} (the statistics) is used; dynamic_axes does not follow it")
    return [flow.state(node.inputs[0])] + [None] * (len(node.outputs) - 1)


def recurrent(flow: Flow, node: gs.Node) -> list[State]:
    """LSTM, GRU, RNN run along the length; their full output Y holds it, the last states do not."""
    layout = node.attrs.get("layout", 0)
    step_axis = 1 if layout else 0
    if carried(flow, node) != (Along(step_axis),):
        flow.fail(node, f"runs over axis {step_axis}, but the length is elsewhere in {node.inputs[0].name!r}")
    for tensor in node.inputs[1:]:
        if tensor.name and flow.state(tensor) is not None:
            flow.fail(node, f"takes {tensor.name!r}, which depends on the length, besides its input sequence")
    if optional_input(node, 4) is not None:
        flow.fail(node, "has sequence lengths fixed at the export")
    return [Carries((Along(step_axis),))] + [None] * (len(node.outputs) - 1)


ELEMENTWISE_UNARY = ("Abs", "Cast", "CastLike", "Ceil", "Clip", "Erf", "Exp", "Floor", "Identity", "IsInf", "IsNaN",
                     "Log", "Neg", "Not", "Reciprocal", "Relu", "Round", "Sigmoid", "Sign", "Sqrt", "Tanh")
UNARY = ("Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos",
         "Cosh", "CumSum", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax",
         "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "LogSoftmax", "Mish", "Neg", "Not", "Reciprocal", "Relu",
         "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt",
         "Tan", "Tanh", "ThresholdedRelu", "Trilu")
BROADCAST = ("Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max",
             "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor")
REDUCE = ("ArgMax", "ArgMin", *REDUCTIONS)

RULES: dict[str, Rule] = {
    **{op: unary for op in UNARY},
    **{op: broadcast for op in BROADCAST},
    **{op: reduce for op in REDUCE},
    **{op: reshape_like for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")},
    **{op: recurrent for op in ("LSTM", "GRU", "RNN")},
    "Concat": concat, "ConstantOfShape": constant_of_shape, "Expand": expand, "Gather": gather,
    "GatherElements": gather_elements, "Gemm": gemm, "LayerNormalization": layer_normalization, "MatMul": matmul,
    "Pad": pad, "Range": range_, "Shape": shape_of, "Size": size_of, "Slice": slice_, "Split": split,
    "Tile": tile, "Transpose": transpose,
}
