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
does not lay out).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgeon import SurgeonError

DEVICES = ("CPU", "GPU")
SIGNATURE = "serving_default"
# ONNX ops whose TensorFlow form depends on the device onnx-tf converts for
LAYOUT_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "DepthToSpace",
                        "SpaceToDepth"})
# ONNX ops whose onnx-tf handlers keep TensorFlow variables and assign them while the model runs
STATEFUL_OPS = frozenset({"LSTM", "GRU", "RNN", "NonMaxSuppression"})
VARIABLE_OPS = frozenset({"VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VariableV2", "Variable"})
# TensorFlow ops with a data_format: a CPU runs them channels-first only with oneDNN
LAYOUT_SENSITIVE = frozenset({
    "Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Conv3DBackpropInputV2", "MaxPool",
    "MaxPool3D", "AvgPool", "AvgPool3D", "DepthToSpace", "SpaceToDepth", "BiasAdd", "FusedBatchNorm",
    "FusedBatchNormV2", "FusedBatchNormV3", "MaxPoolWithArgmax"})
# those converted here when Grappler leaves them channels-first: op -> index of the input in that layout
CONVERTIBLE = {"Conv2D": 0, "Conv3D": 0, "DepthwiseConv2dNative": 0, "MaxPool": 0, "MaxPool3D": 0, "AvgPool": 0,
               "AvgPool3D": 0, "BiasAdd": 0, "DepthToSpace": 0, "SpaceToDepth": 0}
CHANNELS_LAST = {"NCHW": "NHWC", "NCDHW": "NDHWC"}
CONVOLUTIONS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative"})
MAX_POOLS = frozenset({"MaxPool", "MaxPool3D"})
PADS = frozenset({"Pad", "PadV2"})
BIASED = CONVOLUTIONS | {"MatMul"}


class LayoutError(SurgeonError):
    """A SavedModel the layout rewrite cannot lay out for the device asked for."""


def write_for_serving(model, convert: Callable[[str, Path], None], target: Path, device: str = "CPU") \
        -> dict[str, Any]:
    """Write to ``target`` the SavedModel of ``model`` laid out for ``device`` ("CPU" or "GPU"); return what was done.

    ``convert(onnx_tf_device, folder)`` converts ``model`` with onnx-tf,
    ``prepare(model, device=onnx_tf_device)``, into the SavedModel folder
    ``folder``. The conversion for "CUDA" goes through a folder beside
    ``target`` and is laid out into ``target`` by ``optimize_for_serving``.
    Where the rewrite does not apply (``skip_reason``) or cannot lay the
    graph out, ``target`` gets onnx-tf's own conversion for the device
    ("CPU" for a CPU, "CUDA" for a GPU), and the result says why.
    """
    device = checked_device(device)
    native = "CUDA" if device == "GPU" else "CPU"
    why_not = skip_reason(model)
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


def is_channels_first(node) -> bool:
    return node.op in LAYOUT_SENSITIVE and data_format(node) in CHANNELS_LAST


def data_format(node) -> str:
    """``node``'s data_format: its op's default where a SavedModel left it out, "" for ops without one.

    (Reading a missing attribute of a NodeDef would add it.)
    """
    from tensorflow.python.framework import op_def_registry

    if "data_format" in node.attr:
        return node.attr["data_format"].s.decode()
    op_def = op_def_registry.get(node.op)
    defaults = [attr.default_value.s.decode() for attr in op_def.attr if attr.name == "data_format"] if op_def else []
    return defaults[0] if defaults else ""


def int_list(node, key: str) -> list[int]:
    return list(node.attr[key].list.i) if key in node.attr else []


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


# --------------------------------------------------------------------------- the graph

def source(tensor: str) -> str:
    """The node making ``tensor`` ("name", "name:1" or the control input "^name")."""
    return tensor.lstrip("^").split(":")[0]


def is_output_0(tensor: str, name: str) -> bool:
    return tensor in (name, name + ":0")


