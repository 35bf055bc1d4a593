"""frozen_pb: OUT/frozen_pb/model.pb, the frozen GraphDef of the original recipe, for TF1 consumers.

The serving signature of the converted SavedModel with its variables folded
into constants. TF1 code imports it with ``tf.compat.v1.import_graph_def``
and finds its tensors through ``signature.json`` beside it, which maps each
ONNX input and output name to the graph tensor (e.g. ``images`` ->
``images:0``, ``result`` -> ``Identity:0``).
"""

from __future__ import annotations

import json
from pathlib import Path

from surgeon import NoOptions, PluginError, Writer, hookimpl
from surgeon.context import Context
from surgeon.onnx_io import model_bytes

FOLDER = "frozen_pb"
PROTOBUF_LIMIT_BYTES = 2**31 - 1  # the largest message protobuf writes, and so the largest frozen GraphDef


def write(ctx: Context, options: NoOptions, out_dir: Path) -> None:
    size = model_bytes(ctx.model)
    if size > PROTOBUF_LIMIT_BYTES:
        raise PluginError("frozen_pb", f"a frozen GraphDef holds every weight in one protobuf message, which "
                          f"cannot exceed 2 GiB; this model takes {size / 2**30:.2f} GiB",
                          hint="serve the SavedModel (--format saved_model, tf_serving or triton), which keeps "
                               "its weights in variables/")
    from surgeon.device import quiet_tensorflow
    from surgeon.saved_model_info import SERVE_TAG, SERVING_SIGNATURE
    from surgeon.serving import FROZEN_GRAPH, FROZEN_SIGNATURE

    converted = ctx.saved_model()
    with quiet_tensorflow() as tf:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        serving = tf.saved_model.load(str(converted), tags=[SERVE_TAG]).signatures[SERVING_SIGNATURE]
        frozen = convert_variables_to_constants_v2(serving)
    graph_def = frozen.graph.as_graph_def()
    # tf.nest orders a dict's entries by key, so the frozen tensors follow the sorted names
    signature = {
        "inputs": dict(zip(sorted(serving.structured_input_signature[1]), (t.name for t in frozen.inputs))),
        "outputs": dict(zip(sorted(serving.structured_outputs), (t.name for t in frozen.outputs))),
    }
    target = out_dir / FOLDER
    target.mkdir()
    (target / FROZEN_GRAPH).write_bytes(graph_def.SerializeToString())
    (target / FROZEN_SIGNATURE).write_text(json.dumps(signature, indent=2) + "\n")
    ctx.served_models[FOLDER] = target


@hookimpl
def surgeon_writers():
    return [Writer(name="frozen_pb", doc="OUT/frozen_pb/model.pb: frozen GraphDef for TF1 consumers, with "
                   "signature.json naming its input and output tensors.", write=write, needs_saved_model=True)]
