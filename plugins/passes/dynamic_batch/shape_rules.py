"""dynamic_batch's rules for the ops that move the batch between axes or compute shapes from it.

Transposes, squeezes, reshapes, expands, gathers, concatenations, slices,
pads and resizes: the rules that place the batch on an output axis, follow
shape values holding N, and plan the fixes for shapes, sizes and bounds
that bake the export batch in. ``rules`` joins them with the others in the
table the analysis uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx_graphsurgeon as gs

from surgeon.graph import INT64_MAX, normalized, optional_input
from surgeon_plugins.passes.dynamic_batch.build import BatchBuilder
from surgeon_plugins.passes.dynamic_batch.flow import Flow, batched_first, fully_known
from surgeon_plugins.passes.dynamic_batch.indexing import gather_samples
from surgeon_plugins.passes.dynamic_batch.state import (Batch, Entry, State, Term, Value, as_int, independent,
                                                          terms_of)

UNBOUNDED = 1 << 31  # a Slice end at least this large means "to the end"


def int64_constant(name: str, values: list[int]) -> Callable[[BatchBuilder], gs.Tensor]:
    """The fix that builds ``values`` as an int64 constant called ``name``."""
    return lambda builder: builder.ints(name, values)


def transpose(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    rank = flow.rank(node.inputs[0], node)
    perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
    return [state.moved(perm.index(state.axis))]


def axes_of(flow: Flow, node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    axes = optional_input(node, 1)
    return None if axes is None else [as_int(a) for a in flow.entries(axes, node)]


def squeeze(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if isinstance(state, Value):
        return [Value(state.entries, scalar=True)]
    state = batched_first(flow, node)
    axes = axes_of(flow, node)
    if axes is None:
        flow.fail(node, "squeezes every axis of size 1: at a batch of 1 it would remove the batch axis too")
    axes = [normalized(a, flow.rank(node.inputs[0], node)) for a in axes]
    if state.axis in axes:
        flow.fail(node, f"removes axis {state.axis}, which holds the batch; the model cannot take another batch size")
    return [state.moved(state.axis - sum(a < state.axis for a in axes))]


def unsqueeze(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if isinstance(state, Value):
        return [Value(state.entries)]
    state = batched_first(flow, node)
    axes = axes_of(flow, node) or []
    rank = flow.rank(node.inputs[0], node) + len(axes)
    inserted = {normalized(a, rank) for a in axes}
    kept = [k for k in range(rank) if k not in inserted]
    return [state.moved(kept[state.axis])]


def reshape_alternatives(src: Sequence[int], state: Batch, dst: Sequence[int], batch: int,
                         hint: int | None) -> list[Batch]:
    """Where the batch can land when ``src`` (batch ``state``) is reshaped to ``dst``, likeliest first.

    In row-major order the elements of ``src`` are (before) x N x (after); the
    batch lands on the output axis k whose leading axes split ``before`` evenly
    and whose size is a multiple of what is left of ``before`` times the batch.
    The axis ``hint`` names (a runtime N in the new shape) comes first, then
    plain batch axes (nothing of ``before`` left), outermost first.
    """
    before = math.prod(src[: state.axis]) * state.outer
    found = []
    for k, size in enumerate(dst):
        lead = math.prod(dst[:k])
        if size > 0 and before % lead == 0 and size % (before // lead * batch) == 0:
            outer = before // lead
            found.append(Batch(k, size // (outer * batch), outer))
    return sorted(found, key=lambda b: (b.axis != hint, b.outer != 1, b.axis))


def reshape(flow: Flow, node: gs.Node) -> list[State]:
    data, shape = node.inputs[:2]
    state = flow.state(data)
    if not isinstance(state, Batch):
        if isinstance(state, Value) and flow.rank(node.outputs[0], node) <= 1:
            return [Value(state.entries, scalar=flow.rank(node.outputs[0], node) == 0)]
        flow.fail(node, "gives batch-independent data a batch-dependent shape")
    if flow.state(shape) is not None and not isinstance(flow.state(shape), Value):
        flow.fail(node, "reads batched data as a shape")
    src, dst = flow.shape(data, node), flow.shape(node.outputs[0], node)
    entries = flow.entries(shape, node)
    terms = [k for k, e in enumerate(entries) if isinstance(e, Term)]
    alternatives = reshape_alternatives(src, state, dst, flow.batch, terms[0] if terms else None)
    if not alternatives:
        flow.fail(node, f"moves the batch of {data.name!r} (shape {src}, batch on axis {state.axis}) to shape {dst} "
                        "in a way that mixes samples")
    target = flow.choose(node, alternatives)
    entry = entries[target.axis]
    copies = not node.attrs.get("allowzero", 0)
    follows = (entry == -1 or entry is None or entry == Term(target.factor)
               or (entry == 0 and copies and target.axis == state.axis and target.factor == state.factor))
    stale_copy = copies and any(e == 0 and k == state.axis != target.axis for k, e in enumerate(entries))
    if follows and not stale_copy:
        return [target]
    if not all(isinstance(e, int) for e in entries) or 0 in dst:
        flow.fail(node, f"has a shape {list(entries)} that bakes the export batch and cannot be rewritten")
    new = list(dst)
    new[target.axis] = -1
    flow.fix(node, 1, f"shape {list(entries)} bakes the export batch {flow.batch} on axis {target.axis}; "
                      f"it becomes {new}", int64_constant(f"{node.name}_shape", new))
    return [target]


def flatten(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    src, dst = flow.shape(node.inputs[0], node), flow.shape(node.outputs[0], node)
    alternatives = reshape_alternatives(src, state, dst, flow.batch, None)
    if not alternatives:
        flow.fail(node, f"flattens the batch (shape {src} to {dst}) in a way that mixes samples")
    return [flow.choose(node, alternatives)]


def expand(flow: Flow, node: gs.Node) -> list[State]:
    data, shape = node.inputs
    state = flow.state(data)
    if isinstance(state, Value):
        flow.fail(node, "expands a batch-dependent shape value")
    entries = flow.entries(shape, node)
    data_rank = flow.rank(data, node)
    rank = max(data_rank, len(entries))
    offset = rank - len(entries)
    if isinstance(state, Batch):
        axis = state.axis + rank - data_rank
        entry = entries[axis - offset] if axis >= offset else 1
        if entry in (1, None, Term(state.factor)):
            return [state.moved(axis)]
        if not all(isinstance(e, int) for e in entries) or entry != flow.batch * state.factor:
            flow.fail(node, f"expands the batch axis to {entry}")
        new = [as_int(e) for e in entries]
        new[axis - offset] = 1
        flow.fix(node, 1, f"shape {list(entries)} bakes the export batch {flow.batch} on axis {axis}; it becomes "
                          f"{new}, which broadcasts",
                 int64_constant(f"{node.name}_shape", new))
        return [state.moved(axis)]
    terms = terms_of(entries)
    if len(terms) == 1 and None not in entries:
        (position, term), = terms
        target = Batch(position + offset, term.factor)
        if target.axis - (rank - data_rank) >= 0:
            flow.require(node, 0, target.moved(target.axis - (rank - data_rank)), broadcast=True)
        return [target]
    return [flow.locate(node, node.outputs[0])]


def tile(flow: Flow, node: gs.Node) -> list[State]:
    data, repeats = node.inputs
    state = flow.state(data)
    entries = flow.entries(repeats, node)
    if isinstance(state, Batch):
        if entries[state.axis] != 1:
            flow.fail(node, "repeats the whole batch; samples would interleave")
        return [state]
    terms = terms_of(entries)
    if isinstance(state, Value) or len(terms) != 1 or None in entries:
        return [flow.locate(node, node.outputs[0])]
    (axis, term), = terms
    return [Batch(axis, term.factor * flow.shape(data, node)[axis])]


def constant_of_shape(flow: Flow, node: gs.Node) -> list[State]:
    entries = flow.entries(node.inputs[0], node)
    terms = terms_of(entries)
    if len(terms) == 1 and None not in entries:
        (axis, term), = terms
        return [Batch(axis, term.factor)]
    return [flow.locate(node, node.outputs[0])]


def shape_of(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    entries: list[Entry] = list(flow.dims_of(node.inputs[0]) or [])
    if isinstance(state, Batch):
        entries[state.axis] = Term(state.factor)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return [Value(tuple(entries[start:end]))]


def size_of(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if isinstance(state, Value):
        return [Value((1 if state.scalar else len(state.entries),), scalar=True)]
    state = batched_first(flow, node)
    others = fully_known([d for k, d in enumerate(flow.dims_of(node.inputs[0]) or [None]) if k != state.axis])
    return [Value((None if others is None else Term(state.factor * math.prod(others)),), scalar=True)]


def gather(flow: Flow, node: gs.Node) -> list[State]:
    data, indices = node.inputs
    data_state, index_state = flow.state(data), flow.state(indices)
    axis = normalized(node.attrs.get("axis", 0), flow.rank(data, node))
    if isinstance(data_state, Value):
        picks = flow.entries(indices, node)
        positions = [i for i in picks if isinstance(i, int)]
        if len(positions) != len(picks):
            return [flow.opaque(node, node.outputs[0])]
        return [Value(tuple(data_state.entries[i] for i in positions), scalar=flow.rank(indices, node) == 0)]
    if isinstance(data_state, Batch):
        if axis == data_state.axis:
            return [gather_samples(flow, node, data_state, axis)]
        if not independent(index_state):
            flow.fail(node, "gathers batched data with batched indices")
        extra = flow.rank(indices, node) - 1
        return [data_state.moved(data_state.axis if data_state.axis < axis else data_state.axis + extra)]
    if isinstance(index_state, Batch):
        return [index_state.moved(axis + index_state.axis)]
    flow.fail(node, "uses the batch size as an index")


def gather_elements(flow: Flow, node: gs.Node) -> list[State]:
    states = [flow.state(t) for t in node.inputs]
    batched = {s for s in states if isinstance(s, Batch)}
    if len(batched) != 1 or any(isinstance(s, Value) for s in states):
        flow.fail(node, "combines tensors whose batch sits on different axes")
    (state,) = batched
    if normalized(node.attrs.get("axis", 0), flow.rank(node.inputs[0], node)) == state.axis:
        flow.fail(node, "indexes along the batch axis; samples would mix")
    for index in range(len(node.inputs)):
        flow.require(node, index, state)
    return [state]


def concat(flow: Flow, node: gs.Node) -> list[State]:
    states = [flow.state(t) for t in node.inputs]
    if not any(isinstance(s, Batch) for s in states):
        entries: tuple[Entry, ...] = ()
        for tensor in node.inputs:
            entries += flow.entries(tensor, node)
        return [Value(entries)]
    batched = {s for s in states if isinstance(s, Batch)}
    if len(batched) != 1:
        flow.fail(node, "joins tensors whose batch sits on different axes; samples would mix")
    (state,) = batched
    if normalized(node.attrs.get("axis", 0), flow.rank(node.outputs[0], node)) == state.axis:
        flow.fail(node, "concatenates along the batch axis; samples would mix")
    for index, tensor in enumerate(node.inputs):
        if flow.state(tensor) != state:
            flow.require(node, index, state)
    return [state]


def split(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    if normalized(node.attrs.get("axis", 0), flow.rank(node.inputs[0], node)) == state.axis:
        flow.fail(node, "splits the batch axis; the outputs depend on the batch size")
    return [state] * len(node.outputs)


def slice_rule(flow: Flow, node: gs.Node) -> list[State]:
    data = node.inputs[0]
    state = flow.state(data)
    given_axes: Sequence[Entry] | None
    given_steps: Sequence[Entry] | None
    if flow.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        given_axes, given_steps = node.attrs.get("axes"), None
    else:
        starts, ends = (flow.entries(node.inputs[i], node) for i in (1, 2))
        axes_input, steps_input = optional_input(node, 3), optional_input(node, 4)
        given_axes = flow.entries(axes_input, node) if axes_input is not None else None
        given_steps = flow.entries(steps_input, node) if steps_input is not None else None
    axes: list[Entry] = list(given_axes) if given_axes is not None else list(range(len(starts)))
    steps: list[Entry] = list(given_steps) if given_steps is not None else [1] * len(starts)
    if isinstance(state, Value):
        start, end, step = starts[0], ends[0], steps[0]
        if axes not in ([0], [-1]) or not (isinstance(start, int) and isinstance(end, int)
                                           and isinstance(step, int)):
            return [flow.opaque(node, node.outputs[0])]
        return [Value(state.entries[slice(start, min(end, INT64_MAX), step)])]
    if not isinstance(state, Batch):
        flow.fail(node, "slices batch-independent data to a batch-dependent size")
    rank = flow.rank(data, node)
    new_starts, new_ends = list(starts), list(ends)
    for k, (axis, start, end, step) in enumerate(zip(axes, starts, ends, steps)):
        if normalized(as_int(axis), rank) != state.axis:
            if any(isinstance(v, Term) for v in (start, end, step)):
                flow.fail(node, "slices another axis to a batch-dependent size")
            continue
        size = flow.batch * state.factor
        whole = isinstance(start, int) and (start == 0 or start + size <= 0)
        if step != 1 or not whole:
            flow.fail(node, f"takes part of the batch axis (start {start}, step {step}); samples would be dropped")
        if end is None or end == Term(state.factor) or (isinstance(end, int) and end >= UNBOUNDED):
            pass
        elif isinstance(end, int) and end >= size:
            new_ends[k] = INT64_MAX
        else:
            flow.fail(node, f"takes part of the batch axis (end {end} of {size}); samples would be dropped")
        if start != 0:
            new_starts[k] = 0
    for index, old, new, what in ((1, starts, new_starts, "starts"), (2, ends, new_ends, "ends")):
        if new != list(old):
            if flow.opset < 10 or not all(isinstance(v, int) for v in new):
                flow.fail(node, f"has {what} {list(old)} that bake the export batch and cannot be rewritten")
            values = [as_int(v) for v in new]
            flow.fix(node, index, f"{what} {list(old)} bake the export batch {flow.batch}; they become the whole "
                                  "batch axis", int64_constant(f"{node.name}_{what}", values))
    return [state]


def pad(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch):
        flow.fail(node, "pads by a batch-dependent amount")
    rank = flow.rank(node.inputs[0], node)
    if flow.opset < 11:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
    else:
        pads = flow.entries(node.inputs[1], node)
    axes_input = optional_input(node, 3)
    axes = list(range(rank))
    if axes_input is not None:
        axes = [normalized(as_int(a), rank) for a in flow.entries(axes_input, node)]
    if state.axis in axes:
        k = axes.index(state.axis)
        if pads[k] != 0 or pads[k + len(axes)] != 0:
            flow.fail(node, "pads the batch axis; the output depends on the batch size")
    return [state]


def resize(flow: Flow, node: gs.Node) -> list[State]:
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch):
        flow.fail(node, "resizes to a batch-dependent size")
    scales_index = 1 if node.op == "Upsample" or flow.opset < 11 else 2
    scales = optional_input(node, scales_index)
    if scales is not None:
        scales_state = flow.state(scales)
        entries = scales_state.entries if isinstance(scales_state, Value) else flow.entries(scales, node)
        if entries and entries[state.axis] not in (1, None):
            flow.fail(node, f"scales the batch axis by {entries[state.axis]}")
    sizes_input = optional_input(node, 3)
    if node.op == "Resize" and sizes_input is not None:
        sizes = list(flow.entries(sizes_input, node))
        entry = sizes[state.axis]
        if entry not in (None, Term(state.factor)):
            if entry != flow.batch * state.factor or not all(isinstance(e, int) for e in sizes):
                flow.fail(node, f"resizes the batch axis to {entry}")
            new = list(sizes)
            new[state.axis] = Term(state.factor)
            flow.fix(node, 3, f"sizes {sizes} bake the export batch {flow.batch}; they follow the runtime batch "
                              "instead", lambda b: b.shape(new, f"{node.name}_sizes"))
    return [state]