class Graph:
    """A flat GraphDef for rewriting in place: nodes by name, their readers, constants and static shapes."""

    def __init__(self, graph_def, outputs: list[str]) -> None:
        self.graph_def = graph_def
        self.outputs = outputs
        self.shapes: dict[str, list[int | None] | None] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Index the nodes and their readers again, after a rewrite."""
        self.nodes = {node.name: node for node in self.graph_def.node}
        self._readers: dict[str, list] = defaultdict(list)
        for node in self.graph_def.node:
            for tensor in node.input:
                self._readers[source(tensor)].append(node)

    def prune(self) -> None:
        """Drop the nodes the outputs do not need."""
        needed, pending = set(), [source(tensor) for tensor in self.outputs]
        while pending:
            name = pending.pop()
            if name not in needed and name in self.nodes:
                needed.add(name)
                pending.extend(source(tensor) for tensor in self.nodes[name].input)
        for index in reversed(range(len(self.graph_def.node))):
            if self.graph_def.node[index].name not in needed:
                del self.graph_def.node[index]
        self.refresh()

    def readers(self, name: str) -> list:
        """The nodes reading an output of node ``name`` (or depending on it)."""
        return self._readers.get(name, [])

    def node(self, tensor: str):
        return self.nodes.get(source(tensor))

    def constant(self, tensor: str) -> Any:
        """The value of ``tensor`` when a Const node makes it, else None."""
        import tensorflow as tf

        node = self.node(tensor)
        if node is None or node.op != "Const" or tensor.startswith("^") or not is_output_0(tensor, node.name):
            return None
        return tf.make_ndarray(node.attr["value"].tensor)

    def add(self, name: str, op: str, inputs: list[str], attributes: dict[str, Any] | None = None):
        node = self.graph_def.node.add(name=fresh(name, self.nodes), op=op, input=inputs)
        for key, value in (attributes or {}).items():
            node.attr[key].CopyFrom(value)
        self.nodes[node.name] = node
        return node

    def add_constant(self, name: str, value) -> str:
        import tensorflow as tf

        node = self.add(name, "Const", [])
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        node.attr["dtype"].type = node.attr["value"].tensor.dtype
        return node.name

    def add_transpose(self, name: str, tensor: str, perm: list[int], dtype) -> str:
        node = self.add(name, "Transpose", [tensor, self.add_constant(name + "/perm", perm_array(perm))])
        node.attr["T"].CopyFrom(dtype)
        node.attr["Tperm"].type = self.nodes[node.input[1]].attr["dtype"].type
        return node.name

    def rewire(self, old: str, new: str) -> None:
        """Every reader of node ``old``'s first output reads tensor ``new`` instead."""
        for node in self.readers(old):
            for index, tensor in enumerate(node.input):
                if is_output_0(tensor, old):
                    node.input[index] = new
                elif tensor == "^" + old:
                    node.input[index] = "^" + source(new)

    def shape(self, tensor: str) -> list[int | None] | None:
        """The static shape of ``tensor`` (None for a size not known), by TensorFlow's shape inference.

        Computed for the whole graph at once, so ``forget_shapes`` after a
        rewrite that changes the shape of an existing tensor.
        """
        if self.shapes is None:
            import tensorflow as tf

            graph = tf.Graph()
            with graph.as_default():
                tf.graph_util.import_graph_def(self.graph_def, name="")
            self.shapes = {output.name: None if output.shape.rank is None else output.shape.as_list()
                           for operation in graph.get_operations() for output in operation.outputs}
        return self.shapes.get(tensor if ":" in tensor else tensor + ":0")

    def forget_shapes(self) -> None:
        self.shapes = None


def fresh(name: str, taken: dict) -> str:
    candidate, index = name, 0
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def perm_array(perm: list[int]):
    import numpy as np

    return np.asarray(perm, dtype=np.int32)


# --------------------------------------------------------------------------- the rewrites

def to_channels_last(graph: Graph, done: Counter) -> None:
    """Finish Grappler's conversion: the ops it left channels-first, then the transposes that meet.

    Each op left channels-first gets a transpose to channels-last before it
    and one back after it. Transposes then move above the paddings they
    follow, and two that undo each other go; until nothing changes.
    """
    for node in list(graph.graph_def.node):
        if node.op in CONVERTIBLE and is_channels_first(node):
            convert_node(graph, node)
            done["converted"] += 1
    graph.refresh()
    changed = True
    while changed:
        changed = transposes_above_pads(graph) | cancel_transposes(graph, done)
        graph.prune()
    graph.forget_shapes()


