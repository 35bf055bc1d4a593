"""Models written the way onnx-tf 1.10 reads them, meaning what they meant: ``readable_by_onnx_tf``.

ONNX lets a node leave out an optional input by writing the empty name
``''``, at the end of its inputs or between two inputs it gives. onnx-tf's
handlers mostly test ``len(node.inputs) > i`` and then look the name up as a
tensor, so an empty name there fails the conversion (``KeyError: ''``); a few
read it with ``tensor_dict.get`` and silently compute something else. Found
by reading the handlers (``onnx_tf/handlers/backend``) and converting a small
model per operator with each optional input left out in turn; every mend keeps
the ONNX meaning:

- ConvInteger, MatMulInteger: a left-out ``x_zero_point`` / ``a_zero_point``
  before the other zero point is 0 of the data's type.
- Dropout-12/13: a left-out ``ratio`` before ``training_mode`` is 0.5; when
  ``training_mode`` is the constant false the node copies its input whatever
  the ratio, so both are left out (onnx-tf takes any ``training_mode`` input
  for training and would drop values at random).
- Slice-10/11/13: left-out ``axes`` before ``steps`` are ``0..len(starts)-1``
  (in the type of ``starts``); left out when the length is not known before
  run time.
- RNN, GRU, LSTM: a left-out ``B`` before a later input is zeros of shape
  ``[num_directions, 2 * gates * hidden_size]``; so is a GRU's ``B`` left
  out at the end or not given at all: onnx-tf's GRU without ``B`` converts,
  then fails when it runs ("Must provide as many biases as the channel size").
- LSTM: ``initial_h`` left out while ``initial_c`` is given, or ``initial_c``
  left out before ``P`` while ``initial_h`` is given: onnx-tf then starts both
  states from zeros (no error). The left-out state is zeros of shape
  ``[num_directions, batch, hidden_size]``; when the batch is not fixed in the
  model no constant can stand for it, and a ``PluginError`` names the node.
- Loop: its handler reads ``M`` and ``cond`` by position and knows ``''``, so
  its inputs stay as they are (dropping a trailing empty ``cond`` would leave
  an invalid Loop).
- Every other trailing empty input is dropped; inner empty inputs of the
  other operators onnx-tf converts are read correctly by their handlers
  (Clip, Resize, NonMaxSuppression, Scan-8, the recurrent ``sequence_lens``,
  LSTM with both states left out) and are kept.
- Empty outputs get fresh names: onnx-tf files each output under its name, and
  a later lookup of ``''`` would find it (a GRU took an LSTM's unnamed ``Y``
  as its ``sequence_lens``).

Subgraphs (If, Loop, Scan bodies) are mended too; fills are initializers of
the main graph, which every subgraph sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from surgeon import Hazard, PluginError
from surgeon.graph import CONSTANT_ATTRIBUTES, describe
from surgeon.naming import fresh_name
from surgeon_plugins.converters.onnx_tf.support import ONNX_DOMAINS, all_nodes

RNN_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
KEPT_IN_PLACE = frozenset({"Loop"})  # ops whose handler reads every input by position, '' included


def readable_by_onnx_tf(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy that means the same, written the way onnx-tf 1.10 reads it.

    - Node names that differ ignoring case: onnx-tf names an RNN node's
      variables after the node's name in lower case, and refuses a model where
      two would clash ("Node name is not unique").
    - Empty optional inputs (the module's docstring lists them by operator):
      an inner one onnx-tf would look up as a tensor (``KeyError: ''``) or
      read wrongly is given its ONNX default as an initializer; trailing ones
      are dropped (torchvision's swin_t has such Pads), Loop's excepted;
      empty outputs are named; a GRU without ``B`` is given zeros.

    The nodes keep their order (of the main graph and of each subgraph), so
    node ``i`` of the copy is the user's node ``i``, renamed at most. Raises
    ``PluginError`` naming the node where an LSTM state left out can have no
    constant default (the batch is not fixed).
    """
    names = [node.name.lower() for node in model.graph.node]
    unique = all(names) and len(set(names)) == len(names)
    if unique and not any(gru_without_bias(node) or not all((*node.input, *node.output))
                          for node in all_nodes(model.graph)):
        return model
    readable = onnx.ModelProto()
    readable.CopyFrom(model)
    known = Known(model)
    for node in all_nodes(readable.graph):
        mend = MENDS.get(node.op_type) if node.domain in ONNX_DOMAINS else None
        if mend is not None:
            mend(node, known)
        if node.op_type not in KEPT_IN_PLACE:
            while node.input and not node.input[-1]:
                node.input.pop()
        for index, name in enumerate(node.output):
            if not name:
                node.output[index] = known.name(f"{node.name or node.op_type}/unused_output_{index}")
    known.add_fills(readable)
    taken: set[str] = set()
    for index, node in enumerate(readable.graph.node):
        if not unique and (not node.name or node.name.lower() in taken):
            node.name = fresh_name(f"{node.name or node.op_type}_{index}".lower(), taken)
        taken.add(node.name.lower())
    return readable


