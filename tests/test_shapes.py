"""Shape inference on a graph skeleton, shared by the passes that need shapes."""

import onnx_graphsurgeon as gs

from surgeon.shapes import inferred_types
from surgeon.testing import model_from_text
from surgeon.fuzzing import small_cnn

NO_SHAPES = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3, 8, 8] x) => (float[2, 3, 4, 4] y)
{ p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)  y = Relu(p) }
"""


def test_intermediate_shapes_and_assumed_input_dims():
    graph = gs.import_onnx(model_from_text(NO_SHAPES))
    assert graph.tensors()["p"].shape is None
    assert inferred_types(graph)["p"] == (1, [2, 3, 4, 4])
    assert inferred_types(graph, fixed_dims={id(graph.inputs[0]): (0, 7)})["p"] == (1, [7, 3, 4, 4])


def test_a_graph_that_would_crash_shape_inference_gets_no_shapes():
    graph = gs.import_onnx(small_cnn())
    next(node for node in graph.nodes if node.op == "AveragePool").attrs["strides"] = [0, 2]
    types = inferred_types(graph)  # onnx 1.18 would die of SIGFPE here
    assert "p" not in types or types["p"][1] is None
