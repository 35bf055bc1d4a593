"""onnx_tf: ONNX -> TensorFlow SavedModel with onnx-tf (``prepare``, then its export trace).

onnx-tf's export has the serving contract: tag ``serve`` and a
``serving_default`` signature keyed by the ONNX input and output names, with
``None`` for symbolic dimensions. The SavedModel goes straight into its
target, which the host hands over empty inside the staging folder (F8).

It differs from onnx-tf's ``export_graph`` in two ways that together halve
the conversion of a large model, and not in what the signature computes:

- only the serving signature is saved (with the variables of onnx-tf's
  recurrent ops): ``export_graph`` saves onnx-tf's whole module, whose eager
  ``__call__`` TensorFlow then traces a second time for a function no server
  calls. Load it with ``tf.saved_model.load(path).signatures["serving_default"]``.
- the trace runs without AutoGraph where it can (see ``trace``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from surgeon import Converter, SurgeonError, hookimpl

log = logging.getLogger("surgeon")


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
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        problem = value.name not in initializers and signature_key_problem(value.name)
        if problem:
            raise SurgeonError(
                f"input {value.name!r} cannot be a key of the serving signature: {problem}",
                hint="add rename_outputs to --plugins (it renames such inputs to input_N), "
                "or --set rename_outputs.names=OLD:NEW",
            )


def convert(model, options: OnnxTfOptions, target: Path, ctx) -> None:
    from surgeon.device import quiet_tensorflow, verbose

    check_input_names(model)
    started = time.perf_counter()
    with quiet_tensorflow():
        from onnx_tf.backend import prepare

        imported = time.perf_counter()
        representation = prepare(model, logging_level="INFO" if verbose() else "ERROR", auto_cast=options.auto_cast)
        prepared = time.perf_counter()
        export(representation, target)
    log.debug("onnx-tf: import (with TensorFlow) %.1fs, prepare %.1fs, export %.1fs",
              imported - started, prepared - imported, time.perf_counter() - prepared)


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


@hookimpl
def surgeon_converters():
    return [Converter(name="onnx_tf", doc="Convert ONNX to a TensorFlow SavedModel with onnx-tf 1.10.",
                      options=OnnxTfOptions, convert=convert)]
