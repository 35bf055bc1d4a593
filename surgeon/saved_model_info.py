"""What a SavedModel holds, read without importing TensorFlow (``surgeon inspect OUT/saved_model``).

``saved_model.pb`` is parsed with the copies of TensorFlow's protos that ship
in the ``tensorboard`` package (a dependency of TensorFlow), which import in
milliseconds. Only the small ``SavedModel`` wrapper message is declared here.

The TensorFlow that wrote the model is in the MetaGraphDef itself
(``meta_info_def.tensorflow_version``); the rest of the stack (onnx-tf, onnx,
torch, ...) in ``assets.extra/surgeon.json`` when surgeon wrote the model.

It also gives an example request for the ``serving_default`` signature (see
``surgeon.example_request``), addressed to the model name TF Serving would
serve it under: the model folder of a version folder (``<name>/<version>/``,
Triton's ``<name>/<version>/model.savedmodel``), else the name the run that
wrote ``OUT/saved_model`` gives it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from surgeon import stack
from surgeon.errors import SurgeonError, describe as describe_error

SERVE_TAG = "serve"
SERVING_SIGNATURE = "serving_default"
# ops that call back into the Python process that built the graph: no server has that callback
PYFUNC_OPS = frozenset({"PyFunc", "EagerPyFunc", "PyFuncStateless"})
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
DTYPE_NAMES = {"DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16"}


@dataclass(frozen=True)
class PyFuncCall:
    """One Python callback node in a SavedModel."""

    function: str  # the library function holding it, "" for the top-level graph
    node: str
    op: str
    token: str  # the key of the callback in the process that built the graph
    arguments: tuple[Any, ...]  # the value of each input that is a constant, else None


def read_meta_graph(path: Path) -> Any:
    """The ``serve`` MetaGraphDef of the SavedModel in folder ``path``."""
    pb = Path(path) / "saved_model.pb"
    if not pb.is_file():
        raise SurgeonError(f"{path}: not a SavedModel (no saved_model.pb in it)")
    saved_model = _saved_model_message()()
    try:
        saved_model.ParseFromString(pb.read_bytes())
    except Exception as error:
        raise SurgeonError(f"{pb}: not a SavedModel ({describe_error(error)})") from None
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise SurgeonError(f"{path}: no meta graph tagged {SERVE_TAG!r} (tags: {tags})")


@lru_cache(maxsize=1)
def _saved_model_message() -> type:
    """TensorFlow's ``SavedModel`` message (saved_model.proto), declared over tensorboard's MetaGraphDef."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from tensorboard.compat.proto import meta_graph_pb2

    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="surgeon/saved_model.proto", package="surgeon", syntax="proto3",
        dependency=[meta_graph_pb2.DESCRIPTOR.name])
    message = file.message_type.add(name="SavedModel")
    message.field.add(name="saved_model_schema_version", number=1, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    message.field.add(name="meta_graphs", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                      type_name=f".{meta_graph_pb2.MetaGraphDef.DESCRIPTOR.full_name}")
    pool = descriptor_pool.Default()
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("surgeon.SavedModel"))


def signatures(meta_graph: Any) -> dict[str, dict[str, Any]]:
    """Every signature: method, and inputs and outputs with dtype and shape (None: any size)."""
    return {
        key: {
            "method": signature.method_name,
            "inputs": [_tensor(name, info) for name, info in sorted(signature.inputs.items())],
            "outputs": [_tensor(name, info) for name, info in sorted(signature.outputs.items())],
        }
        for key, signature in sorted(meta_graph.signature_def.items())
        if not key.startswith("__")  # the init op SavedModels carry
    }


def _tensor(name: str, info: Any) -> dict[str, Any]:
    from tensorboard.compat.proto import types_pb2

    dtype = types_pb2.DataType.Name(info.dtype)
    shape = info.tensor_shape
    return {
        "name": name,
        "dtype": DTYPE_NAMES.get(dtype, dtype.removeprefix("DT_").lower()),
        "shape": None if shape.unknown_rank else [dim.size if dim.size >= 0 else None for dim in shape.dim],
    }


