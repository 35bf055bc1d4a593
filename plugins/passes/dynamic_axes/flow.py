"""The length flow: where a named axis of the inputs (the token length, say) goes in an ONNX graph exported at
one fixed length L, and which tensors and constants bake L in.

Every tensor gets a state:

- ``None``: its size does not depend on the length (weights, the other axes' shapes, data computed from them);
- ``Carries(alongs)``: the axes that hold the length; axis ``a`` of ``Along(a, inner)`` is L * inner * outer
  long at the export (``inner`` and ``outer``: dims merged into it after and before the length);
- ``Entries(factors)``: a scalar or 1-D integer tensor computed from shapes; entry k is ``factors[k]`` times the
  length plus a fixed number (0: it does not scale with the length; None: computed in a way not followed).

Static dims and the values of small integer tensors are observed: the graph runs once in onnxruntime at the export
length, every tensor an output. The walk (rules in ``rules``) then plans ``Fix``es:

- a tensor that does not carry the length but meets it with L on one of its axes (a folded position embedding, a
  causal mask, a slice of a buffer) is cut to the first S entries on those axes, S the runtime length: what it
  holds for the first S positions is what it held for them at L;
- an integer constant that holds 0 .. L-1 along one axis (positions, folded from ``arange`` by tracing) carries
  the length, and is cut the same way;
- an entry of a shape (Reshape, Expand) that bakes L where the length goes becomes S times its factor.

What does not follow (a length split, concatenated or padded along, a convolution over it) stops the walk with an
error naming the node. Cutting is exact for any S <= L; the verification of the rewritten model at several lengths
is what proves the model computes at S what it computed for its first S positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon import SurgeonError
from surgeon.graph import Builder, constant_value, describe, normalized
from surgeon.shapes import captured, inferred_types, topological

SMALL = 64  # elements: integer tensors this small have their values observed (shapes, axes, indices)
PROBE_BATCHES = (3, 5, 7, 11, 13)
VALUE_KEEPING = ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten")  # positions stay positions  # a symbolic batch is observed at the first that is no divisor of L


@dataclass(frozen=True)
class Along:
    """An axis that holds the length: L * inner * outer long at the export (``inner``, ``outer``: dims merged in
    after and before the length)."""

    axis: int
    inner: int = 1


@dataclass(frozen=True)
class Carries:
    """The axes of a tensor that hold the length."""

    alongs: tuple[Along, ...]

    def at(self, axis: int) -> Along | None:
        return next((along for along in self.alongs if along.axis == axis), None)

    @staticmethod
    def of(alongs: Sequence[Along]) -> Carries | None:
        return Carries(tuple(sorted(alongs, key=lambda a: a.axis))) if alongs else None


@dataclass(frozen=True)
class Entries:
    """A scalar or 1-D integer tensor computed from shapes: entry k is ``factors[k]`` * S + a fixed number at
    runtime (factor 0: it does not scale with the length; None: computed in a way the walk does not follow)."""

    factors: tuple[int | None, ...]


State = Carries | Entries | None


@dataclass
class Fixes:
    """The rewrites planned for one input of one node: axes to cut to the runtime length (axis -> inner), or shape
    entries to replace (position -> factor of the length, or None for 1)."""

    node: gs.Node
    index: int
    cut: dict[int, int] = field(default_factory=dict)
    entries: dict[int, int | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


class LengthBuilder(Builder):
    """A graph kit ``Builder`` that also reads the runtime length S from an input that carries it."""

    def __init__(self, graph: gs.Graph, source: gs.Tensor, axis: int) -> None:
        super().__init__(graph, prefix="dynamic_axes/")
        self.source, self.axis = source, axis

    def length(self, factor: int = 1) -> gs.Tensor:
        """An int64 [1] tensor holding S * factor (made once per factor)."""
        return self.size(self.source, self.axis, "length", factor)

    def cut(self, tensor: gs.Tensor, axes: Mapping[int, int]) -> gs.Tensor:
        """``tensor`` cut to S * inner entries on each of ``axes`` (axis -> inner)."""
        ends = [self.length(inner) for _, inner in sorted(axes.items())]
        end = ends[0] if len(ends) == 1 else self.op("Concat", ends, "cut_ends", dtype=np.int64, axis=0)
        return self.op("Slice", [tensor, self.ints("zeros", [0] * len(axes)), end, self.ints("cut_axes", sorted(axes))],
                       f"{tensor.name.lstrip('/')}_cut", dtype=tensor.dtype)

    def replaced(self, shape: gs.Tensor, size: int, entries: Mapping[int, int | None]) -> gs.Tensor:
        """The 1-D ``shape`` (``size`` long) with each entry of ``entries`` replaced by S * factor (1 for None)."""
        parts = [self.ints("one", [1]) if (factor := entries.get(k)) is None else self.length(factor)
                 for k in range(size)]
        values = self.op("Concat", parts, "entries", dtype=np.int64, axis=0) if size > 1 else parts[0]
        mask = self.const("replaced", [k in entries for k in range(size)], np.bool_)
        return self.op("Where", [mask, values, shape], f"{shape.name.lstrip('/')}_replaced", dtype=np.int64)


class Flow:
    """The length state of every tensor of ``graph`` and the fixes that make the length dynamic."""

    def __init__(self, graph: gs.Graph, starts: Sequence[tuple[gs.Variable, int]], length: int,
                 rules: Mapping[str, Rule]) -> None:
        self.graph, self.length, self.rules = graph, length, rules
        self.order = topological(graph)
        self.shapes, self.values = observe(graph, self.order, length)
        self.on_data = on_data(graph, self.order)
        self.states: dict[int, State] = {}
        for tensor, _ in starts:
            self.states[id(tensor)] = Carries.of([Along(axis) for other, axis in starts if other is tensor])
        self.positions = {id(tensor): state for tensor in graph.tensors().values()
                          if (state := positions(tensor, length)) is not None}
        self.fixes: dict[tuple[int, int], Fixes] = {}
        self.plain: set[int] = set()  # positions that do not count the length in the node visited (``counts``)
        self.copies: dict[int, set[int]] = {}  # tensor id -> axes that repeat one slice (Expand from size 1)

    # -- walking the graph

    def walk(self) -> None:
        for node in self.order:
            self.visit(node)
        for tensor in self.graph.outputs:
            state, dims = self.carries(tensor), self.known_dims(tensor)
            if state is None or dims is None:
                continue
            for along in state.alongs:
                if dims[along.axis] != self.length:
                    raise SurgeonError(f"output {tensor.name!r} holds the length merged with other dims on axis "
                                       f"{along.axis} ({dims[along.axis]} at the export length {self.length}); an "
                                       "output needs the length on an axis of its own to be named and checked")

    def visit(self, node: gs.Node) -> None:
        if any(self.state(t) is not None for t in captured(node)):
            self.fail(node, "uses a tensor that holds the length inside a subgraph")
        if self.keeps_positions(node):
            return
        self.plain = {id(t) for k, t in enumerate(node.inputs) if id(t) in self.positions and not self.counts(node, k)}
        for index, tensor in enumerate(node.inputs):
            if id(tensor) in self.positions and id(tensor) not in self.plain:
                along = self.positions[id(tensor)]
                self.cut(node, index, along.axis, along.inner,
                         f"{tensor.name!r} holds the positions 0 to {self.length - 1}; it is cut to the runtime length")
        if all(self.state(t) is None for t in node.inputs):
            return
        rule = self.rules.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if rule is None:
            self.fail(node, f"dynamic_axes does not know how the length flows through {node.op}")
        for tensor, state in zip(node.outputs, rule(self, node)):
            if state is not None:
                self.states[id(tensor)] = state

    def keeps_positions(self, node: gs.Node) -> bool:
        """A Cast or reshape of positions (and fixed shapes) holds positions too: whether they count the length is
        decided where they are used (``counts``), not here."""
        if node.op not in VALUE_KEEPING or len(node.outputs) != 1 or not node.inputs \
                or id(node.inputs[0]) not in self.positions or any(self.state(t) for t in node.inputs[1:]):
            return False
        dims = self.known_dims(node.outputs[0])
        if dims is None or dims.count(self.length) != 1 or math.prod(dims) != self.length:
            return False
        self.positions[id(node.outputs[0])] = Along(dims.index(self.length))
        return True

    def counts(self, node: gs.Node, index: int) -> bool:
        """Whether the positions ``node.inputs[index]`` count the length in ``node``. Not when they index an axis
        of data that holds the length elsewhere (features picked by number), nor when they line up with an axis of
        another input that holds the length elsewhere and is L long there (channels that happen to number L) or 1
        long there while its values come from the inputs (``ids[..., None] == arange(V)``, a one-hot over a
        vocabulary of L, or of a prediction): positions meet the length only as a table's indices, each other, or
        shapes. (A model fed lengths, ``arange(L) < lengths[:, None]``, is refused for it.)"""
        along, rank = self.positions[id(node.inputs[index])], len(self.known_dims(node.inputs[index]) or ())
        for k, other in enumerate(node.inputs):
            state, dims = self.states.get(id(other)), self.known_dims(other)
            if k == index or dims is None:
                continue
            holds = state if isinstance(state, Carries) else None
            if node.op in ("Gather", "GatherElements") and index == 1:
                return holds is None or holds.at(normalized(node.attrs.get("axis", 0), len(dims))) is not None
            axis = along.axis - rank + len(dims)
            if not 0 <= axis < len(dims) or holds and holds.at(axis):
                continue
            if holds and dims[axis] == self.length or dims[axis] == 1 and id(other) in self.on_data:
                return False
        return True

    def state(self, tensor: gs.Tensor) -> State:
        if id(tensor) in self.positions and id(tensor) not in self.plain:
            return Carries((self.positions[id(tensor)],))
        return self.states.get(id(tensor))

    def carries(self, tensor: gs.Tensor) -> Carries | None:
        state = self.state(tensor)
        return state if isinstance(state, Carries) else None

    def fail(self, node: gs.Node, why: str) -> NoReturn:
        raise SurgeonError(f"{describe(node)} {why}")

    # -- what is known about tensors

    def known_dims(self, tensor: gs.Tensor) -> list[int] | None:
        """The dims of ``tensor`` at the export length; None when the observation did not give them."""
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        dims = self.shapes.get(tensor.name)
        if dims is None and (value := constant_value(tensor)) is not None:
            dims = value.shape
        return None if dims is None else list(dims)

    def dims(self, tensor: gs.Tensor, node: gs.Node) -> list[int]:
        """The dims of ``tensor`` at the export length."""
        dims = self.known_dims(tensor)
        if dims is None:
            self.fail(node, f"needs the shape of {tensor.name!r}, which the run at the export length did not give")
        return dims

    def rank(self, tensor: gs.Tensor, node: gs.Node) -> int:
        return len(self.dims(tensor, node))

    def value(self, tensor: gs.Tensor, node: gs.Node) -> np.ndarray:
        """The value of a small integer tensor at the export length."""
        if id(tensor) in self.on_data:
            self.fail(node, f"needs the value of {tensor.name!r}, which depends on what the inputs hold")
        value = self.fixed(tensor)
        if value is None or value.size > SMALL:
            self.fail(node, f"needs the value of {tensor.name!r}, which is not a small integer tensor")
        return value

    def factors(self, tensor: gs.Tensor, node: gs.Node) -> tuple[int | None, ...]:
        """The factors of a scalar or 1-D integer tensor (see ``Entries``): 0 for each entry of one that does not
        depend on the length."""
        state = self.state(tensor)
        if isinstance(state, Carries):
            self.fail(node, f"reads {tensor.name!r}, which holds the length, as a shape")
        if isinstance(state, Entries):
            return state.factors
        return (0,) * math.prod(self.dims(tensor, node))

    def fixed(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of a small integer tensor that depends on nothing the inputs hold; None otherwise."""
        if id(tensor) in self.on_data:
            return None
        value = self.values.get(tensor.name)
        return constant_value(tensor) if value is None else value

    # -- planning fixes

    def plan(self, node: gs.Node, index: int) -> Fixes:
        key = (id(node), index)
        if key not in self.fixes:
            self.fixes[key] = Fixes(node, index)
        return self.fixes[key]

    def cut(self, node: gs.Node, index: int, axis: int, inner: int, reason: str) -> None:
        """``node.inputs[index]`` is cut to the runtime length on ``axis`` (S * inner entries)."""
        fixes = self.plan(node, index)
        fixes.cut[axis] = inner
        fixes.reasons.append(reason)

    def replace_entry(self, node: gs.Node, index: int, position: int, factor: int | None, reason: str) -> None:
        """Entry ``position`` of the shape ``node.inputs[index]`` becomes S * factor (1 for None)."""
        fixes = self.plan(node, index)
        fixes.entries[position] = factor
        fixes.reasons.append(reason)

    def meet(self, node: gs.Node, index: int, axis: int, along: Along, broadcast: bool) -> None:
        """``node.inputs[index]``, which does not hold the length on ``axis``, meets it there (as ``along``): a
        size 1 broadcasts (with ``broadcast``), L * inner is cut to the runtime length, anything else fails."""
        tensor = node.inputs[index]
        size = self.dims(tensor, node)[axis]
        if broadcast and size == 1:
            return
        if size != self.length * along.inner:
            self.fail(node, f"combines {tensor.name!r}, of size {size} on axis {axis}, with the length there")
        if tensor in self.graph.inputs:
            self.fail(node, f"combines the input {tensor.name!r}, {size} long on axis {axis}, with the length there; "
                            f"if that axis is the length too, name it in axes ({tensor.name}:{axis}:NAME)")
        if id(tensor) in self.on_data and axis not in self.copies.get(id(tensor), set()):
            self.fail(node, f"combines {tensor.name!r}, which the inputs' data fill, {size} long on axis {axis}, with "
                            "the length there; only constants that hold L rows (positions, masks, embeddings) are "
                            "cut to the runtime length")
        self.cut(node, index, axis, along.inner,
                 f"{tensor.name!r} has the export length {self.length} on axis {axis}; it is cut to the runtime length")

    def apply(self, builder: LengthBuilder) -> list[str]:
        """Splice every planned fix into the graph; what was done, in words."""
        done = []
        for fixes in self.fixes.values():
            tensor = fixes.node.inputs[fixes.index]
            if fixes.entries:
                tensor = builder.replaced(tensor, len(self.factors(tensor, fixes.node)), fixes.entries)
            if fixes.cut:
                tensor = builder.cut(tensor, fixes.cut)
            fixes.node.inputs[fixes.index] = tensor
            done += [f"{describe(fixes.node)}: {reason}" for reason in dict.fromkeys(fixes.reasons)]
        return done


