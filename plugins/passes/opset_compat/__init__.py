"""opset_compat: fit a model to the operator versions the installed onnx-tf converts.

onnx-tf converts a node only when it implements the version of the
operator's schema in force at the model's opset (see ``onnx_tf_support``).
Modern exports fall outside that set: onnx-tf 1.10 has no Squeeze-13 or
Unsqueeze-13, so nearly every model exported at opset 13 or later fails, and
no LayerNormalization (opset 17) or Gelu (opset 20) at all.

This pass picks the opset, at most the model's, that leaves the fewest nodes
onnx-tf cannot convert (the highest among equals), and brings each node
there:

- a node whose schema changed between the two opsets steps down its
  versions one at a time: free where the versions differ in types only
  (the types the model records are checked), dropping attributes left at
  their defaults, or through an adapter where the schemas differ (axes and
  split inputs become attributes, Softmax's axis, Resize's optional inputs,
  Pad's axes, Shape's start and end, ceil-mode pooling, ...);
- an operator onnx-tf lacks (LayerNormalization, RMSNormalization,
  GroupNormalization, Gelu, Mish), or one that does not exist yet at the
  opset chosen (Trilu, HardSwish, CastLike: PyTorch's causal attention at
  opset 14 holds both Trilu-14 and Squeeze-13, and onnx-tf converts Squeeze
  only at opsets below 13), is decomposed into primitives onnx-tf has; the
  deprecated Upsample and Scatter become Resize and ScatterElements.

A node it cannot bring within the set (a custom domain, an operator with no
handler and no decomposition, axes computed at run time) stays as it is, and
an opset where its schema would change is ruled out; it is named in the log,
the details and the detector's findings.
``explain_unsupported`` says, for a model that onnx-tf will refuse, which
node and operator, and whether this pass fixes it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon import Finding, RewritePass, SurgeonError, hookimpl
from surgeon.naming import fresh_name
from surgeon.shapes import inferred_types
from surgeon_plugins.converters.onnx_tf.support import ONNX_DOMAINS, Handlers, handlers, since_version

log = logging.getLogger("surgeon")

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class OpsetCompatOptions:
    opset: Optional[int] = field(default=None, metadata={
        "doc": "the highest opset to bring the model to (default: the model's own, lowered only as far as "
               "onnx-tf needs)"})

    def __post_init__(self) -> None:
        if self.opset is not None and self.opset < 1:
            raise ValueError("opset must be 1 or more")


class Unfixable(Exception):
    """Why a node cannot be brought within onnx-tf's set at the opset considered."""


Edit = Callable[[Any, "Builder"], None]  # edits a node (or a Sketch of it) in place


@dataclass(frozen=True)
class Step:
    """One change to a node: what it does, for people, and the edit."""

    what: Optional[str]
    edit: Edit


@dataclass
class Rewrite:
    """What becomes of one node: ``source`` (e.g. Squeeze-13) becomes ``target``."""

    graph: gs.Graph
    node: gs.Node
    source: str
    target: str
    edits: list[Edit]


@dataclass
class Blocked:
    """A node left as it is, and why."""

    node: gs.Node
    source: str
    reason: str


@dataclass
class Plan:
    """The opset to bring the model to, and what happens to each node on the way."""

    opset: int
    target: int
    rewrites: list[Rewrite] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    unsupported: list[tuple[gs.Node, str]] = field(default_factory=list)  # as the model stands: node, "Op-N"

    @property
    def changes(self) -> bool:
        return self.target != self.opset or any(r.edits for r in self.rewrites)


# ---------------------------------------------------------------- reading the graph


def live_nodes(graph: gs.Graph) -> Iterator[tuple[gs.Graph, gs.Node]]:
    """Every node that still produces something, with the graph holding it, subgraphs included."""
    for node in graph.nodes:
        if not node.outputs:
            continue
        yield graph, node
        for value in node.attrs.values():
            for subgraph in value if isinstance(value, list) else [value]:
                if isinstance(subgraph, gs.Graph):
                    yield from live_nodes(subgraph)


def is_onnx(node: gs.Node) -> bool:
    return (node.domain or "") in ONNX_DOMAINS


def label(node: gs.Node, opset: int) -> str:
    """``Squeeze-13``: the operator and the version of its schema at ``opset``."""
    if not is_onnx(node):
        return f"{node.domain}.{node.op}"
    since = since_version(node.op, opset)
    return f"{node.op}-{since}" if since else node.op


def describe(node: gs.Node) -> str:
    return repr(node.name) if node.name else f"{node.op} -> {node.outputs[0].name!r}"


def is_empty(tensor: Optional[gs.Tensor]) -> bool:
    """An omitted optional input or output."""
    return tensor is None or not tensor.name


def optional_input(node: gs.Node, index: int) -> Optional[gs.Tensor]:
    return None if len(node.inputs) <= index or is_empty(node.inputs[index]) else node.inputs[index]


def constant_value(tensor: Optional[gs.Tensor]) -> Optional[np.ndarray]:
    """The value of an initializer or a Constant node's output; None when computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor is None or len(tensor.inputs) != 1 or tensor.inputs[0].op != "Constant":
        return None
    attrs = tensor.inputs[0].attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    for name in ("value_int", "value_ints", "value_float", "value_floats"):
        if name in attrs:
            return np.asarray(attrs[name])
    return None


def rank_of(tensor: gs.Tensor) -> Optional[int]:
    return len(tensor.shape) if tensor.shape is not None else None


def onnx_type(dtype: Any) -> Optional[int]:
    """The TensorProto element type of a gs dtype (a NumPy dtype, or the ONNX type NumPy lacks)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError):
        return None


def element_type(tensor: gs.Tensor) -> Optional[int]:
    """The ONNX element type of ``tensor``: recorded, or followed back through producers whose schemas tie the
    output's type to an input's (or fix it)."""
    seen: set[int] = set()
    while id(tensor) not in seen:
        seen.add(id(tensor))
        known = onnx_type(tensor.dtype)
        if known is not None or len(tensor.inputs) != 1:
            return known
        producer = tensor.inputs[0]
        if producer.op == "Cast":
            return producer.attrs.get("to")
        if producer.op in ("Constant", "ConstantOfShape"):
            value = producer.attrs.get("value")
            return onnx_type(value.dtype) if isinstance(value, gs.Constant) else (
                onnx.TensorProto.FLOAT if producer.op == "ConstantOfShape" else None)
        if not is_onnx(producer) or not schema_versions(producer.op):
            return None
        latest = schema(producer.op, schema_versions(producer.op)[-1])
        index = next(i for i, output in enumerate(producer.outputs) if output is tensor)
        formal = latest.outputs[min(index, len(latest.outputs) - 1)]
        if len(formal.allowed) == 1:
            return TYPE_STRINGS.get(next(iter(formal.allowed)))
        source = next((i for i, given in enumerate(latest.inputs) if given.type_str == formal.type_str
                       and i < len(producer.inputs) and not is_empty(producer.inputs[i])), None)
        if source is None:
            return None
        tensor = producer.inputs[source]
    return None


