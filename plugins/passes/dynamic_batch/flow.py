"""The batch flow analysis: where the batch dimension goes in an ONNX graph, and which constants bake it in.

The analysis walks the graph in topological order from the batched inputs and
gives every tensor a state (see ``state``); each op has a rule (see
``rules``) that says where the batch goes through it.

Static dims come from ONNX shape inference with the batch set to the export
batch B (or, when the batch is already symbolic, to ``PROBE``, a size no model
bakes in); where it gives up, nodes are inferred one by one with the values
the walk knows, and small batch-independent subgraphs (the ``Where(Equal(..))``
chains exporters leave) are evaluated with the ONNX reference evaluator.

Where an input carries B at the place the batch flows through (a Reshape to
``[1, -1]``, a zeros constant concatenated along channels, ...) a rule plans
a ``Fix`` that makes it follow the runtime batch; where samples would mix
(reducing or concatenating along the batch, ...) it raises ``SurgeonError``
naming the node. Nothing is decided by looking for the value B alone.

At batch 1 a Reshape can often place the batch on several axes (``[1, 512]``
to ``[1, 1, 512]``); the walk takes the likeliest and, when that leads to
mixed samples further on, backtracks to the next (``follow``).

Tracing folds ``arange`` of the batch into a constant (``[[[[0]]]]`` at batch
1); a rule that finds such a constant behind indices gathering along the batch
axis (see ``indexing``) makes the walk start again with it taken as the sample
index, which then carries the batch and is rebuilt from the runtime batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon import SurgeonError
from surgeon.graph import constant_value, describe, normalized
from surgeon.shapes import captured, inferred_types, opset_imports, topological
from surgeon_plugins.passes.dynamic_batch.build import BatchBuilder
from surgeon_plugins.passes.dynamic_batch.state import Batch, Entry, Positions, State, Term, Value, independent

PROBE = 4099  # stands in for a symbolic batch when inferring static dims
EVALUATION_LIMIT = 1 << 20  # elements: larger constant subgraphs are not evaluated at rewrite time
RANDOM_OPS = frozenset({"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike"})  # never evaluated at rewrite time


@dataclass
class Fix:
    """A planned rewrite: ``node.inputs[index]`` becomes ``build(builder)``."""

    node: gs.Node
    index: int
    reason: str
    build: Callable[[BatchBuilder], gs.Tensor]

    @property
    def where(self) -> str:
        return describe(self.node)


class Reinterpret(Exception):
    """Raised by a rule that found a constant that can be the export's sample index (see ``sample_axes``): the
    walk starts again with ``tensor`` taken as one."""

    def __init__(self, tensor: gs.Tensor) -> None:
        super().__init__(tensor.name)
        self.tensor = tensor


ATTEMPTS = 64  # interpretations of ambiguous reshapes and constants tried before giving up


def follow(graph: gs.Graph, batched: Sequence[gs.Tensor], axis: int, export_batch: int | None,
           rules: Mapping[str, Rule]) -> Flow:
    """The first consistent flow of the batch through ``rules``, trying the alternatives of ambiguous reshapes
    depth first, and starting again whenever a rule takes a constant as the sample index.

    Raises the error of the likeliest interpretation when none is consistent.
    """
    flow = Flow(graph, batched, axis, export_batch, rules)
    first_error = None
    for _ in range(ATTEMPTS):
        try:
            flow.walk()
            return flow
        except Reinterpret as found:
            flow = Flow(graph, batched, axis, export_batch, rules, flow.choices, flow,
                        (*flow.sample_indices, found.tensor))
        except SurgeonError as error:
            first_error = first_error or error
            choices = flow.next_choices()
            if choices is None:
                break
            flow = Flow(graph, batched, axis, export_batch, rules, choices, flow, flow.sample_indices)
    raise first_error or SurgeonError(f"the batch flow was still undecided after {ATTEMPTS} interpretations")


class Flow:
    """The batch state of every tensor of ``graph`` and the fixes that make the batch dynamic."""

    def __init__(self, graph: gs.Graph, batched: Sequence[gs.Tensor], axis: int, export_batch: int | None,
                 rules: Mapping[str, Rule], choices: dict[int, int] | None = None,
                 previous: Flow | None = None, sample_indices: Sequence[gs.Tensor] = ()) -> None:
        self.graph = graph
        self.rules = rules
        self.opset = graph.opset
        self.export_batch = export_batch
        self.batch = export_batch or PROBE
        if previous is None:
            self.order = topological(graph)
            self.types = inferred_types(graph, self.order, {id(tensor): (axis, self.batch) for tensor in batched})
            self.values: dict[int, np.ndarray | None] = {}
            self.inferred: set[int] = set()  # batch-independent nodes inferred one by one (see static_dims)
        else:  # static facts do not depend on where the batch flows
            self.order, self.types, self.values = previous.order, previous.types, previous.values
            self.inferred = previous.inferred
        self.rank_in_order = {id(node): k for k, node in enumerate(self.order)}
        self.states: dict[int, State] = {id(tensor): Batch(axis) for tensor in batched}
        self.positions: dict[int, Positions] = {}  # tensor id -> what a batched index tensor holds
        self.sample_indices = tuple(sample_indices)  # constants taken as the sample index of the export batch
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

    def next_choices(self) -> dict[int, int] | None:
        """The choices of the next interpretation to try: the last open decision takes its next alternative."""
        for position in range(len(self.decisions) - 1, -1, -1):
            node, choice, alternatives = self.decisions[position]
            if choice + 1 < alternatives:
                taken = {n: c for n, c, _ in self.decisions[:position]}
                return {**taken, node: choice + 1}
        return None

    def visit(self, node: gs.Node) -> None:
        for index, tensor in enumerate(node.inputs):
            if any(tensor is taken for taken in self.sample_indices):
                self.number_samples(node, index)
        inner = [self.state(t) for t in captured(node)]
        if not all(independent(state) for state in inner):
            self.fail(node, "uses a batch-dependent tensor inside a subgraph")
        states = [self.state(t) for t in node.inputs]
        if all(independent(state) for state in states):
            return
        self.infer(node)
        rule = self.rules.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if rule is None:
            if any(isinstance(state, Batch) for state in states):
                self.fail(node, f"dynamic_batch does not know how the batch flows through {node.op}")
            outputs: list[State] = [self.opaque(node, t) for t in node.outputs]
        else:
            outputs = rule(self, node)
        self.check_sample_numbers_index(node)
        for tensor, state in zip(node.outputs, outputs):
            if state is not None:
                self.states[id(tensor)] = state

    def check_sample_numbers_index(self, node: gs.Node) -> None:
        """Sample numbers (the sample index and index arithmetic on it, ``positions``) may only become the indices
        of a Gather (or have their shape read): used as data, the output would depend on where each sample sits in
        the batch."""
        numbered = [k for k, tensor in enumerate(node.inputs) if id(tensor) in self.positions]
        if numbered and node.op not in ("Shape", "Size") and not (node.op == "Gather" and numbered == [1]) \
                and not any(id(tensor) in self.positions for tensor in node.outputs):
            self.fail(node, "uses the numbers of the samples in the batch as data; the output would depend on "
                            "where each sample sits in the batch")

    def state(self, tensor: gs.Tensor) -> State:
        return self.states.get(id(tensor))

    def fail(self, node: gs.Node, why: str) -> NoReturn:
        raise SurgeonError(f"{describe(node)} {why}")

    def fix(self, node: gs.Node, index: int, reason: str, build: Callable[[BatchBuilder], gs.Tensor]) -> None:
        self.fixes.append(Fix(node, index, reason, build))

    def number_samples(self, node: gs.Node, index: int) -> None:
        """``node.inputs[index]``, a constant taken as the sample index, carries the batch on one of its
        ``sample_axes`` (the likeliest first) and is rebuilt in ``node`` from the runtime batch."""
        tensor = node.inputs[index]
        array = constant_value(tensor)
        assert array is not None, "only constants are taken as the sample index"
        if id(tensor) not in self.states:
            self.states[id(tensor)] = self.choose(node, [Batch(k) for k in sample_axes(array, self.batch)])
            self.positions[id(tensor)] = Positions(stride=1, span=1)
        state = self.states[id(tensor)]
        if not isinstance(state, Batch):  # chosen above, or on an earlier visit: a sample index holds the batch
            raise TypeError(f"the sample index {tensor.name!r} holds {state!r}, not the batch")
        axis = state.axis
        self.fix(node, index, f"{tensor.name!r} numbers the samples of the export batch {self.batch} on axis "
                              f"{axis}; it numbers those of the runtime batch instead",
                 lambda b: b.sample_index(array.shape, axis, array.dtype))

    # -- what is known about tensors

    def dims_of(self, tensor: gs.Tensor) -> list[int | None] | None:
        """Static dims at the export batch, None where unknown; None when even the rank is unknown."""
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        dims = self.types.get(tensor.name, (None, None))[1]
        if (dims is None or None in dims) and independent(self.state(tensor)):
            self.static_dims(tensor)
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
        dims = fully_known(self.dims_of(tensor))
        if dims is None:
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

    def constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of a batch-independent tensor, evaluating its producers when needed and small."""
        pending, visiting = [tensor], set()
        while pending:
            current = pending[-1]
            if self.known(current) is not None or id(current) in self.values:
                pending.pop()
                continue
            node = current.inputs[0] if current.inputs else None
            evaluable = node is not None and self.evaluable(node)  # before reading inputs: a weight stays on disk
            missing = [] if node is None or not evaluable else [
                t for t in node.inputs if t.name and self.known(t) is None and id(t) not in self.values]
            if node is None or not evaluable or id(current) in visiting and missing:
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

    def known(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of ``tensor`` when it is a constant, evaluated, or a Value of plain numbers."""
        value = constant_value(tensor)
        if value is not None:
            return value
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
            dims = fully_known(self.types.get(output.name, (None, None))[1])
            if dims is not None and math.prod(dims) > EVALUATION_LIMIT:
                return False
        return all(math.prod(t.shape) <= EVALUATION_LIMIT for t in node.inputs if isinstance(t, gs.Constant))

    def opaque(self, node: gs.Node, tensor: gs.Tensor) -> Value:
        """An output computed from batch-dependent shapes in a way not followed here."""
        dims = fully_known(self.dims_of(tensor))
        if dims is None or len(dims) > 1 or (dims and dims[0] > 64):
            self.fail(node, "computes data from the batch size")
        return Value((None,) * (dims[0] if dims else 1), scalar=not dims)

    def static_dims(self, tensor: gs.Tensor) -> None:
        """Fill the dims graph-wide inference missed on a batch-independent tensor: its batch-independent
        producers are inferred one by one, producers first, with the values the walk knows (the shape of an
        Expand computed by a Where, say)."""
        chain, pending = [], [tensor]
        while pending:
            current = pending.pop()
            node = current.inputs[0] if current.inputs else None
            if node is None or id(node) in self.inferred or not all(independent(self.state(t)) for t in node.inputs):
                continue
            self.inferred.add(id(node))
            chain.append(node)
            pending.extend(t for t in node.inputs if None in (self.types.get(t.name, (None, None))[1] or [None]))
        for node in sorted(chain, key=lambda n: self.rank_in_order.get(id(n), -1)):
            self.infer(node)

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
        if isinstance(tensor, gs.Constant):  # its dtype, without reading its values
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
        if tensor.dtype is not None:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
        array = self.constant(tensor) if self.state(tensor) is None else None
        return onnx.helper.np_dtype_to_tensor_dtype(array.dtype) if array is not None else onnx.TensorProto.UNDEFINED

    def resolved(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of a small tensor at the export batch, if known: a constant, or a Value with N = B."""
        state = self.state(tensor)
        if isinstance(state, Value):
            if None in state.entries:
                return None
            entries = [self.batch * e.factor if isinstance(e, Term) else e for e in state.entries]
            return np.array(entries[0] if state.scalar else entries)
        if state is None:
            dims = fully_known(self.dims_of(tensor))
            if dims is not None and math.prod(dims) <= 64:
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

    def sample_block(self, node: gs.Node, tensor: gs.Tensor, axis: int,
                     inner: int) -> Callable[[BatchBuilder], gs.Tensor]:
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
        return lambda b: b.const(f"{tensor.name}_sample", blocks[0])

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
        values: list[int] = array.tolist()  # int64, as ONNX has the shape or repeats input
        entries: list[Entry] = list(values)
        if producer.op == "Tile":
            repeats = values[axis]
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


def evaluate(node: gs.Node, arrays: Sequence[np.ndarray | None], graph: gs.Graph) -> list[np.ndarray] | None:
    """Run one batch-independent node on constant inputs with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    if node.op == "GatherElements":  # the reference evaluator's fails on axes longer than numpy.choose takes
        data, indices = arrays
        if data is None or indices is None:
            return None
        axis = normalized(node.attrs.get("axis", 0), data.ndim)
        return [np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis)]
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


Rule = Callable[[Flow, gs.Node], list[State]]  # the states of a node's outputs, from those of its inputs


def sample_axes(array: np.ndarray, batch: int) -> list[int]:
    """The axes along which integer ``array`` numbers the samples of a batch of ``batch`` (0 to batch - 1 along
    the axis, the same across the others): where it can be ``arange`` of the batch, folded by tracing."""
    if array.dtype.kind not in "iu":
        return []
    return [k for k in range(array.ndim) if array.shape[k] == batch and np.array_equal(
        array, np.broadcast_to(np.arange(batch).reshape([-1 if j == k else 1 for j in range(array.ndim)]),
                               array.shape))]


def fully_known(dims: Sequence[int | None] | None) -> list[int] | None:
    """``dims`` when every one of them is known; None otherwise."""
    if dims is None:
        return None
    known = [d for d in dims if d is not None]
    return known if len(known) == len(dims) else None


def batched_first(flow: Flow, node: gs.Node) -> Batch:
    """The batch state of input 0; every other input must not depend on the batch."""
    state = flow.state(node.inputs[0])
    if not isinstance(state, Batch):
        flow.fail(node, "reads the batch size as data")
    for tensor in node.inputs[1:]:
        if not independent(flow.state(tensor)):
            flow.fail(node, f"has a batch-dependent input {tensor.name!r} that dynamic_batch does not follow")
    return state