def serving_ops(meta_graph: Any, signature: str = SERVING_SIGNATURE) -> Counter:
    """Op counts of the functions that ``signature`` runs, call plumbing left out."""
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    graph_nodes = {node.name: node for node in meta_graph.graph_def.node}
    outputs = meta_graph.signature_def[signature].outputs.values() if signature in meta_graph.signature_def else []
    pending = [name for info in outputs for name in _called(graph_nodes.get(info.name.split(":")[0]))]
    seen: set[str] = set()
    ops: Counter = Counter()
    while pending:
        name = pending.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            if node.op not in CALL_OPS:
                ops[node.op] += 1
            pending.extend(_called(node))
    return ops


def _called(node: Any) -> list[str]:
    """The library functions a node calls through its attributes."""
    if node is None:
        return []
    names = []
    for value in node.attr.values():
        if value.HasField("func"):
            names.append(value.func.name)
        names.extend(function.name for function in value.list.func)
    return names


def pyfunc_calls(meta_graph: Any) -> list[PyFuncCall]:
    """Every Python callback node, in the top-level graph and in the function library."""
    bodies = [("", meta_graph.graph_def.node)]
    bodies += [(function.signature.name, function.node_def) for function in meta_graph.graph_def.library.function]
    calls = []
    for function, nodes in bodies:
        constants = {node.name: node for node in nodes if node.op == "Const"}
        for node in nodes:
            if node.op in PYFUNC_OPS:
                arguments = tuple(_constant(constants.get(name.lstrip("^").split(":")[0])) for name in node.input)
                calls.append(PyFuncCall(function=function, node=node.name, op=node.op,
                                        token=node.attr["token"].s.decode(), arguments=arguments))
    return calls


def _constant(node: Any) -> Any:
    """The value of a Const node as a Python scalar or flat list; None for other nodes and dtypes."""
    import numpy as np
    from tensorboard.compat.proto import types_pb2

    if node is None:
        return None
    tensor = node.attr["value"].tensor
    numbers = {types_pb2.DT_INT32: (np.int32, "int_val"), types_pb2.DT_INT64: (np.int64, "int64_val"),
               types_pb2.DT_FLOAT: (np.float32, "float_val"), types_pb2.DT_BOOL: (np.bool_, "bool_val")}
    if tensor.dtype == types_pb2.DT_STRING:
        values = [value.decode(errors="replace") for value in tensor.string_val]
    elif tensor.dtype in numbers:
        dtype, field = numbers[tensor.dtype]
        values = (np.frombuffer(tensor.tensor_content, dtype).tolist() if tensor.tensor_content
                  else list(getattr(tensor, field)))
    else:
        return None
    size = int(np.prod([dim.size for dim in tensor.tensor_shape.dim]))
    values += values[-1:] * (size - len(values))  # TensorFlow stores a run of equal values once
    return values if tensor.tensor_shape.dim else (values[0] if values else None)


def describe(path: str | Path) -> dict[str, Any]:
    """Signatures, ops run by ``serving_default``, Python callbacks and file sizes."""
    path = Path(path)
    meta_graph = read_meta_graph(path)
    ops = serving_ops(meta_graph)
    variables = path / "variables"
    tensorflow = meta_graph.meta_info_def.tensorflow_version
    try:
        recorded, record_problem = stack.read_record(path), None
    except ValueError as error:
        recorded, record_problem = None, str(error)
    return {
        "path": str(path),
        "tags": list(meta_graph.meta_info_def.tags),
        "tensorflow": tensorflow,
        "tensorflow_git_version": meta_graph.meta_info_def.tensorflow_git_version,
        # assets.extra/surgeon.json: None when the model was not written by surgeon (or the file is unreadable)
        "stack": recorded,
        "stack_problem": record_problem,
        "serve_with": stack.serve_with(tensorflow or (recorded or {}).get("tensorflow")),
        "signatures": signatures(meta_graph),
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "pyfuncs": [asdict(call) for call in pyfunc_calls(meta_graph)],
        "example_request": _example_request(path, meta_graph),
        "bytes": {"saved_model.pb": (path / "saved_model.pb").stat().st_size,
                  "variables": sum(f.stat().st_size for f in variables.rglob("*") if f.is_file())},
    }


