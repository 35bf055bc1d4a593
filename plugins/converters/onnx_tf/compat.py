"""onnx-tf 1.10 on today's stack: what it took from 2023's packages, supplied by surgeon, and its faults mended.

onnx-tf 1.10 (2022, unmaintained) ties itself to packages that later
releases removed or broke:

- ``onnx.mapping`` (removed in onnx 1.19): its data-type tables, used by
  every conversion (``onnx_tf/common/data_type.py``, ``pb_wrapper.py``,
  SequenceEmpty);
- ``tensorflow_addons`` (no wheel for Python >= 3.12, broken under Keras 3):
  only ``seq2seq.hardmax``, for Hardmax;
- ``tensorflow_probability``: only ``distributions.Bernoulli``, for Bernoulli;
- Keras: ``tf.keras.backend.hard_sigmoid`` (HardSigmoid) and a
  ``tf.keras.layers.Flatten`` layer inside Gemm, called while converting;
  ``tf.keras.backend.flatten`` (Flatten) and ``ThresholdedReLU`` (an RNN
  activation onnx-tf never reaches: it looks up "thresholdedrelu"), only
  named when onnx-tf's modules are defined. Keras 3 keeps them only in its
  legacy namespace, and its own ``hard_sigmoid`` computes another function.
  The LSTM, GRU and RNN handlers build Keras 2's cells from
  ``tf.compat.v1.nn.rnn_cell``, which Keras 3 refuses ("`LSTMCell` is not
  available with Keras 3"); TensorFlow still ships them, in
  ``tensorflow.python.ops.rnn_cell_impl``.

``imported_onnx_tf`` imports onnx-tf with surgeon's stand-ins for the first
three, on every stack alike (so the 2023 stack runs the same code as today's);
the stand-ins are visible only while onnx-tf imports, so the rest of the
process never sees a fake ``tensorflow_addons`` or ``onnx.mapping``.
``mended_handlers`` then, for one conversion, replaces the Keras calls with
plain TensorFlow and mends two faults of the recurrent handlers.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from surgeon import SurgeonError
from surgeon_plugins.converters.onnx_tf.support import INSTALL_ONNX_TF

_MISSING = object()


@contextmanager
def _attribute(owner: Any, name: str, value: Any, only_if_missing: bool = False) -> Iterator[None]:
    """``owner.name = value`` inside the block, as it was after it (a class's own attribute, not an inherited one)."""
    original = vars(owner).get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name, _MISSING)
    if only_if_missing and hasattr(owner, name):
        yield
        return
    setattr(owner, name, value)
    try:
        yield
    finally:
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


@contextmanager
def _module(name: str, module: types.ModuleType) -> Iterator[None]:
    """``import name`` gives ``module`` inside the block; afterwards, what it gave before."""
    original: Any = sys.modules.get(name, _MISSING)
    sys.modules[name] = module
    try:
        yield
    finally:
        if original is _MISSING:
            del sys.modules[name]
        else:
            sys.modules[name] = original


# --------------------------------------------------------------------------- data types

