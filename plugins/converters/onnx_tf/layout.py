"""The serving layout: a SavedModel whose convolutions run in the layout of the device that serves it.

onnx-tf converts for one device, chosen by ``prepare(device=...)``. For the
CPU (its default) it keeps every tensor in ONNX's channels-first layout and
wraps each convolution and pooling in a transpose to channels-last and one
back, pads explicitly instead of using the convolution's own padding, and
adds the bias on the far side of a transpose, where TensorFlow's remapper
cannot fuse bias and activation into the convolution: resnet18 served 1.8x
slower than onnxruntime, a sixth of its time in 42 transposes.

For "CUDA" onnx-tf writes the model channels-first throughout, which is
what a GPU runs natively. ``optimize_for_serving`` takes that SavedModel
and, for a CPU, has TensorFlow's own Grappler move it to channels-last: its
layout optimiser converts each channels-first op and cancels the transposes
it adds, leaving them at the model's inputs and outputs. What Grappler
leaves is then done here:

- 3D pooling, which its layout optimiser does not convert, and paddings
  between two transposes (it moves paddings through them only in 2D):
  converted here, and the transposes that then meet cancelled;
- the flatten before a classifier, which ONNX does channels-first: the
  classifier's weights are reordered instead of the map transposed back;
- a transpose that moves only dimensions of size 1 becomes a reshape.

For either device, Grappler inlines the functions and folds constants
(onnx-tf transposes the weights in the graph), and then:

- paddings a convolution (or max pooling) can take itself go into it;
- a bias added by a broadcasting ``Add`` becomes a ``BiasAdd``, and a clip
  to [0, 6] a ``Relu6``: the remapper fuses convolution, bias and
  activation only in those forms.

The graph keeps plain TensorFlow ops: the serving runtime's own Grappler
fuses them for the device that serves. The serving contract does not change:
``serving_default`` keeps its keys, dtypes and shapes, and inputs and
outputs stay channels-first.

The converter calls ``write_for_serving``, handing it its own onnx-tf
conversion as a function of the device: it converts for "CUDA" and lays the
result out, or converts as before where the rewrite does not apply
(``skip_reason``): models onnx-tf converts with state (its LSTM, GRU, RNN
and NonMaxSuppression handlers assign variables while running, which a
frozen graph cannot do), models without a convolution or pooling, and 1D
ones (onnx-tf runs those through a 2D op between reshapes, which Grappler
does not lay out); and models whose weights the converter saves as
variables (over 1 GiB: freezing them would put them back into a GraphDef,
which cannot exceed 2 GB), for which the converter gives the reason.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgeon import SurgeonError
from surgeon_plugins.converters.onnx_tf.graph_rewrites import (Graph, LayoutError, biases, flattens, fold_pads,
                                                              is_channels_first, relu6s, to_channels_last,
                                                              unit_transposes)

DEVICES = ("CPU", "GPU")
SIGNATURE = "serving_default"
# ONNX ops whose TensorFlow form depends on the device onnx-tf converts for
LAYOUT_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "DepthToSpace",
                        "SpaceToDepth"})
# ONNX ops whose onnx-tf handlers keep TensorFlow variables and assign them while the model runs
STATEFUL_OPS = frozenset({"LSTM", "GRU", "RNN", "NonMaxSuppression"})
VARIABLE_OPS = frozenset({"VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VariableV2", "Variable"})
LOOP_OPS = frozenset({"While", "StatelessWhile"})


def write_for_serving(model, convert: Callable[[str, Path], None], target: Path, device: str = "CPU",
                      why_not: str | None = None) -> dict[str, Any]:
    """Write to ``target`` the SavedModel of ``model`` laid out for ``device`` ("CPU" or "GPU"); return what was done.

    ``convert(onnx_tf_device, folder)`` converts ``model`` with onnx-tf,
    ``prepare(model, device=onnx_tf_device)``, into the SavedModel folder
    ``folder``. The conversion for "CUDA" goes through a folder beside
    ``target`` and is laid out into ``target`` by ``optimize_for_serving``.
    Where the rewrite does not apply (``skip_reason``) or cannot lay the
    graph out, ``target`` gets onnx-tf's own conversion for the device
    ("CPU" for a CPU, "CUDA" for a GPU), and the result says why;
    ``why_not``: a reason the caller has to leave the layout as it is (the
    weights saved as variables), which takes precedence.
    """
    device = checked_device(device)
    native = "CUDA" if device == "GPU" else "CPU"
    why_not = why_not or skip_reason(model)
    if why_not is None:
        with tempfile.TemporaryDirectory(prefix="channels-first-", dir=Path(target).parent) as folder:
            channels_first = Path(folder) / "saved_model"
            convert("CUDA", channels_first)
            try:
                return {"onnx_tf_device": "CUDA", "rewritten": True,
                        **optimize_for_serving(channels_first, target, device)}
            except LayoutError as error:
                why_not = str(error)
    convert(native, target)
    return {"device": device, "onnx_tf_device": native, "rewritten": False, "why_not": why_not}


def checked_device(device: str) -> str:
    if device.upper() not in DEVICES:
        raise SurgeonError(f"no serving layout for device {device!r}: expected one of {', '.join(DEVICES)}")
    return device.upper()


def skip_reason(model) -> str | None:
    """Why ``model`` is served as onnx-tf converts it for the CPU, or None when the layout rewrite applies."""
    ops = {node.op_type for node in model.graph.node if node.domain in ("", "ai.onnx")}
    ops |= {node.op_type for function in model.functions for node in function.node}
    stateful = sorted(ops & STATEFUL_OPS)
    if stateful:
        return f"onnx-tf converts {', '.join(stateful)} with variables it assigns while the model runs"
    if not ops & LAYOUT_OPS:
        return "no convolution or pooling"
    if 1 in spatial_ranks(model):
        return "1D convolution or pooling, which Grappler does not lay out"
    return None


def spatial_ranks(model) -> set[int]:
    """The number of spatial dimensions of each convolution and pooling of ``model``'s graph, where known."""
    from onnx import helper

    weights = {tensor.name: len(tensor.dims) for tensor in model.graph.initializer}
    ranks = set()
    for node in model.graph.node:
        if node.op_type not in LAYOUT_OPS:
            continue
        kernel = next((helper.get_attribute_value(attribute) for attribute in node.attribute
                       if attribute.name == "kernel_shape"), None)
        if kernel is not None:
            ranks.add(len(kernel))
        elif node.op_type in ("Conv", "ConvTranspose") and node.input[1] in weights:
            ranks.add(weights[node.input[1]] - 2)
    return ranks


