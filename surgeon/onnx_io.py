"""Reading and writing ONNX files safely, with weights kept out of protobuf messages.

External data is read only from inside the model's folder: locations that are
absolute, climb out with ``..``, or resolve through a symlink to somewhere
outside are refused before a byte of them is read.

Tensors stored as external data stay on disk: the loaded model is a skeleton
whose external tensors keep their relative ``location`` and carry the folder
it is relative to in onnx's own ``basepath`` key. A protobuf message cannot
exceed 2 GiB, so this is what lets models with more weights than that through
the rewrite passes, the checks and the converter; each reads a tensor's
values with ``tensor_array`` (memory-mapped, not copied). What reads a
skeleton by path (the ONNX checker, onnxruntime) gets it with ``basepath``
left out (``stripped``), since onnxruntime refuses that key.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from surgeon.errors import SurgeonError, describe

log = logging.getLogger("surgeon")
# protobuf cannot serialise a message of 2 GiB or more; stay well below it
INLINE_LIMIT_BYTES = 1_800_000_000
# tensors at least this big go to the data file when a model is written with external data (onnx's default)
EXTERNAL_MIN_BYTES = 1024
ALIGNMENT = 4096  # offsets in a written data file: page-aligned, so that readers can map them
BASEPATH = "basepath"


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file; its external tensors stay on disk, located by ``basepath`` (see the module)."""
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
    for tensor in external_tensors(model):
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
    for tensor in external_tensors(model):
        _set_entry(tensor, BASEPATH, str(base))
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
    """Write ``model`` to ``path``: in one file when its tensors take less than ``INLINE_LIMIT_BYTES``, else with
    every tensor of ``EXTERNAL_MIN_BYTES`` or more in ``<name>.data`` beside it.

    The weights are copied file to file, never held in a message. A model
    written with external data is re-pointed at the written file: its
    external tensors are read from there from then on (``model`` must then
    not be the source's own model, whose tensors would then no longer be
    read from the source).
    """
    external = external_tensors(model)
    if not external and _byte_size(model) < INLINE_LIMIT_BYTES:
        onnx.save_model(model, str(path))
    elif model_bytes(model) < INLINE_LIMIT_BYTES:
        inline = onnx.ModelProto()
        inline.CopyFrom(model)
        for tensor in external_tensors(inline):
            tensor.CopyFrom(inlined(tensor))
        onnx.save_model(inline, str(path))
    else:
        _write_data_file(model, path.with_name(f"{path.name}.data"))
        path.write_bytes(stripped(model).SerializeToString())


def _write_data_file(model: onnx.ModelProto, data_path: Path) -> None:
    """Copy every tensor of at least ``EXTERNAL_MIN_BYTES`` into ``data_path``, re-pointing it there."""
    base = str(data_path.parent.resolve())
    if any(_extent(tensor)[0].resolve() == data_path.resolve() for tensor in external_tensors(model)):
        raise SurgeonError(f"{data_path}: the model's weights are read from this file; write it elsewhere")
    with open(data_path, "wb") as data:
        for tensor in _all_tensors(model):
            if tensor.data_type == onnx.TensorProto.STRING or not (
                    external_data_helper.uses_external_data(tensor) or tensor_bytes(tensor) >= EXTERNAL_MIN_BYTES):
                continue
            offset = -data.tell() % ALIGNMENT + data.tell()
            data.seek(offset)
            if external_data_helper.uses_external_data(tensor):
                source, start, length = _extent(tensor)
                with open(source, "rb") as read:
                    read.seek(start)
                    copied = _copy(read, data, length)
                if copied != length:
                    raise SurgeonError(f"external data of tensor {tensor.name!r} ends after {copied} of its "
                                       f"{length} bytes ({source})")
            else:
                raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                data.write(raw)
                length = len(raw)
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length)),
                               (BASEPATH, base)):
                _set_entry(tensor, key, value)


def _copy(read, write, length: int, chunk: int = 64 << 20) -> int:
    """Copy ``length`` bytes (fewer if ``read`` ends first) in chunks; return how many were copied."""
    copied = 0
    while copied < length:
        block = read.read(min(chunk, length - copied))
        if not block:
            break
        write.write(block)
        copied += len(block)
    return copied


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except ValueError:  # protobuf refuses to size messages over 2 GiB
        return INLINE_LIMIT_BYTES