def data_type_tables() -> types.ModuleType:
    """The four tables of onnx's former ``mapping`` module that onnx-tf reads, as onnx 1.18 defined them.

    numpy has no bfloat16, float8 or 4-bit types: like onnx 1.18, they map to
    float32 and int8/uint8 (onnx-tf special-cases bfloat16 itself).
    """
    import numpy as np
    from onnx import TensorProto as T

    # ONNX type: (numpy dtype, the type its values are stored as in a TensorProto)
    types_ = {
        T.FLOAT: ("float32", T.FLOAT), T.UINT8: ("uint8", T.INT32), T.INT8: ("int8", T.INT32),
        T.UINT16: ("uint16", T.INT32), T.INT16: ("int16", T.INT32), T.INT32: ("int32", T.INT32),
        T.INT64: ("int64", T.INT64), T.BOOL: ("bool", T.INT32), T.FLOAT16: ("float16", T.UINT16),
        T.BFLOAT16: ("float32", T.UINT16), T.DOUBLE: ("float64", T.DOUBLE),
        T.COMPLEX64: ("complex64", T.FLOAT), T.COMPLEX128: ("complex128", T.DOUBLE),
        T.UINT32: ("uint32", T.UINT32), T.UINT64: ("uint64", T.UINT64), T.STRING: ("object", T.STRING),
    }
    for name, storage in (("FLOAT8E4M3FN", "UINT8"), ("FLOAT8E4M3FNUZ", "UINT8"), ("FLOAT8E5M2", "UINT8"),
                          ("FLOAT8E5M2FNUZ", "UINT8"), ("FLOAT4E2M1", "UINT8")):
        if hasattr(T, name):
            types_[getattr(T, name)] = ("float32", getattr(T, storage))
    for name, dtype in (("UINT4", "uint8"), ("INT4", "int8")):
        if hasattr(T, name):
            types_[getattr(T, name)] = (dtype, T.INT32)
    exact = {T.FLOAT, T.UINT8, T.INT8, T.UINT16, T.INT16, T.INT32, T.INT64, T.BOOL, T.FLOAT16, T.DOUBLE,
             T.COMPLEX64, T.COMPLEX128, T.UINT32, T.UINT64, T.STRING}

    tables = types.ModuleType("onnx.mapping", "onnx's data-type tables as of onnx 1.18, supplied by surgeon")
    vars(tables).update(
        TENSOR_TYPE_TO_NP_TYPE={int(t): np.dtype(dtype) for t, (dtype, _) in types_.items()},
        TENSOR_TYPE_TO_STORAGE_TENSOR_TYPE={int(t): int(storage) for t, (_, storage) in types_.items()},
        NP_TYPE_TO_TENSOR_TYPE={np.dtype(types_[t][0]): int(t) for t in exact},
        STORAGE_TENSOR_TYPE_TO_FIELD={
            int(T.FLOAT): "float_data", int(T.INT32): "int32_data", int(T.INT64): "int64_data",
            int(T.UINT8): "int32_data", int(T.UINT16): "int32_data", int(T.DOUBLE): "double_data",
            int(T.COMPLEX64): "float_data", int(T.COMPLEX128): "double_data", int(T.UINT32): "uint64_data",
            int(T.UINT64): "uint64_data", int(T.STRING): "string_data", int(T.BOOL): "int32_data",
        },
    )
    return tables


# --------------------------------------------------------------------------- stand-ins for removed packages

def hardmax(logits):
    """1 at the first largest value along the last axis, 0 elsewhere (what ``tfa.seq2seq.hardmax`` computed)."""
    import tensorflow as tf

    return tf.one_hot(tf.argmax(logits, axis=-1), tf.shape(logits)[-1], dtype=logits.dtype)


class Bernoulli:
    """The part of ``tfp.distributions.Bernoulli`` onnx-tf uses: 1 with probability ``probs``, drawn uniformly."""

    def __init__(self, probs, dtype):
        self.probs = probs
        self.dtype = dtype

    def sample(self, seed=None):
        import tensorflow as tf

        uniform = tf.random.uniform(tf.shape(self.probs), seed=seed, dtype=self.probs.dtype)
        return tf.cast(uniform < self.probs, self.dtype)


def _package(name: str, **submodules: dict[str, Any]) -> types.ModuleType:
    package = types.ModuleType(name, f"surgeon's stand-in for the part of {name} that onnx-tf uses")
    for submodule, members in submodules.items():
        setattr(package, submodule, types.SimpleNamespace(**members))
    return package


# --------------------------------------------------------------------------- Keras replaced by plain TensorFlow

def hard_sigmoid(x, alpha: float = 0.2, beta: float = 0.5):
    """ONNX HardSigmoid: max(0, min(1, alpha * x + beta)) (Keras 3's hard_sigmoid is relu6(x + 3) / 6)."""
    import tensorflow as tf

    return tf.clip_by_value(x * alpha + beta, 0.0, 1.0)


def thresholded_relu(theta: float = 1.0):
    """ONNX ThresholdedRelu, made like Keras' ThresholdedReLU layer: x where x > theta, else 0."""
    import tensorflow as tf

    return lambda x: tf.where(x > theta, x, tf.zeros_like(x))