class Known:
    """What a mend needs to know of the user's model (which it reads only): constants, element types, static
    shapes and taken names; and the fills the mends give, added to the copy at the end (``add_fills``).

    Types and shapes come from the model's declarations, then from ONNX shape inference, run once and only when
    a declaration does not tell.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.taken: set[str] = set()
        self.constants: dict[str, onnx.TensorProto | np.ndarray] = {}
        self.types: dict[str, onnx.TypeProto] = {}
        self.inferred: dict[str, onnx.TypeProto] | None = None
        self.fills: list[onnx.TensorProto] = []
        for graph in graphs(model.graph):
            for tensor in graph.initializer:
                self.constants[tensor.name] = tensor
                self.types[tensor.name] = onnx.helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
            for value in (*graph.input, *graph.output, *graph.value_info):
                self.types.setdefault(value.name, value.type)
            for node in graph.node:
                self.taken.update((*node.input, *node.output, node.name))
                if node.op_type == "Constant" and node.domain in ONNX_DOMAINS and node.output:
                    value = constant_of(node)
                    if value is not None:
                        self.constants[node.output[0]] = value
        self.taken.update(self.constants, self.types)

    def name(self, base: str) -> str:
        """A tensor name no tensor or node of the model has; it is taken from now on."""
        return fresh_name(base, self.taken)

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (an initializer or a Constant's output); None when computed."""
        value = self.constants.get(name)
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of a tensor; None when unknown."""
        found = self.type_of(name, lambda tensor_type: tensor_type.elem_type != 0)
        return found.elem_type if found is not None else None

    def shape(self, name: str) -> list[int | None] | None:
        """The shape of a tensor, None for each dimension not fixed in the model; None when the rank is unknown."""
        found = self.type_of(name, lambda tensor_type: tensor_type.HasField("shape"))
        if found is None:
            return None
        return [dim.dim_value if dim.HasField("dim_value") else None for dim in found.shape.dim]

    def type_of(self, name: str, tells: Callable[[onnx.TypeProto.Tensor], bool]) -> onnx.TypeProto.Tensor | None:
        """The tensor type of ``name`` where ``tells`` holds for it: as declared, else as inferred."""
        def telling(found: onnx.TypeProto | None) -> bool:
            return found is not None and found.HasField("tensor_type") and tells(found.tensor_type)

        found = self.types.get(name)
        if not telling(found):
            found = self.inferred_types().get(name)
        return found.tensor_type if found is not None and telling(found) else None

    def inferred_types(self) -> dict[str, onnx.TypeProto]:
        """The types ONNX shape inference gives the model's tensors (computed once; empty where it fails)."""
        if self.inferred is None:
            self.inferred = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # a model too large for one protobuf, or one inference rejects: declarations only
                return self.inferred
            for graph in graphs(inferred.graph):
                for value in (*graph.input, *graph.output, *graph.value_info):
                    self.inferred.setdefault(value.name, value.type)
        return self.inferred

    def fill(self, node: onnx.NodeProto, index: int, label: str, value: np.ndarray) -> None:
        """Give ``node`` the constant ``value`` as input ``index``."""
        tensor = numpy_helper.from_array(value, self.name(f"{node.name or node.op_type}/{label}"))
        self.fills.append(tensor)
        node.input[index] = tensor.name

    def add_fills(self, copy: onnx.ModelProto) -> None:
        """Add the fills to the main graph of ``copy``: as initializers, and as inputs too before IR version 4,
        which required every initializer to be one."""
        graph = copy.graph
        graph.initializer.extend(self.fills)
        if copy.ir_version < 4:
            graph.input.extend(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
                               for tensor in self.fills)


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and the subgraphs in its nodes' attributes, at every depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs]:
                yield from graphs(subgraph)


def constant_of(node: onnx.NodeProto) -> onnx.TensorProto | np.ndarray | None:
    """The value a Constant node holds; None for a sparse value."""
    for attribute in node.attribute:
        if attribute.name == "value":
            return attribute.t
        if attribute.name in CONSTANT_ATTRIBUTES:
            return np.array(onnx.helper.get_attribute_value(attribute), dtype=CONSTANT_ATTRIBUTES[attribute.name])
    return None


def left_out_inside(node: onnx.NodeProto, index: int) -> bool:
    """Whether ``node`` leaves input ``index`` out (writes ``''``) and gives a later input."""
    return index < len(node.input) and not node.input[index] and any(node.input[index + 1:])


def attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    """The value of ``node``'s attribute ``name``; ``default`` when it has none."""
    found = next((each for each in node.attribute if each.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def numpy_type(elem_type: int | None) -> np.dtype | None:
    """The NumPy type of an ONNX element type; None when unknown or without one."""
    if not elem_type:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- the mends, by operator

def zero_point(node: onnx.NodeProto, known: Known) -> None:
    """ConvInteger, MatMulInteger: a first zero point left out before the second is 0 of the data's type."""
    dtype = numpy_type(known.elem_type(node.input[0]))
    if left_out_inside(node, 2) and dtype is not None:
        known.fill(node, 2, "zero_point", np.zeros((), dtype))


def dropout(node: onnx.NodeProto, known: Known) -> None:
    """Dropout-12/13 with ``ratio`` left out before ``training_mode``."""
    if not left_out_inside(node, 1):
        return
    training = known.value(node.input[2])
    if training is not None and training.size == 1 and not training.any():
        del node.input[1:]  # inference: the output is the input, whatever the ratio
    else:
        known.fill(node, 1, "ratio", np.array(0.5, np.float32))


def slice_axes(node: onnx.NodeProto, known: Known) -> None:
    """Slice-10/11/13 with ``axes`` left out before ``steps``: the first ``len(starts)`` axes."""
    if not left_out_inside(node, 3):
        return
    bounds = node.input[1:3] + node.input[4:5]

    def length(name: str) -> int | None:
        value = known.value(name)
        if value is not None:
            return int(value.size)
        shape = known.shape(name)
        return shape[0] if shape is not None and len(shape) == 1 else None

    count = next((size for size in map(length, bounds) if size is not None), None)
    dtype = next(filter(None, map(numpy_type, map(known.elem_type, bounds))), None)
    if count is not None and dtype is not None:
        known.fill(node, 3, "axes", np.arange(count, dtype=dtype))


def recurrent(node: onnx.NodeProto, known: Known) -> None:
    """RNN, GRU, LSTM: a bias left out before a later input; for LSTM, one initial state left out while the
    other is given."""
    directions = 2 if attribute(node, "direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    hidden = hidden_size(node, known)
    dtype = numpy_type(known.elem_type(node.input[1])) or numpy_type(known.elem_type(node.input[0]))
    if (left_out_inside(node, 3) or gru_without_bias(node)) and hidden is not None and dtype is not None:
        node.input.extend([""] * (4 - len(node.input)))
        known.fill(node, 3, "B", np.zeros((directions, 2 * RNN_GATES[node.op_type] * hidden), dtype))
    if node.op_type != "LSTM":
        return
    given = [index < len(node.input) and bool(node.input[index]) for index in (5, 6)]
    for index, other in ((5, 6), (6, 5)):
        if not left_out_inside(node, index) or not given[other - 5]:
            continue
        x_shape = known.shape(node.input[0])
        batch_first = attribute(node, "layout", 0) == 1  # X [batch, seq, input] and states [batch, dirs, hidden]
        batch = x_shape[0 if batch_first else 1] if x_shape and len(x_shape) == 3 else None
        if batch is None or hidden is None or dtype is None:
            state, given_state = ("initial_h", "initial_c") if index == 5 else ("initial_c", "initial_h")
            raise PluginError(
                "onnx_tf", f"{describe(node)} leaves out {state} and gives {given_state}: onnx-tf would start both "
                f"states from zeros, and zeros for {state} alone need the batch size, which the model does not fix",
                hint=f"give the node an {state} (zeros of shape [num_directions, batch, hidden_size])",
                hazard=Hazard.UNCONVERTIBLE_NODE, nodes=[node.name] if node.name else [])
        shape = (batch, directions, hidden) if batch_first else (directions, batch, hidden)
        known.fill(node, index, "initial_h" if index == 5 else "initial_c", np.zeros(shape, dtype))


def gru_without_bias(node: onnx.NodeProto) -> bool:
    """A GRU that leaves ``B`` out, by an empty name or by giving fewer inputs: onnx-tf's GRU then fails when it
    runs ("Must provide as many biases as the channel size")."""
    return node.op_type == "GRU" and node.domain in ONNX_DOMAINS and (len(node.input) < 4 or not node.input[3])


def hidden_size(node: onnx.NodeProto, known: Known) -> int | None:
    """The hidden size of a recurrent node: its attribute, else the last dimension of R when fixed."""
    size = attribute(node, "hidden_size", None)
    if isinstance(size, int):
        return size
    shape = known.shape(node.input[2])
    return shape[-1] if shape else None


MENDS: dict[str, Callable[[onnx.NodeProto, Known], None]] = {
    "ConvInteger": zero_point,
    "MatMulInteger": zero_point,
    "Dropout": dropout,
    "Slice": slice_axes,
    "RNN": recurrent,
    "GRU": recurrent,
    "LSTM": recurrent,
}

__all__ = ["readable_by_onnx_tf"]
