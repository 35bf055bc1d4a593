"""onnx_tf: ONNX -> TensorFlow SavedModel with onnx-tf (``prepare``, then its export trace).

onnx-tf's export has the serving contract: tag ``serve`` and a
``serving_default`` signature keyed by the ONNX input and output names, with
``None`` for symbolic dimensions. An input name TensorFlow cannot take as a
key (``input.1``, ``images:0``, ``入力``) gets the one
``surgeon.naming.signature_input_keys`` derives (``input_1``), logged and kept
in the report (``signature_names``: ONNX name -> key, the renamed inputs
only). The SavedModel goes straight into its target, which the host hands
over empty inside the staging folder, so a failed run leaves no half-written
SavedModel.

It differs from onnx-tf's ``export_graph`` in two ways that together halve
the conversion of a large model, and not in what the signature computes:

- only the serving signature is saved (with the variables of onnx-tf's
  recurrent ops): ``export_graph`` saves onnx-tf's whole module, whose eager
  ``__call__`` TensorFlow then traces a second time for a function no server
  calls. Load it with ``tf.saved_model.load(path).signatures["serving_default"]``.
- the trace runs without AutoGraph where it can (see ``trace``).

A model whose initializers take ``variables_from`` bytes or more (1 GiB by
default) has its weights saved as variables (``variables/``) instead of
constants in ``saved_model.pb``, which cannot exceed 2 GB (see ``weights``);
its weights are read from the model's data file, never held in a protobuf
message, and the serving layout is then left as onnx-tf converts it.

The SavedModel is then checked (``check_servable``): the serving contract,
and no Python callbacks (PyFunc), which run in the converting process but
fail in every server ("Could not find callback"); a failure names the ONNX nodes
behind them and the plugin that fixes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING, Literal

from surgeon import Converter, Hazard, PluginError, SurgeonError, hookimpl
from surgeon.errors import describe as describe_error
from surgeon.graph import describe
from surgeon.naming import signature_input_keys
from surgeon.onnx_io import opset_of, real_inputs, tensor_bytes
from surgeon_plugins.converters.onnx_tf import support
from surgeon_plugins.converters.onnx_tf.compat import mended_handlers
from surgeon_plugins.converters.onnx_tf.layout import write_for_serving
from surgeon_plugins.converters.onnx_tf.readable import readable_by_onnx_tf
from surgeon_plugins.converters.onnx_tf.weights import capture, for_onnx_tf, variable_weights

if TYPE_CHECKING:
    import onnx

    from surgeon.context import Context

log = logging.getLogger("surgeon")
# onnx-tf's pooling types (the pooling_type argument of its py_pool) -> ONNX op
POOLING_TYPES = {"AVG": "AveragePool", "MAX": "MaxPool", "MAX_WITH_ARGMAX": "MaxPool", "LP": "LpPool"}


@dataclass(frozen=True)
class OnnxTfOptions:
    auto_cast: bool = field(default=False, metadata={
        "doc": "cast dtypes TensorFlow lacks (e.g. uint64) to ones it has, possibly losing precision"})
    layout: Literal["auto", "cpu", "gpu", "onnx-tf"] = field(default="auto", metadata={
        "doc": "lay the SavedModel out to serve on: cpu (channels-last inside, transposes only at the inputs and "
               "outputs), gpu (channels-first throughout), auto (gpu when --device is a GPU, else cpu), or onnx-tf "
               "(as onnx-tf converts for the CPU)"})
    variables_from: int = field(default=2**30, metadata={
        "doc": "when the model's initializers take at least this many bytes, save each of 1 KiB or more as a "
               "variable (saved_model/variables/) rather than a constant in saved_model.pb, which cannot exceed "
               "2 GB; the layout is then left as onnx-tf converts it"})


def serving_device(layout: str, device: str | None) -> str | None:
    """The device the SavedModel is laid out for ("CPU", "GPU"), or None for onnx-tf's own CPU conversion."""
    if layout == "onnx-tf":
        return None
    if layout == "auto":
        return "GPU" if device not in (None, "cpu") else "CPU"
    return layout.upper()


def input_keys(model) -> dict[str, str]:
    """Each real input of ``model`` -> its key in the serving signature."""
    return signature_input_keys([value.name for value in real_inputs(model)],
                                [value.name for value in model.graph.output])