def _example_request(path: Path, meta_graph: Any) -> dict[str, Any] | None:
    """The example request for ``serving_default``; None without it, ``{"problem": ...}`` when none can be built."""
    from surgeon.example_request import example_request

    signature = signatures(meta_graph).get(SERVING_SIGNATURE)
    if signature is None:
        return None
    try:
        return example_request(served_name(path), signature)
    except SurgeonError as error:
        return {"problem": str(error)}


def served_name(path: Path) -> str:
    """The model name a server would give the SavedModel in folder ``path``.

    ``<name>/<version>/`` (TF Serving) and ``<name>/<version>/model.savedmodel`` (Triton) are named by their
    model folder; ``OUT/saved_model`` by the run that wrote it (``report.json`` beside it).
    """
    from surgeon.publish import default_name

    path = Path(path).resolve()
    if path.name.isdigit() and path.parent.name:
        return path.parent.name
    if path.name == "model.savedmodel" and path.parent.name.isdigit() and path.parent.parent.name:
        return path.parent.parent.name
    try:
        report = json.loads((path.parent / "report.json").read_text())
        named = (report.get("tf_serving_commands") or {}).get("model") or default_name(report["source"])
        if isinstance(named, str) and named:
            return named
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return default_name(path.name)


def made_with(info: dict[str, Any]) -> str:
    """The stack that wrote the model: TensorFlow from the MetaGraphDef, the rest from surgeon's record."""
    recorded = dict(info["stack"] or {})
    tensorflow = info["tensorflow"] or recorded.get("tensorflow")
    recorded.pop("tensorflow", None)
    text = stack.format_stack({"tensorflow": tensorflow or "?", **recorded})
    if info["stack_problem"]:
        return f"{text} ({info['stack_problem']})"
    if info["stack"] is None:
        return f"{text} (no {stack.RECORD.as_posix()}: the rest of the stack is not recorded)"
    return text


def format_description(info: dict[str, Any]) -> str:
    """``describe``'s result as the text ``surgeon inspect`` prints."""
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in info["bytes"].items())
    lines = [f"{info['path']}: SavedModel, tags {', '.join(info['tags'])}; "
             f"TensorFlow {info['tensorflow'] or '?'}; {sizes}"]
    lines.append(f"made with: {made_with(info)}")
    if info["serve_with"]:
        lines.append(f"serve with: {info['serve_with']}")
    for key, signature in info["signatures"].items():
        lines.append(f"signature {key} ({signature['method']}):")
        for kind in ("inputs", "outputs"):
            for tensor in signature[kind]:
                shape = "unknown rank" if tensor["shape"] is None else \
                    "[" + ", ".join("?" if dim is None else str(dim) for dim in tensor["shape"]) + "]"
                lines.append(f"  {kind[:-1]:<7} {tensor['name']}  {tensor['dtype']}  {shape}")
    if SERVING_SIGNATURE not in info["signatures"]:
        lines.append(f"warning: no {SERVING_SIGNATURE!r} signature: TF Serving and Triton look for it")
    ops = ", ".join(f"{op} {count}" for op, count in info["ops"].items())
    lines.append(f"ops run by {SERVING_SIGNATURE} ({info['nodes']} nodes): {ops or 'none'}")
    if info["pyfuncs"]:
        lines.append(f"PyFunc: {len(info['pyfuncs'])} node(s) call back into Python; TF Serving, Triton and any "
                     "fresh process fail on them:")
        lines.extend(f"  {call['function'] or '(graph)'}/{call['node']}  {call['op']}  token {call['token']}"
                     for call in info["pyfuncs"])
    else:
        lines.append("PyFunc: none")
    lines.extend(request_lines(info.get("example_request")))
    return "\n".join(lines)


def request_lines(request: dict[str, Any] | None) -> list[str]:
    """The example request as ``surgeon inspect`` prints it."""
    if request is None:
        return []
    if "problem" in request:
        return [f"example request: none ({request['problem']})"]
    inputs = ", ".join(f"{tensor['name']} {tensor['dtype']} [{', '.join(map(str, tensor['shape']))}]"
                       for tensor in request["inputs"])
    return [f"example request to TF Serving's REST API (model {request['model']}, \"{request['form']}\" form, "
            f"batch 1, zeros: {inputs or 'no inputs'}):", *(f"  {line}" for line in request["commands"])]
