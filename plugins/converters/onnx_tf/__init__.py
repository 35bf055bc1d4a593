"""onnx_tf: ONNX -> TensorFlow SavedModel with onnx-tf (``prepare``, then its export trace).

onnx-tf's export has the serving contract: tag ``serve`` and a
``serving_default`` signature keyed by the ONNX input and output names, with
``None`` for symbolic dimensions. The SavedModel goes straight into its
target, which the host hands over empty inside the staging folder, so a
failed run leaves no half-written SavedModel.

It differs from onnx-tf's ``export_graph`` in two ways that together halve
the conversion of a large model, and not in what the signature computes:

- only the serving signature is saved (with the variables of onnx-tf's
  recurrent ops): ``export_graph`` saves onnx-tf's whole module, whose eager
  ``__call__`` TensorFlow then traces a second time for a function no server
  calls. Load it with ``tf.saved_model.load(path).signatures["serving_default"]``.
- the trace runs without AutoGraph where it can (see ``trace``).

The SavedModel is then checked (``check_servable``): the serving contract,
and no Python callbacks (PyFunc), which run in the converting process but
fail in every server ("Could not find callback"); a failure names the ONNX nodes
behind them and the plugin that fixes them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from surgeon import Converter, PluginError, SurgeonError, hookimpl
from surgeon.errors import describe
from surgeon.naming import fresh_name
from surgeon.onnx_io import real_inputs
from surgeon_plugins.converters.onnx_tf.compat import mended_handlers

log = logging.getLogger("surgeon")
# onnx-tf's pooling types (the pooling_type argument of its py_pool) -> ONNX op
POOLING_TYPES = {"AVG": "AveragePool", "MAX": "MaxPool", "MAX_WITH_ARGMAX": "MaxPool", "LP": "LpPool"}


@dataclass(frozen=True)
class OnnxTfOptions:
    auto_cast: bool = field(default=False, metadata={
        "doc": "cast dtypes TensorFlow lacks (e.g. uint64) to ones it has, possibly losing precision"})


def signature_key_problem(name: str) -> str | None:
    """Why TensorFlow cannot use ``name`` as a function parameter and so as a signature input key."""
    if not name[:1].isalpha():
        return "it does not start with a letter"
    if not all(char.isalnum() or char == "_" for char in name):
        return "it holds characters other than letters, digits and _"
    return None


def check_input_names(model) -> None:
    for value in real_inputs(model):
        problem = signature_key_problem(value.name)
        if problem:
            raise SurgeonError(
                f"input {value.name!r} cannot be a key of the serving signature: {problem}",
                hint="add rename_outputs to --plugins (it renames such inputs to input_N), "
                "or --set rename_outputs.names=OLD:NEW",
            )


def convert(model, options: OnnxTfOptions, target: Path, ctx) -> None:
    from surgeon_plugins.passes.opset_compat import explain_unsupported

    unsupported = explain_unsupported(model)  # before TensorFlow is imported: onnx-tf would fail on these
    if unsupported:
        raise SurgeonError(unsupported)
    to_saved_model(model, options, target)
    check_servable(target, model, ctx.config.plugins)  # every writer of this SavedModel relies on it


def to_saved_model(model, options: OnnxTfOptions, target: Path) -> None:
    """The conversion alone, unchecked."""
    from surgeon.device import quiet_tensorflow, verbose

    check_input_names(model)
    model = readable_by_onnx_tf(model)
    started = time.perf_counter()
    with quiet_tensorflow(), mended_handlers() as onnx_tf:
        imported = time.perf_counter()
        try:
            representation = onnx_tf.backend.prepare(model, logging_level="INFO" if verbose() else "ERROR",
                                                     auto_cast=options.auto_cast)
            prepared = time.perf_counter()
            export(representation, target)
        except Exception as error:
            node = onnx_tf.failed_node()
            if node is None or isinstance(error, SurgeonError):
                raise
            raise PluginError("onnx_tf", f"conversion failed at ONNX node {node}: {describe(error)}",
                              hint="--debug shows the traceback") from error
    log.debug("onnx-tf: import (with TensorFlow) %.1fs, prepare %.1fs, export %.1fs",
              imported - started, prepared - imported, time.perf_counter() - prepared)


def readable_by_onnx_tf(model):
    """``model``, or a copy that means the same, written the way onnx-tf 1.10 reads it.

    - Node names that differ ignoring case: onnx-tf names an RNN node's
      variables after the node's name in lower case, and refuses a model where
      two would clash ("Node name is not unique").
    - No trailing empty inputs: an optional input left out at the end of a
      node's inputs may be written as the empty name, which onnx-tf looks up
      as a tensor (``KeyError: ''``; torchvision's swin_t has such Pads).
    """
    import onnx

    names = [node.name.lower() for node in model.graph.node]
    unique = all(names) and len(set(names)) == len(names)
    if unique and not any(node.input and not node.input[-1] for node in model.graph.node):
        return model
    readable = onnx.ModelProto()
    readable.CopyFrom(model)
    taken: set[str] = set()
    for index, node in enumerate(readable.graph.node):
        if not unique and (not node.name or node.name.lower() in taken):
            node.name = fresh_name(f"{node.name or node.op_type}_{index}".lower(), taken)
        taken.add(node.name.lower())
        while node.input and not node.input[-1]:
            node.input.pop()
    return readable


def export(representation, target: Path) -> None:
    """Save the serving signature of onnx-tf's model, traced once for export."""
    import tensorflow as tf

    module = representation.tf_module
    module.is_export = True  # onnx-tf's switch: trace for export
    root = tf.Module()
    root.handler_variables = list(module.handler_variables.values())
    tf.saved_model.save(root, str(target), signatures=trace(module, representation.signatures))


def trace(module, signatures: dict):
    """onnx-tf's ``__call__`` as a concrete function, traced without AutoGraph where it can be.

    AutoGraph rewrites the source of every onnx-tf handler a model uses before
    the trace, which costs more than the trace itself (6 of 11 s for the CT
    example). The few handlers that need it (Hardmax, NonMaxSuppression,
    Trilu among the ONNX backend node tests) fail loudly without it, using a
    symbolic tensor as a Python value; those are traced again with AutoGraph.
    """
    import tensorflow as tf

    call = type(module).__call__.python_function
    plain = tf.function(lambda **inputs: call(module, **inputs), autograph=False)
    try:
        return plain.get_concrete_function(**signatures)
    except TypeError as error:  # OperatorNotAllowedInGraphError is one
        log.debug("tracing without AutoGraph failed (%s: %s); tracing with it", type(error).__name__, error)
        return module.__call__.get_concrete_function(**signatures)


def check_servable(path: Path, model, plugins: list[str]) -> None:
    """Raise ``SurgeonError`` unless the SavedModel at ``path`` keeps the serving contract for ``model``.

    ``plugins``: the rewrite plugins that ran, for the hint.
    """
    from surgeon.saved_model_info import pyfunc_calls, read_meta_graph

    meta_graph = read_meta_graph(path)
    check_signature(meta_graph, model)
    calls = pyfunc_calls(meta_graph)
    if not calls:
        return
    nodes = onnx_nodes_behind(calls, model)
    if nodes:
        where = "for ONNX node(s) " + ", ".join(map(describe_node, nodes))
    else:
        where = "for ONNX nodes that could not be identified"
    raise SurgeonError(
        f"the converted SavedModel calls back into Python (PyFunc) {where}: TF Serving, Triton and every "
        "fresh process fail on it ('Could not find callback'), so no SavedModel was written",
        hint="pool_fix ran but left these nodes: `surgeon inspect MODEL.onnx` says why" if "pool_fix" in plugins
        else "add pool_fix to --plugins: it rewrites pooling that onnx-tf can only run through Python into "
        "pooling it converts natively (`surgeon inspect MODEL.onnx` lists such nodes)",
    )


def check_signature(meta_graph, model) -> None:
    """``serving_default`` has the ONNX inputs and outputs as keys, with the ONNX shapes."""
    from surgeon.saved_model_info import SERVING_SIGNATURE, signatures

    found = signatures(meta_graph)
    if SERVING_SIGNATURE not in found:
        raise SurgeonError(f"the converted SavedModel has no {SERVING_SIGNATURE!r} signature "
                           f"(it has: {', '.join(found) or 'none'})")
    signature = found[SERVING_SIGNATURE]
    expected = {"inputs": real_inputs(model), "outputs": list(model.graph.output)}
    for kind, values in expected.items():
        keys = {tensor["name"]: tensor for tensor in signature[kind]}
        if set(keys) != {value.name for value in values}:
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature's {kind} are {sorted(keys)}, "
                               f"not the ONNX {kind} {sorted(value.name for value in values)}")
    for value in expected["inputs"]:
        shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        got = next(tensor for tensor in signature["inputs"] if tensor["name"] == value.name)["shape"]
        if got != shape:
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature gives input {value.name!r} the shape {got}, "
                               f"the ONNX model {shape} (None: any size)")