TYPE_STRINGS = {f"tensor({name.lower()})": value for name, value in onnx.TensorProto.DataType.items()}


def known_type(tensor: gs.Tensor) -> int:
    """The element type of ``tensor``; Unfixable when it cannot be told."""
    elem = element_type(tensor)
    if elem is None:
        raise Unfixable(f"the element type of {tensor.name!r} is not recorded in the model")
    return elem


def float_type(tensor: gs.Tensor) -> np.dtype:
    """The NumPy dtype of a floating-point tensor; Unfixable when it is not one or cannot be told."""
    elem = known_type(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    if dtype.kind != "f":
        raise Unfixable(f"{tensor.name!r} is {onnx.TensorProto.DataType.Name(elem).lower()}, not a float type")
    return dtype


# ---------------------------------------------------------------- building


class Builder:
    """Adds nodes to one graph, in the forms of the target opset, with names unique in the whole model.

    Without a graph it only makes tensors: planning runs the edits on a ``Sketch`` with such a builder.
    """

    def __init__(self, graph: Optional[gs.Graph], opset: int, taken: set[str]) -> None:
        self.graph, self.opset, self.taken = graph, opset, taken

    def name(self, base: str) -> str:
        return fresh_name(base, self.taken)

    def const(self, base: str, values: Any, dtype: Any = None) -> gs.Constant:
        return gs.Constant(self.name(base), np.asarray(values, dtype=dtype))

    def op(self, op: str, inputs: Sequence[gs.Tensor], base: str, output: Optional[gs.Tensor] = None,
           **attrs: Any) -> gs.Tensor:
        output = output if output is not None else gs.Variable(self.name(f"{base}_output"))
        if self.graph is not None:
            self.graph.nodes.append(gs.Node(op, self.name(base), attrs, list(inputs), [output]))
        return output

    def reduce_mean(self, x: gs.Tensor, axes: list[int], base: str) -> gs.Tensor:
        if (since_version("ReduceMean", self.opset) or 0) >= 18:
            return self.op("ReduceMean", [x, self.const(f"{base}/axes", axes, np.int64)], base, keepdims=1)
        return self.op("ReduceMean", [x], base, axes=axes, keepdims=1)

    def unsqueeze(self, x: gs.Tensor, axes: list[int], base: str) -> gs.Tensor:
        if (since_version("Unsqueeze", self.opset) or 0) >= 13:
            return self.op("Unsqueeze", [x, self.const(f"{base}/axes", axes, np.int64)], base)
        return self.op("Unsqueeze", [x], base, axes=axes)

    def cast(self, x: gs.Tensor, dtype: np.dtype, base: str) -> gs.Tensor:
        return self.op("Cast", [x], base, to=onnx.helper.np_dtype_to_tensor_dtype(dtype))


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
        return cls(node.op, node.name, dict(node.attrs), list(node.inputs), list(node.outputs))


def base_name(node: gs.Node) -> str:
    return node.name or f"{node.op}_{node.outputs[0].name}"


def take_outputs(node: gs.Node) -> list[Optional[gs.Tensor]]:
    """Detach the node from its tensors; its outputs, which the replacement then produces (omitted ones None)."""
    outputs = [None if is_empty(tensor) else tensor for tensor in node.outputs]
    node.outputs.clear()
    node.inputs.clear()
    return outputs


def trim_inputs(node: gs.Node, count: int) -> None:
    """Keep the first ``count`` inputs, without omitted ones at the end."""
    while len(node.inputs) > count or node.inputs and is_empty(node.inputs[-1]):
        node.inputs.pop()


def insert_after(build: Builder, node: gs.Node, op: str, extra: Sequence[gs.Tensor], base: str,
                 **attrs: Any) -> None:
    """Make ``node`` feed a new ``op`` node that takes over its first output."""
    output = node.outputs[0]
    node.outputs[0] = gs.Variable(build.name(f"{base}_output"), dtype=output.dtype)
    build.op(op, [node.outputs[0], *extra], base, output=output, **attrs)


# ---------------------------------------------------------------- stepping down one schema version
#
# An adapter looks at a node (a Sketch of it, as the steps before left it) and returns the Step that brings it
# from schema version ``newer`` of its operator to ``older``, None when nothing changes, or raises Unfixable.


@lru_cache(maxsize=None)
def schema_versions(op: str) -> tuple[int, ...]:
    return tuple(sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                         if s.name == op and s.domain == ""}))


@dataclass(frozen=True)
class Formal:
    """An input or output of a schema."""

    name: str
    required: bool
    variadic: bool
    type_str: str  # a type parameter ("T") or a type
    allowed: frozenset[str]  # type strings, e.g. "tensor(float)"


@dataclass(frozen=True)
class Schema:
    """What the steps read of an operator schema, in plain Python (OpSchema's accessors are slow)."""

    name: str
    since_version: int
    inputs: tuple[Formal, ...]
    outputs: tuple[Formal, ...]
    attributes: dict[str, tuple[bool, Any]]  # name -> (required, default or None)

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].variadic


@lru_cache(maxsize=None)
def schema(op: str, version: int) -> Schema:
    proto = onnx.defs.get_schema(op, version, "")
    options = onnx.defs.OpSchema.FormalParameterOption
    allowed = {c.type_param_str: frozenset(c.allowed_type_strs) for c in proto.type_constraints}

    def formals(params: Sequence[Any]) -> tuple[Formal, ...]:
        return tuple(Formal(p.name, p.option == options.Single, p.option == options.Variadic, p.type_str,
                            allowed.get(p.type_str, frozenset([p.type_str]))) for p in params)

    return Schema(op, proto.since_version, formals(proto.inputs), formals(proto.outputs),
                  {name: (a.required, attribute_default(a.default_value)) for name, a in proto.attributes.items()})