def flatten(x):
    """``x`` as [first dimension, everything else] (what Keras' Flatten layer did)."""
    import tensorflow as tf

    if x.shape.rank == 2:
        return x
    return tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))


@classmethod  # type: ignore[misc]
def _hard_sigmoid_common(cls, node, **kwargs):
    x = kwargs["tensor_dict"][node.inputs[0]]
    return [hard_sigmoid(x, node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5))]


@classmethod  # type: ignore[misc]
def _gemm_common(cls, node, **kwargs):
    """onnx-tf's Gemm with Keras' Flatten layer replaced by ``flatten``."""
    import tensorflow as tf

    tensors = kwargs["tensor_dict"]
    x, y = flatten(tensors[node.inputs[0]]), tensors[node.inputs[1]]
    z = tensors[node.inputs[2]] if len(node.inputs) > 2 else 0
    dtype = x.dtype
    if node.attrs.get("transA", 0):
        x = tf.transpose(x)
    if node.attrs.get("transB", 0):
        y = tf.transpose(y)
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if dtype == tf.float64:
        return [tf.cast(alpha, dtype) * tf.matmul(x, y) + tf.cast(beta, dtype) * z]
    cast = cls.cast_map.get(dtype)
    if cast is None:
        return [alpha * tf.matmul(x, y) + beta * z]
    result = alpha * tf.matmul(tf.cast(x, cast), tf.cast(y, cast)) + beta * tf.cast(z, cast)
    return [tf.cast(result, dtype)]


def _has_keras_2_cells(tf) -> bool:
    """Whether ``tf.compat.v1.nn.rnn_cell`` still hands out Keras 2's cells (Keras 3 refuses)."""
    try:
        return tf.compat.v1.nn.rnn_cell.LSTMCell is not None
    except AttributeError:
        return False


# --------------------------------------------------------------------------- the public entry points

def imported_onnx_tf() -> types.ModuleType:
    """``onnx_tf.backend``, imported with surgeon's stand-ins for what onnx-tf imports from 2023's packages.

    Imports TensorFlow. A second call returns the module imported by the first.
    """
    if "onnx_tf.backend" in sys.modules:
        return sys.modules["onnx_tf.backend"]
    if importlib.util.find_spec("onnx_tf") is None:
        raise SurgeonError("onnx-tf is not installed: the onnx_tf converter runs it", hint=INSTALL_ONNX_TF)
    import onnx
    import onnx.helper
    import tensorflow as tf

    tables = data_type_tables()
    with ExitStack() as stack:
        stack.enter_context(_module("onnx.mapping", tables))
        stack.enter_context(_attribute(onnx, "mapping", tables))
        stack.enter_context(_attribute(onnx.helper, "mapping", tables))
        stack.enter_context(_module("tensorflow_addons", _package("tensorflow_addons",
                                                                  seq2seq={"hardmax": hardmax})))
        stack.enter_context(_module("tensorflow_probability", _package("tensorflow_probability",
                                                                       distributions={"Bernoulli": Bernoulli})))
        # named when onnx-tf's modules are defined; never called (``mended_handlers`` replaces the callers)
        keras = tf.keras
        stack.enter_context(_attribute(keras.backend, "flatten", flatten, only_if_missing=True))
        stack.enter_context(_attribute(keras.backend, "hard_sigmoid", hard_sigmoid, only_if_missing=True))
        stack.enter_context(_attribute(keras.layers, "ThresholdedReLU", thresholded_relu, only_if_missing=True))
        import onnx_tf.backend
    return onnx_tf.backend


@dataclass
class MendedOnnxTf:
    """onnx-tf's backend, mended for one conversion, and the ONNX nodes it is converting."""

    backend: types.ModuleType
    in_progress: list[Any] = field(default_factory=list)  # onnx-tf's node wrappers; a failed one stays on top

    def failed_node(self) -> str | None:
        """The name of the ONNX node whose handler raised (None when no handler did)."""
        return self.in_progress[-1].name if self.in_progress else None