def convert_node(graph: Graph, node) -> None:
    """Run ``node`` channels-last, between a transpose to channels-last and one back; it keeps its outputs' name."""
    layout = data_format(node)
    rank = len(layout)
    to_last = [0, *range(2, rank), 1]
    to_first = [0, rank - 1, *range(1, rank - 1)]
    for key in ("ksize", "strides", "dilations"):
        values = int_list(node, key)
        if len(values) == rank:
            node.attr[key].list.i[:] = [values[axis] for axis in to_last]
    pairs = int_list(node, "explicit_paddings")
    if len(pairs) == 2 * rank:
        node.attr["explicit_paddings"].list.i[:] = [pairs[2 * axis + side] for axis in to_last for side in (0, 1)]
    node.attr["data_format"].s = CHANNELS_LAST[layout].encode()
    data = CONVERTIBLE[node.op]
    node.input[data] = graph.add_transpose(node.name + "/to_channels_last", node.input[data], to_last,
                                           node.attr["T"])
    name = node.name
    node.name = fresh(name + "/channels_last", graph.nodes)
    graph.nodes[node.name] = node
    del graph.nodes[name]
    graph.add_transpose(name, node.name, to_first, node.attr["T"])  # named as the op was: its readers stay


def transposes_above_pads(graph: Graph) -> bool:
    """Pad -> Transpose becomes Transpose -> Pad, the paddings permuted; True if any did.

    Only where every reader of the Pad is the same transpose: then the Pad
    moves next to the convolution that can take it, and the transpose next
    to the one it may cancel (Grappler does this in 2D only, and not at the
    model's input).
    """
    import numpy as np

    changed = False
    for pad in list(graph.graph_def.node):
        paddings = graph.constant(pad.input[1]) if pad.op in PADS else None
        readers = graph.readers(pad.name)
        if paddings is None or not readers:
            continue
        perms: list[Any] = [graph.constant(reader.input[1]) if reader.op == "Transpose"
                            and is_output_0(reader.input[0], pad.name) else None for reader in readers]
        if any(perm is None for perm in perms) or any(not np.array_equal(perm, perms[0]) for perm in perms):
            continue
        perm = perms[0]
        moved = graph.add_transpose(readers[0].name + "/above_pad", pad.input[0], list(perm), pad.attr["T"])
        pad.input[0] = moved
        pad.input[1] = graph.add_constant(pad.name + "/paddings", np.asarray(paddings)[perm])
        for reader in readers:
            graph.rewire(reader.name, pad.name)
        changed = True
        graph.refresh()
    return changed


def cancel_transposes(graph: Graph, done: Counter) -> bool:
    """A transpose of a transpose that undoes it reads the first one's input instead; True if any did."""
    changed = False
    for second in list(graph.graph_def.node):
        first = graph.node(second.input[0]) if second.op == "Transpose" else None
        if first is None or first.op != "Transpose" or not is_output_0(second.input[0], first.name):
            continue
        outer, inner = graph.constant(second.input[1]), graph.constant(first.input[1])
        if outer is None or inner is None or list(inner[outer]) != list(range(len(outer))):
            continue
        graph.rewire(second.name, first.input[0])
        done["transposes_cancelled"] += 1
        changed = True
        graph.refresh()
    return changed


def fold_pads(graph: Graph, done: Counter) -> None:
    """A constant Pad read only by convolutions (or max pooling) becomes their own padding.

    2D convolutions and channels-last max pooling take any padding
    (``EXPLICIT``); the others only ``SAME``, so there a Pad goes only where
    it equals ``SAME``'s (a stride-1 convolution padded by half its kernel;
    with a larger stride, for the input's static size only). Depthwise
    convolutions are among the others: an ``EXPLICIT`` one aborted the
    process in Grappler's shape inference (TensorFlow 2.21), and a CPU runs
    channels-first max pooling only with oneDNN, which pads only ``SAME``.
    Convolutions pad with zeros, max pooling with the lowest value (which
    onnx-tf pads with); a Pad with another value stays.
    """
    import numpy as np

    for pad in list(graph.graph_def.node):
        paddings = graph.constant(pad.input[1]) if pad.op in PADS else None
        readers = graph.readers(pad.name)
        if paddings is None or not readers:
            continue
        value = graph.constant(pad.input[2]) if pad.op == "PadV2" else np.zeros(())
        if value is None or np.size(value) != 1:
            continue
        paddings = np.asarray(paddings).reshape(-1, 2)
        taken: list[Any] = [padding_for(graph, reader, pad, paddings, np.asarray(value).item()) for reader in readers]
        if any(padding is None for padding in taken):
            continue
        for reader, (padding, explicit) in zip(readers, taken):
            reader.attr["padding"].s = padding.encode()
            if explicit:
                reader.attr["explicit_paddings"].list.i[:] = explicit
            reader.input[0] = pad.input[0]
        done["pads_folded"] += 1
    graph.refresh()


