"""What opset_compat reads of ONNX operator schemas, and of the element types and ranks of tensors.

Whether a node fits a version of its operator depends on the inputs,
outputs, attributes and types that version's schema allows; this module
reads them once per (operator, version) into plain Python, and tells the
element type of a tensor where the model leaves it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.graph import Unfixable, is_empty
from surgeon_plugins.converters.onnx_tf.support import ONNX_DOMAINS


def is_onnx(node: gs.Node) -> bool:
    """The node is of the ONNX operator set (onnx-tf's handlers know no other)."""
    return (node.domain or "") in ONNX_DOMAINS


def rank_of(tensor: gs.Tensor) -> int | None:
    """The number of axes of ``tensor``; None when its shape is not recorded."""
    return len(tensor.shape) if tensor.shape is not None else None


def onnx_type(dtype: Any) -> int | None:
    """The TensorProto element type of a gs dtype (a NumPy dtype, or the ONNX type NumPy lacks)."""
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError):
        return None


def element_type(tensor: gs.Tensor) -> int | None:
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


def types_fit(op_schema: Schema, inputs: Sequence[int | None], outputs: Sequence[int | None]) -> None:
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