@contextmanager
def mended_handlers() -> Iterator[MendedOnnxTf]:
    """onnx-tf's backend with its handlers mended for one conversion; as they were afterwards.

    - Keras: HardSigmoid and Gemm compute with plain TensorFlow, and the
      recurrent handlers get TensorFlow's own copy of Keras 2's cells where
      Keras 3 refuses them (see the module doc).
    - Recurrent cells: onnx-tf keeps the forward cell of the first LSTM, GRU
      or RNN node on the handler class (``RNNMixin.rnn_cell``) and hands it to
      every later node of that operator, in this conversion and the next: a
      second layer then runs with the first layer's kernel, which fails when
      the depths differ and computes wrong numbers when they are equal (a
      2-layer ``nn.LSTM(4, 4)``). Each node now gets a cell of its own.
    - Failures: the node being converted is kept (``MendedOnnxTf.failed_node``),
      so that an error names the ONNX node rather than, say, ``KeyError: ''``.
    - Input depth: TensorFlow's RNN needs it statically, and onnx-tf's
      Reshape loses static shapes (it computes every target shape at run
      time): a layer after a bidirectional one fails ("Input size (depth of
      inputs) must be accessible via shape inference"). The depth is taken
      from the node's weights, W [directions, gates * hidden, depth].
    """
    import tensorflow as tf

    backend = imported_onnx_tf()
    from onnx_tf.handlers.backend.gemm import Gemm
    from onnx_tf.handlers.backend.gru import GRU
    from onnx_tf.handlers.backend.hard_sigmoid import HardSigmoid
    from onnx_tf.handlers.backend.lstm import LSTM
    from onnx_tf.handlers.backend.rnn import RNN
    from onnx_tf.handlers.backend.rnn_mixin import RNNMixin

    mended = MendedOnnxTf(backend)
    to_tensorflow_op = backend.TensorflowBackend.__dict__["_onnx_node_to_tensorflow_op"]

    @classmethod  # type: ignore[misc]
    def tracked_to_tensorflow_op(cls, node, *args, **kwargs):
        mended.in_progress.append(node)
        outputs = to_tensorflow_op.__func__(cls, node, *args, **kwargs)
        mended.in_progress.pop()
        return outputs

    shared_cell_rnn = RNNMixin.__dict__["rnn"]

    @classmethod  # type: ignore[misc]
    def rnn_with_own_cell(cls, *args, **kwargs):
        cls.rnn_cell = None
        return shared_cell_rnn.__func__(cls, *args, **kwargs)

    def with_input_depth(common):
        @classmethod  # type: ignore[misc]
        def handle(cls, node, **kwargs):
            tensors = kwargs["tensor_dict"]
            x, weights = tensors[node.inputs[0]], tensors.get(node.inputs[1])
            depth = weights.shape[-1] if weights is not None and weights.shape.rank == 3 else None
            if x.shape.rank == 3 and x.shape[-1] is None and depth is not None:
                tensors[node.inputs[0]] = tf.ensure_shape(x, [None, None, depth])
            return common.__func__(cls, node, **kwargs)

        return handle

    with ExitStack() as stack:
        stack.enter_context(_attribute(RNNMixin, "rnn", rnn_with_own_cell))
        for handler in (LSTM, GRU, RNN):
            stack.enter_context(_attribute(handler, "_common", with_input_depth(handler.__dict__["_common"])))
        if not _has_keras_2_cells(tf):
            from tensorflow.python.ops import rnn_cell_impl

            stack.enter_context(_attribute(tf.compat.v1.nn, "rnn_cell", rnn_cell_impl))
        stack.enter_context(_attribute(HardSigmoid, "_common", _hard_sigmoid_common))
        stack.enter_context(_attribute(Gemm, "_common", _gemm_common))
        stack.enter_context(_attribute(backend.TensorflowBackend, "_onnx_node_to_tensorflow_op",
                                       tracked_to_tensorflow_op))
        yield mended


__all__ = ["Bernoulli", "MendedOnnxTf", "data_type_tables", "flatten", "hard_sigmoid", "hardmax", "imported_onnx_tf",
           "mended_handlers", "thresholded_relu"]