def padding_for(graph: Graph, reader, pad, paddings, value: float) -> tuple[str, list[int]] | None:
    """The padding (and explicit paddings) with which ``reader`` pads as ``pad`` does, or None when it cannot."""
    import numpy as np
    import tensorflow as tf

    if reader.op not in CONVOLUTIONS | MAX_POOLS or reader.attr["padding"].s != b"VALID":
        return None
    if [tensor for tensor in reader.input if source(tensor) == pad.name] != [reader.input[0]] or \
            not is_output_0(reader.input[0], pad.name):
        return None
    layout = data_format(reader)
    channel = layout.index("C")
    if len(paddings) != len(layout) or paddings[0].any() or paddings[channel].any():
        return None
    if reader.op in MAX_POOLS:
        if value not in (-np.inf, tf.dtypes.as_dtype(pad.attr["T"].type).min):
            return None
    elif value != 0:
        return None
    if reader.op == "Conv2D" or reader.op == "MaxPool" and layout == "NHWC":
        return "EXPLICIT", [int(size) for size in paddings.reshape(-1)]
    shape = graph.shape(pad.input[0])
    spatial = [axis for axis, letter in enumerate(layout) if letter not in "NC"]
    if reader.op in CONVOLUTIONS:
        kernel = graph.shape(reader.input[1])
        kernels: list[int | None] = kernel[:len(spatial)] if kernel else [None] * len(spatial)
    else:
        kernels = [int_list(reader, "ksize")[axis] for axis in spatial]
    strides, dilations = int_list(reader, "strides"), int_list(reader, "dilations") or [1] * len(layout)
    for axis, kernel_size in zip(spatial, kernels):
        if kernel_size is None or not same_padding(shape[axis] if shape else None, kernel_size, strides[axis],
                                                   dilations[axis], *paddings[axis]):
            return None
    return "SAME", []


def same_padding(size: int | None, kernel: int, stride: int, dilation: int, before: int, after: int) -> bool:
    """Whether padding ``before`` and ``after`` then a valid window computes what ``SAME`` padding does.

    They agree when they give as many outputs and pad as much before: what
    either pads after beyond the last window is never read. With stride 1
    that holds for every ``size`` (None: not known) or for none.
    """
    extent = (kernel - 1) * dilation + 1
    if size is None:
        return stride == 1 and before == (extent - 1) // 2 and before + after == extent - 1
    outputs = math.ceil(size / stride)
    if (size + before + after - extent) // stride + 1 != outputs:
        return False
    return before == max((outputs - 1) * stride + extent - size, 0) // 2


def biases(graph: Graph, done: Counter) -> None:
    """A constant added along the channels of a convolution's (or MatMul's) output becomes a ``BiasAdd``.

    onnx-tf adds a bias with a broadcasting ``Add``; TensorFlow's remapper
    fuses a convolution with its bias and activation only through a
    ``BiasAdd``.
    """
    for add in list(graph.graph_def.node):
        if add.op not in ("Add", "AddV2") or len(add.input) != 2:
            continue
        for value_index in (0, 1):
            producer, bias = graph.node(add.input[value_index]), graph.constant(add.input[1 - value_index])
            if producer is None or producer.op not in BIASED or bias is None:
                continue
            shape = graph.shape(add.input[value_index])
            channels_last = data_format(producer) not in CHANNELS_LAST
            if shape is None or bias.ndim > len(shape):
                continue
            channel = len(shape) - 1 if channels_last else 1
            aligned = (1,) * (len(shape) - bias.ndim) + bias.shape
            if aligned[channel] != shape[channel] or any(size != 1 for axis, size in enumerate(aligned)
                                                         if axis != channel):
                continue
            add.op = "BiasAdd"
            add.input[:] = [add.input[value_index], graph.add_constant(add.name + "/bias", bias.reshape(-1))]
            add.attr["data_format"].s = b"NHWC" if channels_last else b"NCHW"
            done["biases"] += 1
            break
    graph.refresh()


