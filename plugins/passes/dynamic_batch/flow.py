"""Batch flow: where the batch dimension goes in an ONNX graph, and which constants bake it in.

The analysis walks the graph in topological order from the batched inputs and
gives every tensor a state:

- ``None``: it does not depend on the batch (weights, constants, shapes of those);
- ``Batch(axis, inner, outer)``: axis ``axis`` holds the batch; at runtime its
  size there is outer * N * inner, index o * N * inner + i * inner + r
  belonging to sample i (``inner`` and ``outer`` are 1 for a plain batch axis);
- ``Value(entries)``: a small integer tensor computed from shapes that depend
  on the batch; each entry is an int, ``Term(f)`` (N * f at runtime) or None
  (computed at runtime in a way this module does not follow).

Static dims come from ONNX shape inference with the batch set to the export
batch B (or, when the batch is already symbolic, to ``PROBE``, a size no model
bakes in); where it gives up, nodes are inferred one by one with the values
the walk knows, and small batch-independent subgraphs (the ``Where(Equal(..))``
chains exporters leave) are evaluated with the ONNX reference evaluator.

Each op has a rule that says where the batch goes. Where an input
carries B at the place the batch flows through (a Reshape to ``[1, -1]``, a
zeros constant concatenated along channels, ...) the rule plans a ``Fix`` that
makes it follow the runtime batch; where samples would mix (reducing or
concatenating along the batch, ...) the rule raises ``SurgeonError`` naming
the node. Nothing is decided by looking for the value B alone.

At batch 1 a Reshape can often place the batch on several axes (``[1, 512]``
to ``[1, 1, 512]``); the walk takes the likeliest and, when that leads to
mixed samples further on, backtracks to the next (``follow``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon import SurgeonError
from surgeon.shapes import captured, inferred_types, opset_imports, topological

if TYPE_CHECKING:
    from surgeon_plugins.passes.dynamic_batch import Builder

PROBE = 4099  # stands in for a symbolic batch when inferring static dims
EVALUATION_LIMIT = 1 << 20  # elements: larger constant subgraphs are not evaluated at rewrite time
INT64_MAX = int(np.iinfo(np.int64).max)
UNBOUNDED = 1 << 31  # a Slice end at least this large means "to the end"
RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike"})  # never evaluated at rewrite time


@dataclass(frozen=True)
class Batch:
    """The tensor holds the batch on ``axis``: outer x N x inner elements there."""

    axis: int
    inner: int = 1
    outer: int = 1

    @property
    def factor(self) -> int:
        """The size of the batch axis is N * factor."""
        return self.inner * self.outer

    def moved(self, axis: int) -> Batch:
        return Batch(axis, self.inner, self.outer)


@dataclass(frozen=True)
class Term:
    """A shape entry equal to N * factor at runtime."""

    factor: int = 1

    def __repr__(self) -> str:
        return "N" if self.factor == 1 else f"N*{self.factor}"


Entry = Union[int, float, Term, None]


@dataclass(frozen=True)
class Value:
    """A scalar or 1-D integer tensor computed from batch-dependent shapes."""

    entries: tuple[Entry, ...]
    scalar: bool = False

    @property
    def known(self) -> bool:
        """Every entry is a plain number: the value does not depend on the batch after all."""
        return not any(e is None or isinstance(e, Term) for e in self.entries)


def independent(state: State) -> bool:
    return state is None or (isinstance(state, Value) and state.known)


State = Union[Batch, Value, None]


@dataclass
class Fix:
    """A planned rewrite: ``node.inputs[index]`` becomes ``build(builder)``."""

    node: gs.Node
    index: int
    reason: str
    build: Callable[[Builder], gs.Tensor]

    @property
    def where(self) -> str:
        return describe(self.node)


def describe(node: gs.Node) -> str:
    """How messages name a node: by its name, or by its op and first output when it has none."""
    if node.name:
        return f"node {node.name!r} ({node.op})"
    return f"the {node.op} node making {node.outputs[0].name!r}" if node.outputs else f"a {node.op} node"


ATTEMPTS = 64  # interpretations of ambiguous reshapes tried before giving up


def follow(graph: gs.Graph, batched: Sequence[gs.Tensor], axis: int, export_batch: Optional[int]) -> Flow:
    """The first consistent flow of the batch, trying the alternatives of ambiguous reshapes depth first.

    Raises the error of the likeliest interpretation when none is consistent.
    """
    flow = Flow(graph, batched, axis, export_batch)
    first_error = None
    for _ in range(ATTEMPTS):
        try:
            flow.walk()
            return flow
        except SurgeonError as error:
            first_error = first_error or error
            choices = flow.next_choices()
            if choices is None:
                break
            flow = Flow(graph, batched, axis, export_batch, choices, flow)
    raise first_error


class Flow:
    """The batch state of every tensor of ``graph`` and the fixes that make the batch dynamic."""

    def __init__(self, graph: gs.Graph, batched: Sequence[gs.Tensor], axis: int, export_batch: Optional[int],
                 choices: Optional[dict[int, int]] = None, previous: Optional[Flow] = None) -> None:
        self.graph = graph
        self.opset = graph.opset
        self.export_batch = export_batch
        self.batch = export_batch or PROBE
        if previous is None:
            self.order = topological(graph)
            self.types = inferred_types(graph, self.order, {id(tensor): (axis, self.batch) for tensor in batched})
            self.values: dict[int, Optional[np.ndarray]] = {}
        else:  # static facts do not depend on where the batch flows
            self.order, self.types, self.values = previous.order, previous.types, previous.values
        self.states: dict[int, State] = {id(tensor): Batch(axis) for tensor in batched}
        self.choices = choices or {}
        self.decisions: list[tuple[int, int, int]] = []  # (node id, choice, alternatives) in walk order
        self.fixes: list[Fix] = []

    # -- walking the graph

    def walk(self) -> None:
        for node in self.order:
            self.visit(node)
        for tensor in self.graph.outputs:
            state = self.state(tensor)
            if isinstance(state, Batch) and state.outer > 1:
                raise SurgeonError(f"output {tensor.name!r} holds the batch inside axis {state.axis}, behind other "
                                   "data; it cannot be split into samples")

    def choose(self, node: gs.Node, alternatives: Sequence[Batch]) -> Batch:
        choice = self.choices.get(id(node), 0)
        self.decisions.append((id(node), choice, len(alternatives)))
        return alternatives[choice]

    def next_choices(self) -> Optional[dict[int, int]]:
        """The choices of the next interpretation to try: the last open decision takes its next alternative."""
        for position in range(len(self.decisions) - 1, -1, -1):
            node, choice, alternatives = self.decisions[position]
            if choice + 1 < alternatives:
                taken = {n: c for n, c, _ in self.decisions[:position]}
                return {**taken, node: choice + 1}
        return None

    def visit(self, node: gs.Node) -> None:
        inner = [self.state(t) for t in captured(node)]
        if not all(independent(state) for state in inner):
            self.fail(node, "uses a batch-dependent tensor inside a subgraph")
        states = [self.state(t) for t in node.inputs]
        if all(independent(state) for state in states):
            return
        self.infer(node)
        rule = RULES.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if rule is None:
            if any(isinstance(state, Batch) for state in states):
                self.fail(node, f"dynamic_batch does not know how the batch flows through {node.op}")
            outputs = [self.opaque(node, t) for t in node.outputs]
        else:
            outputs = rule(self, node)
        for tensor, state in zip(node.outputs, outputs):
            if state is not None:
                self.states[id(tensor)] = state

    def state(self, tensor: gs.Tensor) -> State:
        return self.states.get(id(tensor))

    def fail(self, node: gs.Node, why: str) -> None:
        raise SurgeonError(f"{describe(node)} {why}")

    def fix(self, node: gs.Node, index: int, reason: str, build: Callable[[Builder], gs.Tensor]) -> None:
        self.fixes.append(Fix(node, index, reason, build))

    # -- what is known about tensors

    def dims_of(self, tensor: gs.Tensor) -> Optional[list[Optional[int]]]:
        """Static dims at the export batch, None where unknown; None when even the rank is unknown."""
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        dims = self.types.get(tensor.name, (None, None))[1]
        declared = tensor.shape
        if dims is None and declared is not None:
            dims = [None] * len(declared)
        if dims is None:
            array = self.constant(tensor) if self.state(tensor) is None else None
            return None if array is None else list(array.shape)
        dims = list(dims)
        if declared is not None and len(declared) == len(dims):
            dims = [d if d is not None else (g if isinstance(g, int) and g >= 0 else None)
                    for d, g in zip(dims, declared)]
        state = self.state(tensor)
        if isinstance(state, Batch) and state.axis < len(dims):
            dims[state.axis] = self.batch * state.factor
        if state is None and None in dims:
            array = self.constant(tensor)
            if array is not None:
                return list(array.shape)
        return dims

    def shape(self, tensor: gs.Tensor, node: gs.Node) -> list[int]:
        dims = self.dims_of(tensor)
        if dims is None or any(d is None for d in dims):
            self.fail(node, f"needs the static shape of {tensor.name!r}, which shape inference does not know")
        return dims

    def rank(self, tensor: gs.Tensor, node: gs.Node) -> int:
        dims = self.dims_of(tensor)
        if dims is None:
            self.fail(node, f"needs the rank of {tensor.name!r}, which shape inference does not know")
        return len(dims)

    def entries(self, tensor: gs.Tensor, node: gs.Node) -> tuple[Entry, ...]:
        """The entries of a scalar or 1-D input: from its Value, or evaluated when it is constant."""
        state = self.state(tensor)
        if isinstance(state, Value):
            return state.entries
        if isinstance(state, Batch):
            self.fail(node, f"reads {tensor.name!r}, a batch-dependent tensor, as a shape")
        array = self.constant(tensor)
        if array is None or array.ndim > 1:
            self.fail(node, f"has a shape input {tensor.name!r} that cannot be evaluated at rewrite time")
        return tuple(array.reshape(-1).tolist())

    def constant(self, tensor: gs.Tensor) -> Optional[np.ndarray]:
        """The value of a batch-independent tensor, evaluating its producers when needed and small."""
        pending, visiting = [tensor], set()
        while pending:
            current = pending[-1]
            if self.known(current) is not None or id(current) in self.values:
                pending.pop()
                continue
            node = current.inputs[0] if current.inputs else None
            missing = [] if node is None else [
                t for t in node.inputs if t.name and self.known(t) is None and id(t) not in self.values]
            if node is None or not self.evaluable(node) or id(current) in visiting and missing:
                self.values[id(current)] = None
            elif missing:
                visiting.add(id(current))
                pending.extend(missing)
                continue
            else:
                arrays = [self.known(t) if t.name else None for t in node.inputs]
                ready = all(a is not None for a, t in zip(arrays, node.inputs) if t.name)
                results = evaluate(node, arrays, self.graph) if ready else None
                for index, output in enumerate(node.outputs):
                    self.values[id(output)] = results[index] if results else None
            pending.pop()
        return self.known(tensor)

    def known(self, tensor: gs.Tensor) -> Optional[np.ndarray]:
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        state = self.state(tensor)
        if isinstance(state, Value):
            if not state.known:
                return None
            elem_type = self.types.get(tensor.name, (None, None))[0] or onnx.TensorProto.INT64
            return np.array(state.entries[0] if state.scalar else state.entries,
                            onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        return self.values.get(id(tensor))

    def evaluable(self, node: gs.Node) -> bool:
        if node.domain not in (None, "", "ai.onnx") or node.op in RANDOM_OPS:
            return False
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return False
        if not all(independent(self.state(t)) for t in node.inputs):
            return False
        for output in node.outputs:
            dims = self.types.get(output.name, (None, None))[1]
            if dims is not None and None not in dims and math.prod(dims) > EVALUATION_LIMIT:
                return False
        return all(math.prod(t.shape) <= EVALUATION_LIMIT for t in node.inputs if isinstance(t, gs.Constant))

    def opaque(self, node: gs.Node, tensor: gs.Tensor) -> Value:
        """An output computed from batch-dependent shapes in a way not followed here."""
        dims = self.dims_of(tensor)
        if dims is None or len(dims) > 1 or None in dims or (dims and dims[0] > 64):
            self.fail(node, "computes data from the batch size")
        return Value((None,) * (dims[0] if dims else 1), scalar=not dims)

    def infer(self, node: gs.Node) -> None:
        """Fill the dims graph-wide inference missed, inferring ``node`` alone with what the flow knows."""
        if all(None not in (self.types.get(t.name, (None, [None]))[1] or [None]) for t in node.outputs):
            return
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return
        from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

        types, data = {}, {}
        for tensor in node.inputs:
            if not tensor.name:
                continue
            elem_type, dims = self.elem_type(tensor), self.dims_of(tensor)
            types[tensor.name] = onnx.helper.make_tensor_type_proto(elem_type, dims)
            value = self.resolved(tensor)
            if value is not None:
                data[tensor.name] = onnx.numpy_helper.from_array(
                    value.astype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)), tensor.name)
        try:
            schema = onnx.defs.get_schema(node.op, self.opset, node.domain or "")
            outputs = onnx.shape_inference.infer_node_outputs(
                schema, OnnxExporter.export_node(node), types, data, opset_imports=opset_imports(self.graph))
        except Exception:
            return
        for name, proto in outputs.items():
            tensor_type = proto.tensor_type
            if tensor_type.HasField("shape"):
                self.types[name] = (tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else None
                                                            for d in tensor_type.shape.dim])

    def elem_type(self, tensor: gs.Tensor) -> int:
        known = self.types.get(tensor.name, (None, None))[0]
        if known:
            return known
        if isinstance(tensor, gs.Constant):
            return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(tensor.values).dtype)
        if tensor.dtype is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
        array = self.constant(tensor) if self.state(tensor) is None else None
        return onnx.helper.np_dtype_to_tensor_dtype(array.dtype) if array is not None else onnx.TensorProto.UNDEFINED

    def resolved(self, tensor: gs.Tensor) -> Optional[np.ndarray]:
        """The value of a small tensor at the export batch, if known: a constant, or a Value with N = B."""
        state = self.state(tensor)
        if isinstance(state, Value):
            if None in state.entries:
                return None
            entries = [self.batch * e.factor if isinstance(e, Term) else e for e in state.entries]
            return np.array(entries[0] if state.scalar else entries)
        if state is None:
            dims = self.dims_of(tensor)
            if dims is not None and None not in dims and math.prod(dims) <= 64:
                return self.constant(tensor)
        return None

    # -- demands on batch-independent operands

    def require(self, node: gs.Node, index: int, target: Batch, broadcast: bool = False) -> None:
        """``node.inputs[index]`` must hold the batch as ``target`` (or, with ``broadcast``, broadcast over it)."""
        tensor = node.inputs[index]
        state = self.state(tensor)
        if isinstance(state, Batch):
            if state != target:
                self.fail(node, f"combines {tensor.name!r} (batch on axis {state.axis}) with a tensor whose batch "
                                f"is on axis {target.axis}; samples would mix")
            return
        if not independent(state):
            self.fail(node, f"combines the batch size {tensor.name!r} with batched data")
        axis, inner = target.axis, target.inner
        size = self.shape(tensor, node)[axis]
        if broadcast and size == 1:
            return
        if size != self.batch * target.factor or target.outer != 1:
            self.fail(node, f"combines {tensor.name!r}, of size {size} on axis {axis}, with the batch there")
        if broadcast and inner == 1:
            block = self.sample_block(node, tensor, axis, inner)
            self.fix(node, index, f"{tensor.name!r} repeats one sample {self.batch} times on axis {axis}; "
                                  "it is reduced to one sample that broadcasts over the batch", block)
        elif self.follow_producer(tensor, axis, inner):
            self.states[id(tensor)] = target
        else:
            block = self.sample_block(node, tensor, axis, inner)
            rank = len(self.shape(tensor, node))
            self.fix(node, index, f"{tensor.name!r} has the export batch {self.batch} on axis {axis}; it is "
                                  "repeated to the runtime batch instead",
                     lambda b: b.repeat(block(b), axis, rank, inner))

    def sample_block(self, node: gs.Node, tensor: gs.Tensor, axis: int, inner: int) -> Callable[[Builder], gs.Tensor]:
        """One sample's block of a batch-independent tensor that repeats it for each sample of the export batch."""
        if self.batch == 1:
            return lambda b: tensor
        array = self.constant(tensor)
        if array is None:
            self.fail(node, f"combines {tensor.name!r} with the batch, and it cannot be evaluated to check that it "
                            "is the same for every sample")
        blocks = np.split(array, self.batch, axis=axis)
        if any(not np.array_equal(blocks[0], other) for other in blocks[1:]):
            self.fail(node, f"combines {tensor.name!r} with the batch, but it differs between the samples of the "
                            "export batch; it cannot follow a dynamic batch")
        return lambda b: b.constant(blocks[0], f"{tensor.name}_sample")

    def follow_producer(self, tensor: gs.Tensor, axis: int, inner: int) -> bool:
        """Rewrite the shape input of the ConstantOfShape, Expand or Tile making ``tensor``, when it is safe."""
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None or len(tensor.outputs) != 1 or tensor in self.graph.outputs:
            return False
        shape_index = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1}.get(producer.op)
        if shape_index is None or len(producer.inputs) <= shape_index:
            return False
        array = self.constant(producer.inputs[shape_index])
        if array is None or array.ndim != 1 or len(array) <= axis:
            return False
        entries: list[Entry] = array.tolist()
        if producer.op == "Tile":
            repeats = entries[axis]
            if repeats % self.batch:
                return False
            entries[axis] = Term(repeats // self.batch)
        else:
            if producer.op == "Expand":
                data = self.dims_of(producer.inputs[0])
                if data is None or len(data) > len(entries):
                    return False
                data_axis = axis - (len(entries) - len(data))
                if data_axis >= 0 and data[data_axis] != 1:
                    return False
            if entries[axis] != self.batch * inner:
                return False
            entries[axis] = Term(inner)
        name = producer.inputs[shape_index].name
        self.fix(producer, shape_index, f"shape {array.tolist()} ({name!r}) bakes the export batch {self.batch} "
                                        f"on axis {axis}; it follows the runtime batch instead",
                 lambda b: b.shape(entries, f"{producer.name or producer.op}_shape"))
        return True

    def locate(self, node: gs.Node, tensor: gs.Tensor) -> Batch:
        """Where the batch is in a tensor whose shape is computed at runtime, read from the probe dims."""
        dims = self.dims_of(tensor) or []
        found = [Batch(k, d // PROBE) for k, d in enumerate(dims) if d and d % PROBE == 0]
        if self.export_batch is not None or len(found) != 1:
            self.fail(node, "computes its output shape from the batch in a way dynamic_batch does not follow")
        return found[0]


def evaluate(node: gs.Node, arrays: Sequence[Optional[np.ndarray]], graph: gs.Graph) -> Optional[list[np.ndarray]]:
    """Run one batch-independent node on constant inputs with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    named = {t.name: a for t, a in zip(node.inputs, arrays) if t.name}
    proto = onnx.helper.make_graph(
        [OnnxExporter.export_node(node)], "evaluate",
        [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in named],
        [onnx.helper.make_value_info(t.name, onnx.TypeProto()) for t in node.outputs])
    try:
        return [np.asarray(r) for r in ReferenceEvaluator(onnx.helper.make_model(
            proto, opset_imports=opset_imports(graph))).run(None, named)]
    except Exception:
        return None


# -- rules: how the batch flows through each op ------------------------------------------------

Rule = Callable[[Flow, gs.Node], list[State]]


def normalized(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def batched_first(flow: Flow, node: gs.Node) -> Batch:
    """The batch state of input 0; every other input must not depend on the batch."""
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch):
        flow.fail(node, "reads the batch size as data")
    for tensor in node.inputs[1:]:
        if not independent(flow.state(tensor)):
            flow.fail(node, f"has a batch-dependent input {tensor.name!r} that dynamic_batch does not follow")
    return state


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
    if any(isinstance(s, Value) for s in states):
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


def within_axis(default: Optional[int], drops_axis: bool = False) -> Rule:
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
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = list(flow.entries(node.inputs[1], node))
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
    if normalized(axis, flow.rank(node.inputs[0], node)) == state.axis:
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


def transpose(flow: Flow, node: gs.Node) -> list[State]:
    state = batched_first(flow, node)
    rank = flow.rank(node.inputs[0], node)
    perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
    return [state.moved(perm.index(state.axis))]


def axes_of(flow: Flow, node: gs.Node) -> Optional[list[int]]:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        return [int(a) for a in flow.entries(node.inputs[1], node)]
    return None


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
                         hint: Optional[int]) -> list[Batch]:
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
                      f"it becomes {new}", lambda b: b.constant(np.array(new, np.int64), f"{node.name}_shape"))
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
        new = list(entries)
        new[axis - offset] = 1
        flow.fix(node, 1, f"shape {list(entries)} bakes the export batch {flow.batch} on axis {axis}; it becomes "
                          f"{new}, which broadcasts",
                 lambda b: b.constant(np.array(new, np.int64), f"{node.name}_shape"))
        return [state.moved(axis)]
    terms = [k for k, e in enumerate(entries) if isinstance(e, Term)]
    if len(terms) == 1 and None not in entries:
        target = Batch(terms[0] + offset, entries[terms[0]].factor)
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
    terms = [k for k, e in enumerate(entries) if isinstance(e, Term)]
    if isinstance(state, Value) or len(terms) != 1 or None in entries:
        return [flow.locate(node, node.outputs[0])]
    axis = terms[0]
    return [Batch(axis, entries[axis].factor * flow.shape(data, node)[axis])]


def constant_of_shape(flow: Flow, node: gs.Node) -> list[State]:
    entries = flow.entries(node.inputs[0], node)
    terms = [k for k, e in enumerate(entries) if isinstance(e, Term)]
    if len(terms) == 1 and None not in entries:
        return [Batch(terms[0], entries[terms[0]].factor)]
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
    others = [d for k, d in enumerate(flow.dims_of(node.inputs[0]) or [None]) if k != state.axis]
    return [Value((None if None in others else Term(state.factor * math.prod(others)),), scalar=True)]


def gather(flow: Flow, node: gs.Node) -> list[State]:
    data, indices = node.inputs
    data_state, index_state = flow.state(data), flow.state(indices)
    axis = normalized(node.attrs.get("axis", 0), flow.rank(data, node))
    if isinstance(data_state, Value):
        picks = flow.entries(indices, node)
        entries = data_state.entries
        if any(not isinstance(i, int) for i in picks):
            return [flow.opaque(node, node.outputs[0])]
        return [Value(tuple(entries[i] for i in picks), scalar=flow.rank(indices, node) == 0)]
    if isinstance(data_state, Batch):
        if axis == data_state.axis:
            flow.fail(node, "picks samples along the batch axis; the output depends on the batch size")
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
    if flow.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = (flow.entries(node.inputs[i], node) for i in (1, 2))
        axes = flow.entries(node.inputs[3], node) if len(node.inputs) > 3 and node.inputs[3].name else None
        steps = flow.entries(node.inputs[4], node) if len(node.inputs) > 4 and node.inputs[4].name else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    if isinstance(state, Value):
        if axes not in ([0], [-1]) or not all(isinstance(v, int) for v in (starts[0], ends[0], steps[0])):
            return [flow.opaque(node, node.outputs[0])]
        return [Value(state.entries[slice(starts[0], min(ends[0], INT64_MAX), steps[0])])]
    if not isinstance(state, Batch):
        flow.fail(node, "slices batch-independent data to a batch-dependent size")
    rank = flow.rank(data, node)
    new_starts, new_ends = list(starts), list(ends)
    for k, (axis, start, end, step) in enumerate(zip(axes, starts, ends, steps)):
        if normalized(axis, rank) != state.axis:
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
            flow.fix(node, index, f"{what} {list(old)} bake the export batch {flow.batch}; they become the whole "
                                  "batch axis", lambda b, new=new, what=what: b.constant(np.array(new, np.int64),
                                                                                         f"{node.name}_{what}"))
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
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3].name:
        axes = [normalized(a, rank) for a in flow.entries(node.inputs[3], node)]
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
    if len(node.inputs) > scales_index and node.inputs[scales_index].name:
        scales = node.inputs[scales_index]
        entries = (flow.state(scales).entries if isinstance(flow.state(scales), Value)
                   else flow.entries(scales, node))
        if entries and entries[state.axis] not in (1, None):
            flow.fail(node, f"scales the batch axis by {entries[state.axis]}")
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        sizes = list(flow.entries(node.inputs[3], node))
        entry = sizes[state.axis]
        if entry not in (None, Term(state.factor)):
            if entry != flow.batch * state.factor or not all(isinstance(e, int) for e in sizes):
                flow.fail(node, f"resizes the batch axis to {entry}")
            new = list(sizes)
            new[state.axis] = Term(state.factor)
            flow.fix(node, 3, f"sizes {sizes} bake the export batch {flow.batch}; they follow the runtime batch "
                              "instead", lambda b: b.shape(new, f"{node.name}_sizes"))
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
    if len(node.inputs) > 2 and node.inputs[2].name and flow.state(node.inputs[2]) != target:
        aligned = target.axis - (2 - flow.rank(node.inputs[2], node))
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
        if independent(state):
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
    return [state.moved(0 if layout else 2)] + [state.moved(0 if layout else 1)] * (len(node.outputs) - 1)


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
REDUCE = """ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare""".split()

RULES: dict[str, Rule] = {
    **{op: broadcast for op in ELEMENTWISE},
    **{op: per_sample for op in PER_SAMPLE},
    **{op: reduce for op in REDUCE},
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
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Reshape": reshape,
    "Flatten": flatten,
    "Expand": expand,
    "Tile": tile,
    "ConstantOfShape": constant_of_shape,
    "Shape": shape_of,
    "Size": size_of,
    "Gather": gather,
    "GatherElements": gather_elements,
    "Concat": concat,
    "Split": split,
    "Slice": slice_rule,
    "Pad": pad,
    "Resize": resize,
    "Upsample": resize,
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