def optimize_for_serving(saved_model_dir: Path, target_dir: Path, device: str = "CPU") -> dict[str, Any]:
    """Write to ``target_dir`` the channels-first SavedModel at ``saved_model_dir`` laid out to serve on ``device``.

    ``saved_model_dir``: onnx-tf's conversion for "CUDA". ``device`` "CPU":
    channels-last inside, with transposes at the inputs and outputs only;
    "GPU": channels-first, as a GPU runs it (its constants folded, paddings
    and biases as above). Raises ``LayoutError``, and writes nothing, for a
    graph it cannot lay out. Returns what was done, for the report: op
    counts of the serving signature before (onnx-tf's conversion, its
    weights still transposed in the graph) and after, and what was folded.
    """
    from surgeon.saved_model_info import read_meta_graph, serving_ops

    device = checked_device(device)
    started = time.perf_counter()
    meta_graph = read_tf_meta_graph(saved_model_dir)
    signature = meta_graph.signature_def[SIGNATURE]
    variables = sorted({node.op for node in all_nodes(meta_graph.graph_def) if node.op in VARIABLE_OPS})
    if variables:
        raise LayoutError(f"the serving graph has variables ({', '.join(variables)}), which the layout rewrite "
                          "cannot freeze")
    loops = sum(node.op in LOOP_OPS for node in all_nodes(meta_graph.graph_def))
    if loops:
        raise LayoutError(f"the serving graph has {loops} loops (onnx-tf checks ScatterND indices with one), which "
                          "Grappler lowers into frames the rewritten graph cannot run")
    channels_last = device == "CPU"
    graph = Graph(grappler(meta_graph, channels_last), [info.name for info in signature.outputs.values()])
    done: Counter = Counter()
    if channels_last:
        to_channels_last(graph, done)
        left = [f"{node.name} ({node.op})" for node in graph.graph_def.node if is_channels_first(node)]
        if left:
            raise LayoutError(f"{', '.join(left)} stayed channels-first, which a CPU without oneDNN cannot run")
    fold_pads(graph, done)
    biases(graph, done)
    relu6s(graph, done)
    flattens(graph, done)
    unit_transposes(graph, done)
    graph.prune()
    save(graph.graph_def, signature, target_dir)
    return {
        "device": device,
        "layout": "channels-last" if channels_last else "channels-first",
        "ops_before": op_summary(serving_ops(read_meta_graph(saved_model_dir))),
        "ops_after": op_summary(serving_ops(read_meta_graph(target_dir))),
        **{key: done[key] for key in ("converted", "transposes_cancelled", "pads_folded", "biases", "relu6s",
                                      "flattens", "transposes_to_reshapes")},
        "seconds": round(time.perf_counter() - started, 2),
    }


