"""Large weights as TensorFlow variables, so that a SavedModel holds models with more weights than 2 GB.

onnx-tf turns every initializer into a ``tf.constant`` (through a Python list
of its values), which the serving graph then carries in ``saved_model.pb``: a
protobuf message, which cannot exceed 2 GB. For a model whose initializers
take at least ``variables_from`` bytes (the converter's option), each numeric
initializer of the main graph of ``MIN_VARIABLE_BYTES`` or more is kept out of
onnx-tf instead: onnx-tf converts the model with those declared as graph
inputs (``for_onnx_tf``), and each is then given to its module as a
``tf.Variable`` holding the values, read from the model's data file
(``capture``). The serving signature captures the variables, so the
SavedModel stores them in ``variables/``, where TensorFlow Serving and
Triton restore them; its inputs stay the model's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper

from surgeon.onnx_io import external_tensors, inlined, tensor_array, tensor_bytes

if TYPE_CHECKING:
    import tensorflow as tf

# smaller initializers (shapes, axes, scales) stay constants: onnx-tf's handlers fold them where they can
MIN_VARIABLE_BYTES = 1024


def variable_weights(model: onnx.ModelProto, variables_from: int) -> dict[str, onnx.TensorProto]:
    """The initializers of ``model``'s main graph to save as variables, by name: none when its initializers
    take fewer than ``variables_from`` bytes, else each numeric one of ``MIN_VARIABLE_BYTES`` or more."""
    sizes = {tensor.name: tensor_bytes(tensor) for tensor in model.graph.initializer}
    if sum(sizes.values()) < variables_from:
        return {}
    return {tensor.name: tensor for tensor in model.graph.initializer
            if tensor.data_type != onnx.TensorProto.STRING and sizes[tensor.name] >= MIN_VARIABLE_BYTES}


def for_onnx_tf(model: onnx.ModelProto, weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """``model`` as onnx-tf reads it: ``weights`` declared as graph inputs instead of initializers, and every
    other tensor's values in the message (read in from external data). ``model`` itself when that is already
    so; the weights are never copied into a message."""
    if not weights and not external_tensors(model):
        return model
    reduced = onnx.ModelProto()
    _copy_fields(model, reduced, skip="graph")
    _copy_fields(model.graph, reduced.graph, skip="initializer")
    declared = {value.name for value in reduced.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in weights:
            reduced.graph.initializer.add().CopyFrom(tensor)
        elif tensor.name not in declared:
            reduced.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                     list(tensor.dims)))
    for tensor in external_tensors(reduced):
        tensor.CopyFrom(inlined(tensor))
    return reduced


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Copy every set field of the message ``source`` into ``target``, but ``skip``."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.label == descriptor.LABEL_REPEATED:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def capture(representation: Any, weights: dict[str, onnx.TensorProto]) -> list[tf.Variable]:
    """Give onnx-tf's module (from ``prepare`` of ``for_onnx_tf(model, weights)``) each weight as a variable
    holding its values, in place of the graph input it was declared as; return the variables."""
    import tensorflow as tf

    module = representation.tf_module
    variables = []
    for name, tensor in weights.items():
        spec = representation.signatures.pop(name)
        variable = tf.Variable(tensor_array(tensor), trainable=False, dtype=spec.dtype)
        module.initializer_dict[name] = variable
        variables.append(variable)
    return variables


__all__ = ["MIN_VARIABLE_BYTES", "capture", "for_onnx_tf", "variable_weights"]