def relu6s(graph: Graph, done: Counter) -> None:
    """Minimum with 6 then Maximum with 0 (ONNX's Clip(0, 6), as onnx-tf writes it) becomes a ``Relu6``.

    The remapper fuses a ``Relu6`` into the convolution before it, not a
    clip: MobileNets apply one after nearly every convolution.
    """
    bounds = {"Minimum": 6, "Maximum": 0}
    for outer in list(graph.graph_def.node):
        inner = graph.node(outer.input[0]) if outer.op in bounds else None
        if inner is None or inner.op not in bounds or inner.op == outer.op or len(graph.readers(inner.name)) != 1:
            continue
        limits = [graph.constant(node.input[1]) for node in (outer, inner)]
        if any(limit is None or limit.size != 1 or limit.item() != bounds[node.op]
               for limit, node in zip(limits, (outer, inner))):
            continue
        outer.op = "Relu6"
        outer.input[:] = [inner.input[0]]
        done["relu6s"] += 1
    graph.refresh()


def flattens(graph: Graph, done: Counter) -> None:
    """A flatten of a channels-last map for a MatMul takes it as it is, and the MatMul's weights are reordered.

    ONNX flattens channels-first, so the layout optimiser leaves a
    transpose back in front of the flatten after the last pooling (unless
    the map is 1x1, see ``unit_transposes``): VGG's classifier, a CT
    model's head at another input size. Reordering the rows of the weights
    once does the same.
    """
    import numpy as np

    for reshape in list(graph.graph_def.node):
        transpose = graph.node(reshape.input[0]) if reshape.op == "Reshape" else None
        if transpose is None or transpose.op != "Transpose" or not is_output_0(reshape.input[0], transpose.name):
            continue
        perm, shape, flat = graph.constant(transpose.input[1]), graph.shape(transpose.input[0]), \
            graph.shape(reshape.name)
        if perm is None or shape is None or None in shape[1:] or flat is None or len(flat) != 2:
            continue
        rank = len(shape)
        readers = graph.readers(reshape.name)
        weights: list[Any] = [graph.constant(reader.input[1]) if reader.op == "MatMul"
                              and not flag(reader, "transpose_a") and not flag(reader, "transpose_b")
                              and is_output_0(reader.input[0], reshape.name) else None for reader in readers]
        if list(perm) != [0, rank - 1, *range(1, rank - 1)] or not readers or any(w is None for w in weights):
            continue
        for reader, value in zip(readers, weights):
            rows = np.moveaxis(value.reshape(shape[rank - 1], *shape[1:rank - 1], -1), 0, rank - 2)
            reader.input[1] = graph.add_constant(reader.name + "/channels_last_weights", rows.reshape(value.shape))
        reshape.input[:] = [transpose.input[0],
                            graph.add_constant(reshape.name + "/shape", perm_array([-1, flat_size(shape)]))]
        reshape.attr["Tshape"].type = graph.nodes[reshape.input[1]].attr["dtype"].type
        done["flattens"] += 1
    graph.refresh()


def flat_size(shape: list[int | None]) -> int:
    """The number of values per sample of a batch of ``shape``, its other dimensions known."""
    return math.prod(size or 0 for size in shape[1:])


def flag(node, key: str) -> bool:
    return key in node.attr and node.attr[key].b


def unit_transposes(graph: Graph, done: Counter) -> None:
    """A transpose that moves only dimensions of size 1 becomes a reshape: its data stays where it is.

    What the layout optimiser leaves before the flatten after a global
    pooling: [N, 1, 1, C] back to [N, C, 1, 1].
    """
    for transpose in list(graph.graph_def.node):
        perm: Any = graph.constant(transpose.input[1]) if transpose.op == "Transpose" else None
        shape = graph.shape(transpose.input[0]) if perm is not None else None
        if shape is None:
            continue
        moved = [shape[axis] for axis in perm]
        kept = [axis for axis in range(len(shape)) if shape[axis] != 1]
        if [axis for axis in perm if shape[axis] != 1] != kept or sum(size is None for size in moved) > 1:
            continue
        transpose.op = "Reshape"
        transpose.input[1] = graph.add_constant(transpose.name + "/shape", perm_array(
            [-1 if size is None else size for size in moved]))
        del transpose.attr["Tperm"]
        transpose.attr["Tshape"].type = graph.nodes[transpose.input[1]].attr["dtype"].type
        done["transposes_to_reshapes"] += 1
    graph.refresh()


__all__ = ["LayoutError", "optimize_for_serving", "skip_reason", "write_for_serving"]