Rule = Callable[[Flow, gs.Node], list[State]]  # the states of a node's outputs, from those of its inputs


def positions(tensor: gs.Tensor, length: int) -> Along | None:
    """Where an integer constant holds 0 .. length - 1 along one axis, 1 long on the others: the positions of a
    sequence of the export length, which tracing folds from ``arange``."""
    if isinstance(tensor, gs.Constant):
        if math.prod(tensor.shape) != length or numpy_kind(tensor.dtype) not in ("i", "u"):
            return None  # without reading the values of a weight
    elif len(tensor.inputs) != 1 or tensor.inputs[0].op != "Constant":
        return None
    values = constant_value(tensor)
    if values is None or values.dtype.kind not in "iu" or values.size != length or values.shape.count(length) != 1:
        return None
    if not np.array_equal(values.reshape(-1), np.arange(length)):
        return None
    return Along(values.shape.index(length))


def observe(graph: gs.Graph, order: Sequence[gs.Node], length: int) -> tuple[dict[str, tuple[int, ...]],
                                                                         dict[str, np.ndarray]]:
    """Run ``graph`` once in onnxruntime at the export length, every tensor an output: the dims of each tensor,
    and the values of the small integer ones. A symbolic batch (axis 0) is fed at a size no divisor of the length,
    other symbolic dims at 4; floats are seeded noise, integers and booleans zeros (token ids, masks and indices
    that are always in range)."""
    from surgeon.feeds import SYMBOLIC_DIM_SIZE
    from surgeon.verify import onnxruntime_runner

    types = inferred_types(graph, order)
    outputs = [t for node in order for t in node.outputs
               if isinstance(t, gs.Variable) and t.name and types.get(t.name, (0, None))[0]]
    observed = graph.copy()
    by_name = observed.tensors()
    observed.outputs = [by_name[t.name] for t in outputs]
    for tensor, original in zip(observed.outputs, outputs):
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(types[original.name][0])
        tensor.shape = None
    model = gs.export_onnx(observed, do_type_check=False)
    batch = next(size for size in PROBE_BATCHES if length % size)
    rng = np.random.default_rng(0)
    inputs = [t for t in graph.inputs if isinstance(t, gs.Variable)]
    feed = []
    for tensor in inputs:
        dims = [size if isinstance(size, int) and size >= 0 else batch if axis == 0 else SYMBOLIC_DIM_SIZE
                for axis, size in enumerate(tensor.shape or [])]
        if numpy_kind(tensor.dtype) is None:
            raise SurgeonError(f"input {tensor.name!r} has the type {tensor.dtype}, which numpy (and so the "
                               "observation run) has no type for")
        dtype = np.dtype(tensor.dtype)
        feed.append(rng.standard_normal(dims).astype(dtype) if dtype.kind in "fc" else np.zeros(dims, dtype))
    try:
        results = onnxruntime_runner(model, optimized=False)([feed])[0]
    except Exception as error:
        raise SurgeonError(f"onnxruntime cannot run the model at its export length, zero token ids, to observe its "
                           f"shapes: {error}")
    named = [*zip(inputs, feed), *zip(outputs, results)]
    shapes = {t.name: tuple(array.shape) for t, array in named}
    values = {t.name: np.asarray(array) for t, array in named if array.dtype.kind in "iub" and array.size <= SMALL}
    return shapes, values


def on_data(graph: gs.Graph, order: Sequence[gs.Node]) -> set[int]:
    """The tensors whose values depend on what the inputs hold, not only on their shapes: their observed values
    are those of the observation's feed, not constants."""
    found = {id(t) for t in graph.inputs}
    for node in order:
        if node.op not in ("Shape", "Size") and any(id(t) in found for t in [*node.inputs, *captured(node)]):
            found.update(id(t) for t in node.outputs)
    return found


def numpy_kind(dtype: Any) -> str | None:
    """The numpy kind of an onnx-graphsurgeon dtype (``i``, ``u``, ``f``, ``b``...); None for a type numpy has no
    dtype for (onnx-graphsurgeon keeps bfloat16 and the float8 types as their ONNX numbers)."""
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return None