def onnx_nodes_behind(calls, model) -> list:
    """The ONNX pooling nodes that PyFunc ``calls`` stand for, matched by the settings onnx-tf passes them.

    onnx-tf's pool_mixin.py calls ``py_pool(x, kernel_shape, strides,
    dilations, pads, ceil_mode, pooling_type, ...)`` with constants for all
    but ``x``; nodes with the same settings are all named.
    """
    from onnx import helper

    found = []
    for call in calls:
        if len(call.arguments) < 7:
            continue
        kernel, strides, dilations, pads, ceil_mode, pooling_type = call.arguments[1:7]
        for node in model.graph.node:
            if node.op_type != POOLING_TYPES.get(pooling_type) or node in found:
                continue
            attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
            if node.op_type == "AveragePool" and attributes.get("count_include_pad", 0):
                continue  # onnx-tf runs these natively; py_pool's arguments do not tell them apart
            rank = len(attributes.get("kernel_shape", []))
            settings = (list(attributes.get("kernel_shape", [])), list(attributes.get("strides", [1] * rank)),
                        list(attributes.get("dilations", [1] * rank)), bool(attributes.get("ceil_mode", 0)))
            explicit_pads = list(attributes.get("pads", [0] * 2 * rank))
            if settings == (kernel, strides, dilations, ceil_mode) and (not isinstance(pads, list)
                                                                        or pads == explicit_pads):
                found.append(node)
    return found


def describe_node(node) -> str:
    return f"{node.name!r} ({node.op_type})" if node.name else f"{node.op_type} -> {', '.join(node.output)}"


@hookimpl
def surgeon_converters():
    return [Converter(name="onnx_tf", doc="Convert ONNX to a TensorFlow SavedModel with onnx-tf 1.10.",
                      options=OnnxTfOptions, convert=convert)]