def op_summary(ops: Counter) -> dict[str, int]:
    """The counts that tell the layout: transposes, pads and convolutions, and all ops but constants."""
    summary = {op: ops[op] for op in ("Transpose", "Pad", "PadV2", "Conv2D", "Conv3D", "DepthwiseConv2dNative")}
    summary["all"] = sum(count for op, count in ops.items() if op not in ("Const", "Identity", "NoOp"))
    return summary


# --------------------------------------------------------------------------- reading, Grappler, writing

def read_tf_meta_graph(path: Path):
    """The ``serve`` MetaGraphDef of the SavedModel at ``path``, as TensorFlow's own message."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags and SIGNATURE in meta_graph.signature_def:
            return meta_graph
    raise SurgeonError(f"{path}: no 'serve' meta graph with a {SIGNATURE!r} signature")


def all_nodes(graph_def) -> list:
    return list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]


def grappler(meta_graph, channels_last: bool):
    """The serving signature's graph, its functions inlined and constants folded by Grappler; channels-last if asked.

    Grappler's layout optimiser converts only nodes placed on the device it
    converts for, so every node is placed on the CPU while it runs (and
    unplaced afterwards). The loop optimiser drops the branches of
    conditionals on constants (onnx-tf wraps every Pad in one, on the sign of
    its paddings). The remapper stays off: its fused ops suit the device the
    graph is optimised on, and the serving runtime runs it again for the
    device that serves.
    """
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    item = meta_graph_pb2.MetaGraphDef()
    item.graph_def.CopyFrom(meta_graph.graph_def)
    item.signature_def[SIGNATURE].CopyFrom(meta_graph.signature_def[SIGNATURE])
    for node in all_nodes(item.graph_def):
        node.device = "/device:CPU:0"
    config = config_pb2.ConfigProto()
    options = config.graph_options.rewrite_options
    toggle = rewriter_config_pb2.RewriterConfig
    options.min_graph_nodes = -1  # small graphs too
    for name in ("function_optimization", "constant_folding", "shape_optimization", "arithmetic_optimization",
                 "dependency_optimization", "common_subgraph_elimination", "loop_optimization", "layout_optimizer"):
        setattr(options, name, toggle.ON)
    for name in ("remapping", "implementation_selector", "pin_to_host_optimization",
                 "auto_mixed_precision", "auto_mixed_precision_onednn_bfloat16", "scoped_allocator_optimization"):
        setattr(options, name, toggle.OFF)
    options.memory_optimization = toggle.NO_MEM_OPT
    if channels_last:
        options.cpu_layout_conversion = toggle.NCHW_TO_NHWC
    graph_def = tf_optimizer.OptimizeGraph(config, item)
    for node in graph_def.node:
        node.device = ""
    return graph_def


def save(graph_def, signature, target: Path) -> None:
    """A SavedModel at ``target`` serving ``graph_def`` under ``signature``'s keys, as the converter writes one."""
    import tensorflow as tf

    inputs, outputs = sorted(signature.inputs.items()), sorted(signature.outputs.items())
    specs = [tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.dtypes.as_dtype(info.dtype), name=key)
             for key, info in inputs]

    def serve(*tensors):
        returned = tf.graph_util.import_graph_def(
            graph_def, input_map={info.name: tensor for (_, info), tensor in zip(inputs, tensors)},
            return_elements=[info.name for _, info in outputs], name="model")
        return {key: as_declared(tensor, info) for (key, info), tensor in zip(outputs, returned)}

    function = tf.function(serve, input_signature=specs, autograph=False).get_concrete_function()
    tf.saved_model.save(tf.Module(), str(target), signatures={SIGNATURE: function})


def as_declared(tensor, info):
    """``tensor`` with the static shape the signature declared for it.

    The rewritten graph may know a shape better than onnx-tf's did (its
    conditionals folded); the signature must not change, so the output is
    passed through a ``PlaceholderWithDefault`` of the declared shape.
    """
    import tensorflow as tf

    declared = tf.TensorShape(info.tensor_shape)
    return tensor if tensor.shape == declared else tf.compat.v1.placeholder_with_default(tensor, declared)


__all__ = ["LayoutError", "optimize_for_serving", "skip_reason", "write_for_serving"]