def convert(model: onnx.ModelProto, options: OnnxTfOptions, target: Path, ctx: Context) -> None:
    check_convertible(model)  # before TensorFlow is imported: onnx-tf would fail on these
    keys = input_keys(model)
    device = serving_device(options.layout, ctx.device)
    weights = variable_weights(model, options.variables_from)
    if weights:
        total = sum(tensor_bytes(tensor) for tensor in weights.values())
        ctx.record("variables", {"tensors": len(weights), "bytes": total})
        log.info("  %d weights (%.3g GB) saved as variables: the model's weights take %s bytes or more "
                 "(onnx_tf.variables_from)", len(weights), total / 1e9, options.variables_from)
    if device is None:
        to_saved_model(model, options, target)
    else:
        from surgeon.device import quiet_tensorflow

        def checked_conversion(onnx_tf_device: str, folder: Path) -> None:
            """onnx-tf's conversion, checked before the layout rewrite folds the arguments that tell which ONNX
            node a Python callback stands for."""
            to_saved_model(model, options, folder, onnx_tf_device)
            check_servable(folder, model)

        why_not = "weights saved as variables, which the layout rewrite cannot freeze" if weights else None
        with quiet_tensorflow():
            done = write_for_serving(model, checked_conversion, target, device, why_not)
        ctx.record("layout", done)
        log_layout(done)
    check_servable(target, model)  # every writer of this SavedModel relies on it
    renamed = {name: key for name, key in keys.items() if key != name}
    ctx.record("signature_names", renamed)
    if renamed:
        log.info("onnx_tf: TensorFlow takes only ASCII letters, digits and _, starting with a letter, as input "
                 "keys: the serving signature takes %s (kept in report.json as signature_names; the rename_outputs "
                 "pass chooses other names)", ", ".join(f"{name!r} as {key!r}" for name, key in renamed.items()))


def check_convertible(model: onnx.ModelProto) -> None:
    """Raise ``SurgeonError`` naming the nodes the installed onnx-tf has no handler for, grouped by operator."""
    unconvertible = support.unconvertible(model)
    if not unconvertible:
        return
    groups: dict[str, list[str]] = {}
    for node, label in unconvertible:
        groups.setdefault(label, []).append(describe(node))
    count = len(unconvertible)
    lines = [f"onnx-tf {support.handlers().version} cannot convert {count} node{'s' if count > 1 else ''} of this "
             f"opset-{opset_of(model)} model:"]
    for label, nodes in groups.items():
        shown = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        lines.append(f"  {label} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {shown}): "
                     f"{support.handlers().describe(label.rsplit('-', 1)[0])}")
    raise SurgeonError("\n".join(lines), hazard=Hazard.UNCONVERTIBLE_NODE,
                       nodes=[node.name for node, _ in unconvertible if node.name])


def log_layout(done: dict) -> None:
    """One line on how the SavedModel was laid out (``write_for_serving``'s record)."""
    if not done["rewritten"]:
        log.info("  laid out as onnx-tf converts for %s: %s", done["onnx_tf_device"], done["why_not"])
        return
    left = ", ".join(f"{done['ops_after'].get(op, 0)} {op}" for op in ("Transpose", "Pad"))
    log.info("  laid out %s for the %s in %.1fs (%s left)", done["layout"], done["device"], done["seconds"], left)


def to_saved_model(model, options: OnnxTfOptions, target: Path, device: str = "CPU") -> None:
    """The conversion alone, unchecked, by onnx-tf for ``device`` ("CPU" or "CUDA": channels-first throughout),
    each input under its key in the serving signature (``input_keys``), large weights as variables
    (``weights``)."""
    from surgeon.device import quiet_tensorflow, verbose

    weights = variable_weights(model, options.variables_from)
    readable = readable_by_onnx_tf(for_onnx_tf(model, weights))
    started = time.perf_counter()
    with quiet_tensorflow(), mended_handlers() as onnx_tf:
        imported = time.perf_counter()
        try:
            representation = onnx_tf.backend.prepare(readable, device=device, auto_cast=options.auto_cast,
                                                     logging_level="INFO" if verbose() else "ERROR")
            prepared = time.perf_counter()
            export(representation, target, input_keys(model), capture(representation, weights))
        except Exception as error:
            failed = onnx_tf.failed_node()
            if failed is None or isinstance(error, SurgeonError):
                raise
            node = users_node(model, readable, failed)
            inputs = ", ".join(map(repr, node.input))
            raise PluginError("onnx_tf", f"conversion failed at {describe(node)} (inputs {inputs}): "
                              f"{describe_error(error)}", hint="--debug shows the traceback",
                              hazard=Hazard.UNCONVERTIBLE_NODE, nodes=[node.name] if node.name else []) from error
    log.debug("onnx-tf: import (with TensorFlow) %.1fs, prepare %.1fs, export %.1fs",
              imported - started, prepared - imported, time.perf_counter() - prepared)


def users_node(model: onnx.ModelProto, readable: onnx.ModelProto, name: str) -> onnx.NodeProto:
    """The node of ``model`` that ``readable_by_onnx_tf`` named ``name``: it keeps the nodes in order, renaming
    some, so the user's node is at the same place (a node of a subgraph is searched there by name)."""
    index = next((i for i, node in enumerate(readable.graph.node) if node.name == name), None)
    if index is not None:
        return model.graph.node[index]
    return next(node for node in support.all_nodes(model.graph) if node.name == name)