def attribute_default(proto: onnx.AttributeProto) -> Any:
    if not proto.name:
        return None
    value = onnx.helper.get_attribute_value(proto)
    return value.decode() if isinstance(value, bytes) else value


def is_default(op_schema: Schema, name: str, value: Any) -> bool:
    if name == "dilations":
        return all(d == 1 for d in value)
    default = op_schema.attributes[name][1]
    return default is not None and (list(value) == list(default) if isinstance(default, list) else value == default)


def slots_fit(tensors: Sequence[gs.Tensor], kind: str, newer: Schema, older: Schema) -> None:
    """The node's used inputs (or outputs) all have a place in ``older``, and those it requires are given."""
    formals = older.inputs if kind == "input" else older.outputs
    newer_formals = newer.inputs if kind == "input" else newer.outputs
    variadic = bool(formals) and formals[-1].variadic
    for index, tensor in enumerate(tensors):
        if index >= len(formals) and not variadic and not is_empty(tensor):
            name = newer_formals[min(index, len(newer_formals) - 1)].name
            raise Unfixable(f"its {kind} {name!r} has no place in {older.name}-{older.since_version}")
    for index, formal in enumerate(formals):
        if formal.required and (index >= len(tensors) or is_empty(tensors[index])):
            raise Unfixable(f"{older.name}-{older.since_version} requires the {kind} {formal.name!r}")


def types_fit(op_schema: Schema, inputs: Sequence[Optional[int]], outputs: Sequence[Optional[int]]) -> None:
    """The element types known (None: unknown) are ones ``op_schema`` accepts."""
    for types, formals in ((inputs, op_schema.inputs), (outputs, op_schema.outputs)):
        for index, elem in enumerate(types):
            if elem is None or not formals:
                continue
            formal = formals[min(index, len(formals) - 1)]
            given = f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"
            if given not in formal.allowed:
                raise Unfixable(f"{op_schema.name}-{op_schema.since_version} does not take {given} "
                                f"({formal.name!r})")


def recorded_types(node: Any, inferred: Mapping[str, int]) -> tuple[list[Optional[int]], list[Optional[int]]]:
    """The element types of the node's inputs and outputs: as the model records them, else as shape inference
    found them (``inferred``: tensor name -> type), else None; a Cast's output from its ``to``."""
    def element(tensor: gs.Tensor) -> Optional[int]:
        return None if is_empty(tensor) else onnx_type(tensor.dtype) or inferred.get(tensor.name)

    inputs = [element(t) for t in node.inputs]
    outputs = [element(t) for t in node.outputs]
    if node.op == "Cast" and outputs:
        outputs[0] = node.attrs.get("to")
    return inputs, outputs