def model_bytes(model: onnx.ModelProto) -> int:
    """The size of ``model`` with its external data: its message and the bytes its external tensors take."""
    return _byte_size(model) + sum(tensor_bytes(tensor) for tensor in external_tensors(model))


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` (initializers and tensor attributes, in subgraphs and functions too) stored as
    external data."""
    return [tensor for tensor in _all_tensors(model) if external_data_helper.uses_external_data(tensor)]


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of ``tensor``; those of an external tensor read-only and memory-mapped where NumPy can (numeric
    types of whole bytes), so that a weight is not copied until its reader copies it."""
    if not external_data_helper.uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    source, offset, length = _extent(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    mappable = dtype.kind in "biufc" and dtype.itemsize * count == length and tensor.data_type not in PACKED
    if mappable and count:
        return np.memmap(source, dtype=dtype.newbyteorder("<"), mode="r", offset=offset, shape=shape)
    return numpy_helper.to_array(inlined(tensor))


def inlined(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of ``tensor`` with its values in the message (read from its external data file, if it has one)."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    if external_data_helper.uses_external_data(tensor):
        external_data_helper.load_external_data_for_tensor(copy, _folder(tensor))
        copy.data_location = onnx.TensorProto.DEFAULT  # onnx 1.18 leaves these as they were
        del copy.external_data[:]
    return copy


# types whose values NumPy cannot map byte for byte: sub-byte ones packed two to a byte
PACKED = frozenset(getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name))


def stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose external tensors no longer say which folder they are in (onnxruntime refuses the
    ``basepath`` key): as a file written beside its data would hold them."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in external_tensors(copy):
        kept = [(entry.key, entry.value) for entry in tensor.external_data if entry.key != BASEPATH]
        del tensor.external_data[:]
        for key, value in kept:
            _set_entry(tensor, key, value)
    return copy


def data_folder(model: onnx.ModelProto) -> Path | None:
    """The folder the external tensors of ``model`` are located from; None when it has none.

    Raises ``SurgeonError`` when they are in several folders, which no
    single reader of a file (onnxruntime) can take.
    """
    folders = {_folder(tensor) for tensor in external_tensors(model)}
    if len(folders) > 1:
        raise SurgeonError(f"the model's external data is in several folders ({', '.join(sorted(folders))}); "
                           "write it with save_model to gather it in one")
    return Path(folders.pop()) if folders else None


def check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker on ``model``; one with external tensors is checked by path, with empty stand-ins for its
    data files (the checker asks only that they exist; the data itself is checked where it is read).

    Raises onnx's ``ValidationError``.
    """
    if not external_tensors(model):
        onnx.checker.check_model(model)
        return
    with tempfile.TemporaryDirectory(prefix="surgeon-check-") as folder:
        skeleton = stripped(model)
        for tensor in external_tensors(skeleton):
            location = Path(folder) / _entry(tensor, "location")
            if not location.resolve().is_relative_to(Path(folder).resolve()):
                raise onnx.checker.ValidationError(
                    f"external data of tensor {tensor.name!r} is located outside the model's folder")
            location.parent.mkdir(parents=True, exist_ok=True)
            location.touch()
        path = Path(folder) / "model.onnx"
        path.write_bytes(skeleton.SerializeToString())
        onnx.checker.check_model(str(path))


def _folder(tensor: onnx.TensorProto) -> str:
    folder = _entry(tensor, BASEPATH)
    if not folder:
        raise SurgeonError(f"external tensor {tensor.name!r} was not loaded with surgeon.onnx_io.load_model, "
                           "so its folder is not known")
    return folder


def _extent(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    """Where an external tensor's bytes are: file, offset, length (the rest of the file when not given)."""
    source = Path(_folder(tensor)) / _entry(tensor, "location")
    offset = int(_entry(tensor, "offset") or 0)
    length = _entry(tensor, "length")
    return source, offset, int(length) if length else source.stat().st_size - offset


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """How many bytes ``tensor``'s values take: in its external data file, or in the message."""
    if external_data_helper.uses_external_data(tensor):
        return _extent(tensor)[2]
    return len(tensor.raw_data) if tensor.HasField("raw_data") else tensor.ByteSize()


def _entry(tensor: onnx.TensorProto, key: str) -> str:
    return next((entry.value for entry in tensor.external_data if entry.key == key), "")


def _set_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


def _fixed_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes the values of ``tensor`` take, for types of whole bytes (0 for strings and packed types)."""
    if tensor.data_type in PACKED or tensor.data_type == onnx.TensorProto.STRING:
        return 0
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return itemsize * int(np.prod(tuple(tensor.dims), dtype=np.int64))


def _check_location(path: Path, base: Path, tensor: onnx.TensorProto) -> None:
    location = _entry(tensor, "location")
    where = f"{path}: external data of tensor {tensor.name!r} at {location!r}"
    if not location or os.path.isabs(location) or Path(location).is_absolute() or ".." in Path(location).parts:
        raise SurgeonError(f"{where} is refused: it must be a relative path inside the model's folder")
    target = (base / location).resolve()
    if base not in target.parents:
        raise SurgeonError(f"{where} is refused: it resolves to {target}, outside the model's folder")
    if not target.is_file():
        raise SurgeonError(f"{where}: no such file")
    offset, length = int(_entry(tensor, "offset") or 0), int(_entry(tensor, "length") or 0) or _fixed_bytes(tensor)
    size = target.stat().st_size
    if offset + length > size:
        raise SurgeonError(f"{where}: the file holds {size} bytes, and the tensor's data would end at byte "
                           f"{offset + length} (a truncated or wrong data file)")


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
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model``: those of its graph and of its functions' nodes."""
    return [*_tensors(model.graph), *(t for function in model.functions for t in _node_tensors(function.node))]


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
