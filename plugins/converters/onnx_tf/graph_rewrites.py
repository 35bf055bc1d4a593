"""The rewrites of a flat TensorFlow GraphDef that the serving layout (``layout.py``) applies after Grappler.

Grappler's layout optimiser leaves some channels-first ops and the transposes around them (3D pooling, paddings
between two transposes); these rewrites convert those, cancel the transposes that then meet, fold paddings into
the convolutions that can take them, and write biases and clips in the forms TensorFlow's remapper fuses.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from surgeon import SurgeonError

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