def schemas_step(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """The step where the schemas differ at most in attributes and optional slots the node leaves alone."""
    slots_fit(node.inputs, "input", newer, older)
    slots_fit(node.outputs, "output", newer, older)
    dropped, explicit = [], {}
    for name, value in node.attrs.items():
        if name in older.attributes:
            continue
        if name not in newer.attributes or not is_default(newer, name, value):
            raise Unfixable(f"attribute {name}={value!r} has no equivalent in {older.name}-{older.since_version}")
        dropped.append(name)
    for name, (required, older_default) in older.attributes.items():
        if name in node.attrs:
            continue
        if required:
            raise Unfixable(f"{older.name}-{older.since_version} requires attribute {name!r}")
        default = newer.attributes.get(name, (False, None))[1]
        if default is not None and default != older_default:
            explicit[name] = default
    trailing = not older.variadic and len(node.inputs) > len(older.inputs)
    if not dropped and not explicit and not trailing:
        return None

    def edit(node: Any, build: Builder) -> None:
        for name in dropped:
            node.attrs.pop(name)
        node.attrs.update(explicit)
        trim_inputs(node, len(older.inputs) if trailing else len(node.inputs))

    parts = [f"drop {name} (default)" for name in dropped] + [f"{name}={value!r}" for name, value in explicit.items()]
    return Step(", ".join(parts) or None, edit)


def refusing(attribute: str, *values: str) -> StepAdapter:
    """A step that refuses attribute values ``older`` does not know, then compares schemas."""

    def step(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
        value = node.attrs.get(attribute)
        if value in values:
            raise Unfixable(f"{attribute}={value!r} is new in {newer.name}-{newer.since_version}")
        return schemas_step(node, newer, older)

    return step


def axes_to_attribute(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Squeeze/Unsqueeze-13, ReduceSum-13, Reduce*-18 take axes as an input; the versions before, an attribute."""
    axes_input = optional_input(node, 1)
    if axes_input is None and "noop_with_empty_axes" not in node.attrs:
        return None
    axes: list[int] = []
    if axes_input is not None:
        values = constant_value(axes_input)
        if values is None:
            raise Unfixable(f"its axes ({axes_input.name!r}) are computed at run time, and "
                            f"{older.name}-{older.since_version} takes them as an attribute")
        axes = [int(a) for a in values.ravel()]
    identity = bool(node.attrs.get("noop_with_empty_axes", 0)) and not axes

    def edit(node: Any, build: Builder) -> None:
        trim_inputs(node, 1)
        node.attrs.pop("noop_with_empty_axes", None)
        if identity:
            node.op = "Identity"
            node.attrs.clear()
        elif axes:
            node.attrs["axes"] = axes

    return Step("empty axes with noop_with_empty_axes: Identity" if identity else "axes input -> attribute", edit)


def split_to_attribute(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Split-13 takes the sizes as an input, Split-11 as an attribute."""
    split_input = optional_input(node, 1)
    if split_input is None:
        return schemas_step(node, newer, older)
    sizes = constant_value(split_input)
    if sizes is None:
        raise Unfixable(f"its split sizes ({split_input.name!r}) are computed at run time, and "
                        f"{older.name}-{older.since_version} takes them as an attribute")

    def edit(node: Any, build: Builder) -> None:
        trim_inputs(node, 1)
        node.attrs["split"] = [int(size) for size in sizes.ravel()]

    return Step("split input -> attribute", edit)


def split_num_outputs(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Split-18's num_outputs: Split-13 splits evenly into its outputs, or takes the sizes (the last one smaller)."""
    if "num_outputs" not in node.attrs:
        return schemas_step(node, newer, older)
    count, axis, shape = node.attrs["num_outputs"], node.attrs.get("axis", 0), node.inputs[0].shape
    length = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if not isinstance(length, int) or length < 0:
        raise Unfixable(f"num_outputs={count} on an axis of unknown length: {older.name}-{older.since_version} "
                        "needs the sizes")
    chunk = -(-length // count)
    sizes = None if length % count == 0 else [chunk] * (count - 1) + [length - chunk * (count - 1)]

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("num_outputs")
        if sizes is not None:
            node.inputs.append(build.const(f"{base_name(node)}/split", sizes, np.int64))

    return Step(f"num_outputs={count} -> split {sizes}" if sizes else None, edit)


def softmax_axis(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Softmax-13 normalises along one axis (default -1); Softmax-11 over all axes from ``axis`` on (default 1)."""
    axis = node.attrs.get("axis", -1)
    rank = rank_of(node.inputs[0])
    if axis == -1 or (rank is not None and axis == rank - 1):
        if node.attrs.get("axis") == -1:
            return None

        def explicit(node: Any, build: Builder) -> None:
            node.attrs["axis"] = -1

        return Step("axis=-1 made explicit", explicit)
    if rank is None:
        raise Unfixable(f"axis={axis} on an input of unknown rank: {older.name}-{older.since_version} "
                        "normalises over every axis from there on")
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]

    def transposed(node: Any, build: Builder) -> None:
        base = base_name(node)
        node.inputs[0] = build.op("Transpose", [node.inputs[0]], f"{base}/to_last", perm=perm)
        node.attrs["axis"] = -1
        insert_after(build, node, "Transpose", [], f"{base}/back", perm=perm)

    return Step(f"axis={axis} -> the last axis, between Transposes", transposed)


def resize_inputs(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Resize-13 may omit roi and scales; Resize-11 takes them, empty when unused."""
    missing = [index for index in (1, 2) if optional_input(node, index) is None]
    if not missing:
        return None

    def edit(node: Any, build: Builder) -> None:
        while len(node.inputs) < 3:
            node.inputs.append(gs.Variable.empty())
        for index in missing:
            node.inputs[index] = build.const(f"{base_name(node)}/{RESIZE_INPUTS[index]}", np.zeros(0, np.float32))

    return Step("empty " + " and ".join(RESIZE_INPUTS[index] for index in missing), edit)


RESIZE_INPUTS = {1: "roi", 2: "scales"}


def pad_axes(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Pad-18 may pad some axes only; Pad-13 takes pads for every axis."""
    axes_input = optional_input(node, 3)
    if axes_input is None:
        return schemas_step(node, newer, older)
    axes, pads, rank = constant_value(axes_input), constant_value(node.inputs[1]), rank_of(node.inputs[0])
    if axes is None or pads is None or rank is None:
        raise Unfixable("its axes input needs constant axes and pads, and an input of known rank, to become "
                        f"{older.name}-{older.since_version}'s pads for every axis")
    full = np.zeros(2 * rank, np.int64)
    for index, axis in enumerate(int(a) % rank for a in axes.ravel()):
        full[axis], full[rank + axis] = pads[index], pads[len(axes) + index]

    def edit(node: Any, build: Builder) -> None:
        node.inputs[1] = build.const(f"{base_name(node)}/pads", full)
        trim_inputs(node, 3)

    return Step("axes input -> pads for every axis", edit)


def shape_slice(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Shape-15's start and end: Shape-13, then a Slice."""
    if "start" not in node.attrs and "end" not in node.attrs:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end", INT64_MAX)

    def edit(node: Any, build: Builder) -> None:
        base = base_name(node)
        node.attrs.pop("start", None)
        node.attrs.pop("end", None)
        insert_after(build, node, "Slice", [build.const(f"{base}/start", [start], np.int64),
                                            build.const(f"{base}/end", [end], np.int64)], f"{base}/slice")

    return Step("start/end -> Slice", edit)


def roi_align_mode(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """RoiAlign-16 defaults to half_pixel; RoiAlign-10 works as output_half_pixel."""
    mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode != "output_half_pixel":
        raise Unfixable(f"coordinate_transformation_mode={mode!r}: RoiAlign-10 knows output_half_pixel only")

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("coordinate_transformation_mode")

    return Step("drop coordinate_transformation_mode=output_half_pixel", edit)


def pool_ceil_mode(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Pooling-22 in ceil mode drops a last window that starts in the end padding; earlier versions keep it.

    Where every spatial axis drops it, that is floor mode; where none does, nothing changes.
    """
    step = schemas_step(node, newer, older)
    if not node.attrs.get("ceil_mode", 0):
        return step
    kernel, shape = node.attrs["kernel_shape"], node.inputs[0].shape
    spatial = list(shape[-len(kernel):]) if shape is not None and len(shape) >= len(kernel) else []
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or not all(
            isinstance(size, int) for size in spatial) or not spatial:
        raise Unfixable(f"ceil_mode=1 needs explicit pads and known spatial sizes: {newer.name}-"
                        f"{newer.since_version} drops a last window that starts in the padding, earlier "
                        "versions keep it")
    strides = node.attrs.get("strides", [1] * len(kernel))
    dilations = node.attrs.get("dilations", [1] * len(kernel))
    pads = node.attrs.get("pads", [0] * 2 * len(kernel))
    dropped = []
    for axis, size in enumerate(spatial):
        extent = size + pads[axis] + pads[len(kernel) + axis] - (kernel[axis] - 1) * dilations[axis] - 1
        windows = -(-extent // strides[axis]) + 1
        dropped.append((windows - 1) * strides[axis] >= size + pads[axis])
    if not any(dropped):
        return step
    if not all(dropped):
        raise Unfixable(f"ceil_mode=1 drops the last window on some spatial axes only ({newer.name}-"
                        f"{newer.since_version}); earlier versions keep them all")

    def floor_mode(node: Any, build: Builder) -> None:
        node.attrs["ceil_mode"] = 0
        if step is not None:
            step.edit(node, build)

    return Step(", ".join(filter(None, ["ceil_mode=0 (the windows the ceil adds start in the padding)",
                                        step and step.what])), floor_mode)


def reshape_allowzero(node: Any, newer: Schema, older: Schema) -> Optional[Step]:
    """Reshape-14's allowzero=1 (a 0 in the shape means 0, as torch's view) is allowzero=0 when no 0 is in it."""
    if not node.attrs.get("allowzero", 0):
        return schemas_step(node, newer, older)
    shape = constant_value(node.inputs[1])
    if shape is None or not shape.all():
        where = "is computed at run time" if shape is None else "holds a 0"
        raise Unfixable(f"allowzero=1 and its shape {where}: {older.name}-{older.since_version} would copy the "
                        "input's size where a 0 means 0")

    def edit(node: Any, build: Builder) -> None:
        node.attrs.pop("allowzero")

    return Step("drop allowzero=1 (the shape holds no 0)", edit)


StepAdapter = Callable[[Any, Schema, Schema], Optional[Step]]
REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare")
# (operator, version) -> how to step from that version to the one before, where comparing the schemas is not enough
STEPS: dict[tuple[str, int], StepAdapter] = {
    ("Squeeze", 13): axes_to_attribute,
    ("Unsqueeze", 13): axes_to_attribute,
    ("ReduceSum", 13): axes_to_attribute,
    **{(op, 18): axes_to_attribute for op in REDUCTIONS},
    ("Split", 13): split_to_attribute,
    ("Split", 18): split_num_outputs,
    **{(op, 13): softmax_axis for op in ("Softmax", "LogSoftmax", "Hardmax")},
    ("Resize", 13): resize_inputs,
    ("Resize", 19): refusing("coordinate_transformation_mode", "half_pixel_symmetric"),
    ("Pad", 18): pad_axes,
    ("Pad", 19): refusing("mode", "wrap"),
    ("Shape", 15): shape_slice,
    ("Reshape", 14): reshape_allowzero,
    ("RoiAlign", 16): roi_align_mode,
    **{(op, 22): pool_ceil_mode for op in ("MaxPool", "AveragePool", "LpPool")},
}


def step_down(node: gs.Node, since: int, target: int, inferred: Mapping[str, int]) -> list[Step]:
    """The steps from schema version ``since`` of the node's operator down to ``target``, planned on a sketch."""
    sketch = Sketch.of(node)
    dry = Builder(None, target, set())
    versions = [v for v in schema_versions(node.op) if target <= v <= since]
    steps = []
    for newer, older in zip(versions[:0:-1], versions[-2::-1]):
        newer_schema, older_schema = schema(node.op, newer), schema(node.op, older)
        step = STEPS.get((node.op, newer), schemas_step)(sketch, newer_schema, older_schema)
        if step is not None:
            step.edit(sketch, dry)
            steps.append(step)
        types_fit(older_schema, *recorded_types(sketch, inferred))
    return steps


# ---------------------------------------------------------------- decompositions
#
# A decomposition plans on the node (raising Unfixable) and returns the edit that replaces it by primitives, which
# it emits in their forms at the target opset.


def trailing_axes(x: gs.Tensor, axis: int) -> list[int]:
    if axis < 0:
        return list(range(axis, 0))
    rank = rank_of(x)
    if rank is None:
        raise Unfixable(f"axis={axis} on an input of unknown rank")
    return list(range(axis, rank))


def compute_type(dtype: np.dtype, stash_type: Optional[int]) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(stash_type) if stash_type else dtype


def normalize(build: Builder, x: gs.Tensor, axes: list[int], epsilon: float, dtype: np.dtype, compute: np.dtype,
              base: str, centre: bool = True) -> tuple[gs.Tensor, Optional[gs.Tensor], gs.Tensor]:
    """(x - mean) / sqrt(variance + epsilon) over ``axes`` (without centring: x / RMS), computed in the stash type
    ``compute`` and cast back to ``dtype``; also the mean and 1/std (in the stash type)."""
    value = build.cast(x, compute, f"{base}/stash") if compute != dtype else x
    mean = build.reduce_mean(value, axes, f"{base}/mean") if centre else None
    centred = build.op("Sub", [value, mean], f"{base}/centred") if centre else value
    variance = build.reduce_mean(build.op("Mul", [centred, centred], f"{base}/square"), axes, f"{base}/variance")
    std = build.op("Sqrt", [build.op("Add", [variance, build.const(f"{base}/epsilon", epsilon, compute)],
                                     f"{base}/variance_eps")], f"{base}/std")
    inverse = build.op("Reciprocal", [std], f"{base}/inv_std")
    normalized = build.op("Mul", [centred, inverse], f"{base}/normalized")
    if compute != dtype:
        normalized = build.cast(normalized, dtype, f"{base}/unstash")
    return normalized, mean, inverse


def normalization_settings(node: gs.Node) -> tuple[gs.Tensor, list[int], Any, Any, float]:
    """Input, normalized axes, element type, compute type and epsilon of a *Normalization node."""
    x = node.inputs[0]
    dtype = float_type(x)
    return (x, trailing_axes(x, node.attrs.get("axis", -1)), dtype,
            compute_type(dtype, node.attrs.get("stash_type", 1)), node.attrs.get("epsilon", 1e-5))


def layer_normalization(node: gs.Node, since: int, opset: int) -> Edit:
    x, axes, dtype, compute, epsilon = normalization_settings(node)
    scale, bias = node.inputs[1], optional_input(node, 2)

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        y, mean_out, inverse_out = (take_outputs(node) + [None, None])[:3]
        normalized, mean, inverse = normalize(build, x, axes, epsilon, dtype, compute, base)
        scaled = build.op("Mul", [normalized, scale], f"{base}/scaled", output=None if bias else y)
        if bias is not None:
            build.op("Add", [scaled, bias], f"{base}/biased", output=y)
        for statistic, wanted in ((mean, mean_out), (inverse, inverse_out)):
            if wanted is not None:
                build.op("Identity", [statistic], f"{base}/{wanted.name}", output=wanted)

    return edit


def rms_normalization(node: gs.Node, since: int, opset: int) -> Edit:
    x, axes, dtype, compute, epsilon = normalization_settings(node)
    scale = node.inputs[1]

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)
        normalized, _, _ = normalize(build, x, axes, epsilon, dtype, compute, base, centre=False)
        build.op("Mul", [normalized, scale], f"{base}/scaled", output=y)

    return edit


def group_normalization(node: gs.Node, since: int, opset: int) -> Edit:
    """Normalise the [N, groups, -1] view; GroupNormalization-18 scales per group, -21 per channel."""
    x, scale, bias = node.inputs
    groups = node.attrs["num_groups"]
    per_group = since == 18
    dtype = float_type(x)
    epsilon = node.attrs.get("epsilon", 1e-5)
    compute = compute_type(dtype, None if per_group else node.attrs.get("stash_type", 1))

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)
        shape = build.op("Shape", [x], f"{base}/shape")
        grouped = build.op("Reshape", [x, build.const(f"{base}/groups", [0, groups, -1], np.int64)],
                           f"{base}/grouped")
        normalized, _, _ = normalize(build, grouped, [2], epsilon, dtype, compute, base)
        if not per_group:
            ungrouped = build.op("Reshape", [normalized, shape], f"{base}/ungrouped")
            normalized = build.op("Reshape", [ungrouped, build.const(f"{base}/channels", [0, 0, -1], np.int64)],
                                  f"{base}/per_channel")
        column = build.const(f"{base}/column", [-1, 1], np.int64)
        scaled = build.op("Mul", [normalized, build.op("Reshape", [scale, column], f"{base}/scale")],
                          f"{base}/scaled")
        biased = build.op("Add", [scaled, build.op("Reshape", [bias, column], f"{base}/bias")], f"{base}/biased")
        build.op("Reshape", [biased, shape], f"{base}/restored", output=y)

    return edit


def gelu(node: gs.Node, since: int, opset: int) -> Edit:
    x = node.inputs[0]
    approximate = node.attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unfixable(f"approximate={approximate!r}")
    dtype = float_type(x)

    def edit(node: gs.Node, build: Builder) -> None:
        base = base_name(node)
        (y,) = take_outputs(node)

        def const(name: str, value: float) -> gs.Constant:
            return build.const(f"{base}/{name}", value, dtype)

        if approximate == "tanh":
            cube = build.op("Mul", [build.op("Mul", [x, x], f"{base}/square"), x], f"{base}/cube")
            inner = build.op("Add", [x, build.op("Mul", [cube, const("coefficient", 0.044715)], f"{base}/cubic")],
                             f"{base}/inner")
            scaled = build.op("Mul", [inner, const("sqrt_2_over_pi", math.sqrt(2 / math.pi))], f"{base}/scaled")
            activation = build.op("Tanh", [scaled], f"{base}/tanh")
        else:
            scaled = build.op("Div", [x, const("sqrt_2", math.sqrt(2))], f"{base}/scaled")
            activation = build.op("Erf", [scaled], f"{base}/erf")
        gate = build.op("Add", [activation, const("one", 1)], f"{base}/gate")
        build.op("Mul", [build.op("Mul", [x, gate], f"{base}/gated"), const("half", 0.5)], f"{base}/half",
                 output=y)

    return edit


def mish(node: gs.Node, since: int, opset: int) -> Edit:
    def edit(node: gs.Node, build: Builder) -> None:
        base, x = base_name(node), node.inputs[0]
        (y,) = take_outputs(node)
        softplus = build.op("Softplus", [x], f"{base}/softplus")
        build.op("Mul", [x, build.op("Tanh", [softplus], f"{base}/tanh")], f"{base}/mish", output=y)

    return edit


def hard_swish(node: gs.Node, since: int, opset: int) -> Edit:
    def edit(node: gs.Node, build: Builder) -> None:
        base, x = base_name(node), node.inputs[0]
        (y,) = take_outputs(node)
        gate = build.op("HardSigmoid", [x], f"{base}/gate", alpha=1 / 6, beta=0.5)
        build.op("Mul", [x, gate], f"{base}/hard_swish", output=y)

    return edit


def cast_like(node: gs.Node, since: int, opset: int) -> Edit:
    target = known_type(node.inputs[1])
    types_fit(schema("Cast", since_version("Cast", opset)), [element_type(node.inputs[0])], [target])

    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "Cast"
        node.attrs.pop("saturate", None)
        node.attrs["to"] = target
        trim_inputs(node, 1)

    return edit


def trilu(node: gs.Node, since: int, opset: int) -> Edit:
    """Keep the elements with ``column - row >= k`` (upper) or ``<= k`` (lower), zero the others."""
    elem = known_type(node.inputs[0])
    upper = bool(node.attrs.get("upper", 1))

    def edit(node: gs.Node, build: Builder) -> None:
        base, x, k = base_name(node), node.inputs[0], optional_input(node, 1)
        (y,) = take_outputs(node)
        shape = build.op("Shape", [x], f"{base}/shape")
        zero, one = build.const(f"{base}/zero", 0, np.int64), build.const(f"{base}/one", 1, np.int64)

        def indices(name: str, axis: int) -> gs.Tensor:
            size = build.op("Gather", [shape, build.const(f"{base}/{name}_axis", axis, np.int64)], f"{base}/{name}")
            return build.op("Range", [zero, size, one], f"{base}/{name}_index")

        rows, columns = indices("rows", -2), indices("columns", -1)
        offset = build.op("Sub", [build.unsqueeze(columns, [0], f"{base}/row_of_columns"),
                                  build.unsqueeze(rows, [1], f"{base}/column_of_rows")], f"{base}/offset")
        outside = build.op("Less" if upper else "Greater", [offset, k if k is not None else zero], f"{base}/outside")
        inside = build.op("Not", [outside], f"{base}/inside")
        if elem == onnx.TensorProto.BOOL:  # onnxruntime has no Where-9 for booleans
            build.op("And", [x, inside], f"{base}/kept", output=y)
        else:
            filler = build.const(f"{base}/filler", 0, onnx.helper.tensor_dtype_to_np_dtype(elem))
            build.op("Where", [inside, x, filler], f"{base}/kept", output=y)

    return edit


def upsample(node: gs.Node, since: int, opset: int) -> Edit:
    """Upsample-9/10 is Resize with asymmetric coordinates (rounding down for nearest)."""
    mode = node.attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unfixable(f"mode={mode!r}")
    old_form = since_version("Resize", opset) == 10

    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "Resize"
        if old_form:
            return
        node.inputs.insert(1, build.const(f"{base_name(node)}/roi", np.zeros(0, np.float32)))
        node.attrs["coordinate_transformation_mode"] = "asymmetric"
        if mode == "nearest":
            node.attrs["nearest_mode"] = "floor"

    return edit


def scatter(node: gs.Node, since: int, opset: int) -> Edit:
    def edit(node: gs.Node, build: Builder) -> None:
        node.op = "ScatterElements"

    return edit


@dataclass(frozen=True)
class Decomposition:
    primitives: tuple[str, ...]
    plan: Callable[[gs.Node, int, int], Edit]  # (node, its version, the target opset); raises Unfixable


NORMALIZATION = ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Reciprocal", "Cast")
DECOMPOSITIONS: dict[str, Decomposition] = {
    "LayerNormalization": Decomposition(NORMALIZATION, layer_normalization),
    "RMSNormalization": Decomposition(NORMALIZATION, rms_normalization),
    "GroupNormalization": Decomposition(("Shape", "Reshape", *NORMALIZATION), group_normalization),
    "Gelu": Decomposition(("Mul", "Div", "Add", "Erf", "Tanh"), gelu),
    "Mish": Decomposition(("Softplus", "Tanh", "Mul"), mish),
    "HardSwish": Decomposition(("HardSigmoid", "Mul"), hard_swish),
    "CastLike": Decomposition(("Cast",), cast_like),
    "Trilu": Decomposition(("Shape", "Gather", "Range", "Unsqueeze", "Sub", "Less", "Greater", "Not", "And",
                            "Where"), trilu),
    "Upsample": Decomposition(("Resize",), upsample),
    "Scatter": Decomposition(("ScatterElements",), scatter),
}


# ---------------------------------------------------------------- planning


def node_rewrite(graph: gs.Graph, node: gs.Node, source: int, target: int, table: Handlers,
                 inferred: Mapping[str, int]) -> Optional[Rewrite]:
    """What becomes of ``node`` when the model goes from opset ``source`` to ``target``; Unfixable when nothing
    works. ``inferred``: element types of tensors the model leaves untyped."""
    op, since, wanted = node.op, since_version(node.op, source), since_version(node.op, target)
    name = f"{op}-{since}"
    if table.converts(op, wanted):
        if since == wanted:
            return None
        try:
            steps = step_down(node, since, wanted, inferred)
        except Unfixable as error:
            problem = f"{op}-{wanted}: {error}"
        else:
            whats = [step.what for step in steps if step.what]
            return Rewrite(graph, node, name, f"{op}-{wanted}" + (f" ({'; '.join(whats)})" if whats else ""),
                           [step.edit for step in steps])
    elif wanted is None:
        problem = f"{op} does not exist at opset {target}"
    else:
        problem = f"onnx-tf has no {op}-{wanted}"
    decomposition = DECOMPOSITIONS.get(op)
    if decomposition is None:
        raise Unfixable(problem)
    missing = [p for p in decomposition.primitives if not table.converts(p, since_version(p, target))]
    if missing:
        raise Unfixable(f"{problem}; its decomposition needs {missing[0]}, which onnx-tf does not convert at "
                        f"opset {target}")
    try:
        edit = decomposition.plan(node, since, target)
    except Unfixable as error:
        raise Unfixable(f"{problem}, and it cannot be decomposed: {error}") from None
    return Rewrite(graph, node, name, f"decomposed into {', '.join(decomposition.primitives)}", [edit])


def untyped_element_types(graph: gs.Graph, nodes: Sequence[tuple[gs.Graph, gs.Node]]) -> dict[str, int]:
    """Element types shape inference finds for the tensors of ``nodes`` that the model leaves untyped (an
    operator's older version may not take the type: Elu-6 has no bfloat16); empty when all are typed."""
    untyped = {t.name for _, node in nodes for t in (*node.inputs, *node.outputs) if not is_empty(t) and t.dtype is None}
    if not untyped:
        return {}
    return {name: elem for name, (elem, _) in inferred_types(graph).items() if name in untyped and elem}


def plan_at(nodes: Sequence[tuple[gs.Graph, gs.Node]], source: int, target: int, table: Handlers,
            plan: Plan, inferred: Mapping[str, int]) -> Plan | str:
    """``plan`` filled in for opset ``target``, or why ``target`` is ruled out: a node that would not be valid there."""
    for graph, node in nodes:
        try:
            rewrite = node_rewrite(graph, node, source, target, table, inferred)
        except Unfixable as error:
            if since_version(node.op, target) != since_version(node.op, source):
                return f"node {describe(node)} ({label(node, source)}) cannot be brought to opset {target}: {error}"
            plan.blocked.append(Blocked(node, label(node, source), str(error)))
        else:
            if rewrite is not None:
                plan.rewrites.append(rewrite)
    return plan


def make_plan(graph: gs.Graph, options: OpsetCompatOptions) -> Plan:
    """The highest opset, at most the model's and ``options.opset``, leaving the fewest nodes onnx-tf cannot convert.

    A node left as it is must stay valid there: an opset where its schema changes is ruled out.
    """
    table = handlers()
    source = graph.opset
    nodes = list(live_nodes(graph))
    foreign = [Blocked(node, label(node, source), f"onnx-tf {table.version} has no handlers for the domain "
                       f"{node.domain!r}") for _, node in nodes if not is_onnx(node)]
    nodes = [(g, node) for g, node in nodes if is_onnx(node)]
    unsupported = [(node, label(node, source)) for _, node in nodes
                   if not table.converts(node.op, since_version(node.op, source))]
    unsupported += [(blocked.node, blocked.source) for blocked in foreign]
    top = min(source, options.opset or source)
    if top == source and len(unsupported) == len(foreign):
        return Plan(source, source, blocked=foreign, unsupported=unsupported)
    inferred = untyped_element_types(graph, nodes)
    best: Optional[Plan] = None
    ruled_out: dict[int, str] = {}
    opsets = distinct_opsets({node.op for _, node in nodes}, top)
    for target in opsets:
        plan = plan_at(nodes, source, target, table, Plan(source, target, blocked=list(foreign),
                                                           unsupported=unsupported), inferred)
        if isinstance(plan, str):
            ruled_out[target] = plan
        elif best is None or len(plan.blocked) < len(best.blocked):
            best = plan
        if best is not None and len(best.blocked) == len(foreign):
            break
    if best is None:
        raise SurgeonError(f"opset_compat.opset: the model cannot be brought to opset {top} or below: "
                           f"{ruled_out[top]}", hint="leave opset_compat.opset unset")
    lower = [target for target in opsets if target < best.target]
    for blocked in best.blocked[len(foreign):]:
        blocked.reason = why_left(blocked, graph, source, lower, table, ruled_out, inferred)
    return best


def distinct_opsets(ops: set[str], top: int) -> list[int]:
    """The opsets from ``top`` down, without those where the operators (and what they decompose into) have the
    same versions as at a higher one: the plan there would be the same."""
    ops |= {primitive for op in ops if op in DECOMPOSITIONS for primitive in DECOMPOSITIONS[op].primitives}
    ordered = sorted(ops)
    seen, opsets = set(), []
    for opset in range(top, 0, -1):
        versions = tuple(since_version(op, opset) for op in ordered)
        if versions not in seen:
            seen.add(versions)
            opsets.append(opset)
    return opsets


def why_left(blocked: Blocked, graph: gs.Graph, source: int, lower: list[int], table: Handlers,
             ruled_out: dict[int, str], inferred: Mapping[str, int]) -> str:
    """Why a node stays unconverted: what goes wrong at the nearest lower opset where it would convert."""
    op = blocked.node.op
    for opset in lower:
        try:
            node_rewrite(graph, blocked.node, source, opset, table, inferred)
        except Unfixable as error:
            if table.converts(op, since_version(op, opset)):
                return str(error)
            continue
        if opset in ruled_out:
            return f"it would convert at opset {opset}, but {ruled_out[opset]}"
        return f"it would convert at opset {opset}, where more nodes would not"
    if op not in DECOMPOSITIONS and not table.versions.get(op):
        return f"opset_compat knows no decomposition of {op}"
    return blocked.reason


# ---------------------------------------------------------------- the pass


def set_opset(graph: gs.Graph, opset: int) -> None:
    graph.opset = opset
    for subgraph in graph.subgraphs(recursive=True):
        subgraph.opset = opset
    if graph.import_domains is not None:
        graph.import_domains = [onnx.helper.make_opsetid("", opset) if entry.domain in ONNX_DOMAINS else entry
                                for entry in graph.import_domains]


def fit(graph: gs.Graph, options: OpsetCompatOptions) -> Optional[dict]:
    plan = make_plan(graph, options)
    for (source, reason), nodes in grouped((b.source, b.reason, b.node) for b in plan.blocked).items():
        log.warning("opset_compat: %s (%s) left as it is: %s", source, nodes_text(nodes), reason)
    if not plan.changes:
        return None
    taken = {name for g in (graph, *graph.subgraphs(recursive=True)) for name in g.tensors()}
    taken |= {node.name for _, node in live_nodes(graph)}
    builders: dict[int, Builder] = {}
    for rewrite in plan.rewrites:
        build = builders.setdefault(id(rewrite.graph), Builder(rewrite.graph, plan.target, taken))
        for edit in rewrite.edits:
            edit(rewrite.node, build)
    for build in builders.values():  # drop the decomposed nodes, which later passes need not see
        build.graph.nodes = [node for node in build.graph.nodes if node.inputs or node.outputs]
    set_opset(graph, plan.target)
    unsupported = {id(node) for node, _ in plan.unsupported}
    changed = [r for r in plan.rewrites if r.edits or id(r.node) in unsupported]
    return {
        "opset": {"from": plan.opset, "to": plan.target},
        "rewritten": dict(Counter(f"{r.source} -> {r.target}" for r in changed)),
        "only_version_changed": len(plan.rewrites) - len(changed),
        "left": [f"node {describe(b.node)} ({b.source}): {b.reason}" for b in plan.blocked],
    }


def outcomes(plan: Plan) -> dict[int, str]:
    """node id -> what the pass does about it, or why it cannot."""
    done = {id(r.node): f"opset_compat: {r.target}" for r in plan.rewrites}
    done.update({id(b.node): f"opset_compat cannot fix it: {b.reason}" for b in plan.blocked})
    return done


def grouped(items: Iterable[tuple[str, str, gs.Node]]) -> dict[tuple[str, str], list[gs.Node]]:
    """(label, message) -> the nodes it applies to."""
    groups: dict[tuple[str, str], list[gs.Node]] = defaultdict(list)
    for name, message, node in items:
        groups[(name, message)].append(node)
    return groups


def unsupported_groups(plan: Plan) -> list[tuple[str, str, list[gs.Node]]]:
    """(e.g. "Squeeze-13", why onnx-tf refuses it and what the pass does, nodes) per kind of unsupported node."""
    table, outcome = handlers(), outcomes(plan)

    def message(node: gs.Node) -> str:
        why = table.describe(node.op) if is_onnx(node) else f"onnx-tf has no handlers for the domain {node.domain!r}"
        return f"{why}; {outcome[id(node)]}"

    groups = grouped((name, message(node), node) for node, name in plan.unsupported)
    return [(name, text, nodes) for (name, text), nodes in groups.items()]


def nodes_text(nodes: list[gs.Node]) -> str:
    shown = ", ".join(describe(node) for node in nodes[:3])
    more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
    return f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown}{more}"


def detect(graph: gs.Graph, options: OpsetCompatOptions) -> list[Finding]:
    try:
        plan = make_plan(graph, options)
    except SurgeonError as error:
        return [Finding(where=f"opset {graph.opset}", message=str(error))]
    findings = [Finding(where=f"{name} ({nodes_text(nodes)})", message=message)
                for name, message, nodes in unsupported_groups(plan)]
    unsupported = {id(node) for node, _ in plan.unsupported}
    if plan.target != plan.opset:
        along = Counter(f"{r.source} -> {r.target}" for r in plan.rewrites
                        if id(r.node) not in unsupported and r.edits)
        findings.append(Finding(where=f"opset {plan.opset}", message=(
            f"opset_compat lowers the model to opset {plan.target}"
            + (", adapting on the way " + "; ".join(f"{change} ({count})" for change, count in along.items())
               if along else ""))))
    return findings


def explain_unsupported(model: onnx.ModelProto) -> Optional[str]:
    """Which nodes of ``model`` onnx-tf cannot convert, and whether opset_compat fixes each; None when it converts all.

    Reads the model only (no TensorFlow), so a converter can call it before importing onnx-tf.
    """
    plan = make_plan(gs.import_onnx(model), OpsetCompatOptions())
    if not plan.unsupported:
        return None
    count = len(plan.unsupported)
    lines = [f"onnx-tf {handlers().version} cannot convert {count} node{'s' if count > 1 else ''} of this "
             f"opset-{plan.opset} model:"]
    lines += [f"  {name} ({nodes_text(nodes)}): {message}" for name, message, nodes in unsupported_groups(plan)]
    blocked = {id(b.node) for b in plan.blocked}
    if any(id(node) not in blocked for node, _ in plan.unsupported):
        lines.append("add opset_compat to --plugins to apply these fixes")
    return "\n".join(lines)


@hookimpl
def surgeon_passes():
    return [RewritePass(name="opset_compat", doc="Bring every node to an operator version onnx-tf converts: lower "
                        "the opset, decompose what onnx-tf lacks (LayerNormalization, Gelu, ...).",
                        options=OpsetCompatOptions, run=fit, detect=detect)]