def export(representation, target: Path, keys: dict[str, str], weights: Sequence = ()) -> None:
    """Save the serving signature of onnx-tf's model, traced once for export; ``keys``: ONNX input -> its key;
    ``weights``: the variables ``capture`` gave the model, saved in ``variables/``."""
    import tensorflow as tf

    module = representation.tf_module
    module.is_export = True  # onnx-tf's switch: trace for export
    root = tf.Module()
    root.handler_variables = list(module.handler_variables.values())
    root.weights = list(weights)
    tf.saved_model.save(root, str(target), signatures=trace(module, representation.signatures, keys))


def trace(module, signatures: dict, keys: dict[str, str]):
    """onnx-tf's ``__call__`` as a concrete function taking each input by its key, traced without AutoGraph where
    it can be.

    ``signatures``: onnx-tf's input specs by ONNX name; ``keys``: ONNX name
    -> signature key. The specs are named by key, since TensorFlow keys a
    signature input by its spec's name (onnx-tf names the spec of ``a:0``
    ``a_tf_0_`` and a random suffix).

    AutoGraph rewrites the source of every onnx-tf handler a model uses before
    the trace, which costs more than the trace itself (6 of 11 s for the CT
    example). The few handlers that need it (Hardmax, NonMaxSuppression,
    Trilu among the ONNX backend node tests) fail loudly without it, using a
    symbolic tensor as a Python value; those are traced again with AutoGraph.
    """
    import tensorflow as tf

    # __call__ is a tf.function there; python_function, the function it wraps, is an attribute of tf.function's
    call = getattr(type(module).__call__, "python_function")
    specs = {keys[name]: tf.TensorSpec(spec.shape, spec.dtype, name=keys[name]) for name, spec in signatures.items()}

    def serve(**inputs):
        return call(module, **{name: inputs[keys[name]] for name in signatures})

    try:
        return tf.function(serve, autograph=False).get_concrete_function(**specs)
    except TypeError as error:  # OperatorNotAllowedInGraphError is one
        log.debug("tracing without AutoGraph failed (%s: %s); tracing with it", type(error).__name__, error)
        return tf.function(serve).get_concrete_function(**specs)


def check_servable(path: Path, model: onnx.ModelProto) -> None:
    """Raise ``SurgeonError`` unless the SavedModel at ``path`` keeps the serving contract for ``model`` and runs
    no Python callbacks (a ``Hazard.PYTHON_CALLBACK`` naming the ONNX nodes behind them)."""
    from surgeon.saved_model_info import pyfunc_calls, read_meta_graph

    meta_graph = read_meta_graph(path)
    check_signature(meta_graph, model)
    calls = pyfunc_calls(meta_graph)
    if not calls:
        return
    nodes = onnx_nodes_behind(calls, model)
    if nodes:
        where = "for " + ", ".join(map(describe, nodes))
    else:
        where = "for nodes that could not be identified"
    raise SurgeonError(
        f"the converted SavedModel calls back into Python (PyFunc) {where}: TF Serving, Triton and every "
        "fresh process fail on it ('Could not find callback'), so no SavedModel was written",
        hazard=Hazard.PYTHON_CALLBACK, nodes=[node.name for node in nodes if node.name])


def check_signature(meta_graph, model) -> None:
    """``serving_default`` has the ONNX inputs (by ``input_keys``) and outputs as keys, with the ONNX shapes."""
    from surgeon.saved_model_info import SERVING_SIGNATURE, signatures

    found = signatures(meta_graph)
    if SERVING_SIGNATURE not in found:
        raise SurgeonError(f"the converted SavedModel has no {SERVING_SIGNATURE!r} signature "
                           f"(it has: {', '.join(found) or 'none'})")
    signature = found[SERVING_SIGNATURE]
    keys = input_keys(model)
    expected = {"inputs": list(keys.values()), "outputs": [value.name for value in model.graph.output]}
    for kind, names in expected.items():
        got = sorted(tensor["name"] for tensor in signature[kind])
        if got != sorted(names):
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature's {kind} are {got}, not {sorted(names)}")
    for value in real_inputs(model):
        shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        key = keys[value.name]
        got = next(tensor for tensor in signature["inputs"] if tensor["name"] == key)["shape"]
        if got != shape:
            raise SurgeonError(f"the {SERVING_SIGNATURE!r} signature gives input {key!r} the shape {got}, "
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


@hookimpl
def surgeon_converters():
    return [Converter(name="onnx_tf", doc="Convert ONNX to a TensorFlow SavedModel with onnx-tf 1.10.",
                      options=OnnxTfOptions, convert=convert)]
