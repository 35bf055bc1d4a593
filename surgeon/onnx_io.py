"""Reading and writing ONNX files safely.

External data is read only from inside the model's folder: locations that are
absolute, climb out with ``..``, or resolve through a symlink to somewhere
outside are refused before a byte of them is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from surgeon.errors import SurgeonError, describe

log = logging.getLogger("surgeon")
# protobuf cannot serialise a message of 2 GiB or more; stay well below it
INLINE_LIMIT_BYTES = 1_800_000_000


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, with its external data."""
    path = Path(path)
    if not path.exists():
        raise SurgeonError(f"{path}: no such file")
    if not path.is_file():
        raise SurgeonError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise SurgeonError(f"{path}: the file is empty, not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:
        raise SurgeonError(f"{path}: not an ONNX model ({describe(error)})") from None
    try:
        undecodable = any(isinstance(name, bytes) for name in _names(model.graph))
    except UnicodeDecodeError:
        undecodable = True
    if undecodable:
        raise SurgeonError(f"{path}: not an ONNX model (a name in it is not valid UTF-8)")
    base = path.resolve().parent
    for tensor in _tensors(model.graph):
        if external_data_helper.uses_external_data(tensor):
            _check_location(path, base, tensor)
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        if "deprecated" not in str(error):
            raise SurgeonError(f"{path}: invalid ONNX model ({describe(error)})") from None
        # old exporters wrote Upsample and Scatter past their deprecation; opset_compat replaces them,
        # and the rewritten model is checked again after the passes
        log.warning("%s: %s", path, describe(error))
    problem = nonpositive_attribute(model.graph)
    if problem:
        raise SurgeonError(f"{path}: invalid ONNX model ({problem})")
    if any(external_data_helper.uses_external_data(t) for t in _tensors(model.graph)):
        external_data_helper.load_external_data_for_model(model, str(base))
    return model


# the ONNX checker lets these be 0 or negative, and onnx's shape inference then
# divides by them and kills the process (SIGFPE, onnx 1.18)
POSITIVE_ATTRIBUTES = frozenset({"strides", "dilations", "kernel_shape", "group", "blocksize"})


def nonpositive_attribute(graph: onnx.GraphProto) -> str | None:
    """The first node whose strides, dilations, kernel_shape, group or blocksize is not positive."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name in POSITIVE_ATTRIBUTES:
                values = list(attribute.ints) if attribute.ints else [attribute.i]
                if any(value < 1 for value in values):
                    return f"node {node.name or node.op_type!r}: {attribute.name} must be positive, got {values}"
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                problem = nonpositive_attribute(subgraph)
                if problem:
                    return problem
    return None


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model``; tensors go to ``<name>.data`` beside it when it is too big for one file."""
    if _byte_size(model) < INLINE_LIMIT_BYTES:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data"
        )


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except ValueError:  # protobuf refuses to size messages over 2 GiB
        return INLINE_LIMIT_BYTES


def _check_location(path: Path, base: Path, tensor: onnx.TensorProto) -> None:
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
    where = f"{path}: external data of tensor {tensor.name!r} at {location!r}"
    if not location or os.path.isabs(location) or Path(location).is_absolute() or ".." in Path(location).parts:
        raise SurgeonError(f"{where} is refused: it must be a relative path inside the model's folder")
    target = (base / location).resolve()
    if base not in target.parents:
        raise SurgeonError(f"{where} is refused: it resolves to {target}, outside the model's folder")
    if not target.is_file():
        raise SurgeonError(f"{where}: no such file")


def _names(graph: onnx.GraphProto) -> Iterator[str | bytes]:
    """Every name in ``graph``; protobuf hands back bytes for one that is not valid UTF-8."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.name
        yield from (dim.dim_param for dim in value.type.tensor_type.shape.dim)
    for node in graph.node:
        yield from (node.name, node.op_type, node.domain, *node.input, *node.output)
        for attribute in node.attribute:
            yield attribute.name
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _names(subgraph)
    yield from (tensor.name for tensor in graph.initializer)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def opset_of(model: onnx.ModelProto) -> int:
    """The model's opset of the default (ai.onnx) domain."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds: inputs that are not also initializers (old exporters list those too)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def oversized_tensor(model: onnx.ModelProto, budget_bytes: int) -> str | None:
    """The first tensor whose statically known size exceeds ``budget_bytes``, described; else None.

    Shapes come from ONNX shape inference with data propagation, so a
    ``ConstantOfShape`` of ``[2^30, 2^30]`` is caught before anything tries
    to allocate it.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model  # unknown shapes are checked where they are known
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if not tensor_type.HasField("shape") or not all(dim.HasField("dim_value") for dim in dims):
            continue
        elements = 1
        for dim in dims:
            elements *= dim.dim_value
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            item = 1
        if elements * item > budget_bytes:
            shape = [dim.dim_value for dim in dims]
            return f"tensor {value.name!r} of shape {shape} would take {elements * item / 2**30:.3g} GiB"
    return None
