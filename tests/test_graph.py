"""The graph kit: fresh names, wiring, how nodes are named to users, constants read back, and the opset-aware
forms valid and equal at old and new opsets."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from surgeon.graph import (INT64_MAX, Builder, Unfixable, constant_value, describe, is_empty, names_in,
                           optional_input)
from surgeon.testing import model_from_text, run_onnx


def relu_graph() -> gs.Graph:
    """x -> Relu (node 'scale', output 'scale_output') -> y, with a tensor called 'scale' too."""
    x = gs.Variable("x", np.float32, [2, 3])
    scale = gs.Constant("scale", np.ones(3, np.float32))
    mid = gs.Variable("scale_output", np.float32, [2, 3])
    y = gs.Variable("y", np.float32, [2, 3])
    nodes = [gs.Node("Relu", "scale", inputs=[x], outputs=[mid]), gs.Node("Mul", "scale_1", inputs=[mid, scale],
                                                                          outputs=[y])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=13)


def with_branches() -> tuple[gs.Graph, gs.Graph, gs.Graph]:
    """A graph with an If whose branches hold a tensor 'shared' and a node 'neg' each."""
    def branch(op: str) -> gs.Graph:
        inner = gs.Variable("shared", np.float32, [2])
        return gs.Graph(nodes=[gs.Node(op, "neg", inputs=[x], outputs=[inner])], outputs=[inner], opset=13)

    x = gs.Variable("x", np.float32, [2])
    condition = gs.Variable("condition", np.bool_, [])
    y = gs.Variable("y", np.float32, [2])
    then_branch, else_branch = branch("Neg"), branch("Abs")
    node = gs.Node("If", "choose", attrs={"then_branch": then_branch, "else_branch": else_branch},
                   inputs=[condition], outputs=[y])
    return gs.Graph(nodes=[node], inputs=[condition, x], outputs=[y], opset=13), then_branch, else_branch


def test_fresh_names_avoid_every_name_of_the_graph_and_each_other():
    graph = relu_graph()
    existing = names_in(graph)
    build = Builder(graph)
    made = [build.name("scale"), build.name("scale")]
    for _ in range(3):
        made.append(build.op("Relu", [graph.outputs[0]], "scale").name)
        made.append(graph.nodes[-1].name)
    assert not set(made) & existing and len(set(made)) == len(made)
    assert made[:4] == ["scale_2", "scale_3", "scale_output_1", "scale_4"]


def test_a_prefix_goes_before_every_name():
    build = Builder(relu_graph(), prefix="my_pass/")
    assert build.name("scale") == "my_pass/scale"
    assert build.const("scale", [1.0]).name == "my_pass/scale_1"


def test_builders_of_several_subgraphs_share_one_taken_set():
    graph, then_branch, else_branch = with_branches()
    existing = names_in(graph)
    assert {"shared", "neg", "choose", "x"} <= existing
    taken = set(existing)
    made = []
    for subgraph in (then_branch, else_branch):
        build = Builder(subgraph, taken=taken)
        (node,) = subgraph.nodes
        subgraph.outputs = [build.op("Neg", [node.outputs[0]], "neg")]
        made += [subgraph.outputs[0].name, subgraph.nodes[-1].name]
    assert made == ["neg_output", "neg_1", "neg_output_1", "neg_2"]
    assert not set(made) & existing and taken == existing | set(made)


def test_a_builder_of_one_graph_sees_its_subgraphs_names():
    graph, _, _ = with_branches()
    assert Builder(graph).name("neg") == "neg_1"


def test_op_wires_inputs_outputs_and_attributes():
    graph = relu_graph()
    build = Builder(graph)
    x, y = graph.inputs[0], graph.outputs[0]
    bias = build.const("bias", [1.0, 2.0, 3.0], np.float32)
    total = build.op("Add", [y, bias], "add", dtype=np.float32)
    node = graph.nodes[-1]
    assert (node.op, node.inputs, node.outputs) == ("Add", [y, bias], [total])
    assert total.dtype == np.float32 and total.inputs[0] is node and y.outputs[-1] is node
    kept = gs.Variable("kept")
    assert build.op("Softmax", [x], "softmax", output=kept, axis=1) is kept
    assert graph.nodes[-1].attrs == {"axis": 1} and kept.inputs[0] is graph.nodes[-1]
    assert bias.values.dtype == np.float32 and build.ints("axes", [0, 1]).values.dtype == np.int64


def test_a_builder_without_a_graph_makes_tensors_only():
    taken: set[str] = set()
    build = Builder(None, taken=taken, opset=13)
    output = build.op("Relu", [gs.Variable("x")], "relu")
    assert isinstance(output, gs.Variable) and not output.inputs and taken == {"relu", "relu_output"}
    with pytest.raises(ValueError, match="needs the opset"):
        Builder(None)


def test_insert_after_takes_over_the_node_output():
    graph = relu_graph()
    build = Builder(graph)
    relu = graph.nodes[0]
    mid = relu.outputs[0]
    build.insert_after(relu, "Neg", [], "negate")
    neg = graph.nodes[-1]
    assert neg.op == "Neg" and neg.outputs == [mid] and neg.inputs == [relu.outputs[0]]
    assert relu.outputs[0] is not mid and mid.outputs[0].name == "scale_1"  # the Mul still reads 'scale_output'


def test_describe_names_a_node_by_its_name_else_by_what_it_makes():
    graph = relu_graph()
    assert describe(graph.nodes[0]) == "node 'scale' (Relu)"
    unnamed = gs.Node("Split", inputs=[graph.inputs[0]], outputs=[gs.Variable.empty(), gs.Variable("second")])
    assert describe(unnamed) == "the Split node making 'second'"
    assert describe(gs.Node("Relu")) == "a Relu node"


def test_optional_inputs_left_out_are_none():
    x = gs.Variable("x")
    node = gs.Node("Clip", inputs=[x, gs.Variable.empty(), gs.Constant("high", np.array(6.0, np.float32))])
    assert optional_input(node, 0) is x and optional_input(node, 1) is None and optional_input(node, 5) is None
    assert is_empty(None) and is_empty(node.inputs[1]) and not is_empty(x)
    assert optional_input(node, 2).name == "high"


CONSTANTS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2] x) => (float[2] y, int64 i, int64[2] ints, float f, float[2] floats, string s, string[2] strings,
                   double[2] tensor)
  <float[2] weights = {1.5, -2}> {
    i = Constant<value_int = 3>()
    ints = Constant<value_ints = [1, 2]>()
    f = Constant<value_float = 0.5>()
    floats = Constant<value_floats = [1.5, 2.5]>()
    s = Constant<value_string = "ab">()
    strings = Constant<value_strings = ["a", "b"]>()
    tensor = Constant<value = double[2] {1, 2}>()
    y = Mul(x, weights)
}
"""


@pytest.mark.parametrize("name, expected", [
    ("weights", np.array([1.5, -2], np.float32)),
    ("i", np.array(3, np.int64)),
    ("ints", np.array([1, 2], np.int64)),
    ("f", np.array(0.5, np.float32)),
    ("floats", np.array([1.5, 2.5], np.float32)),
    ("s", np.array("ab", object)),
    ("strings", np.array(["a", "b"], object)),
    ("tensor", np.array([1, 2], np.float64)),
])
def test_constant_value_reads_initializers_and_every_kind_of_constant_node(name, expected):
    tensors = gs.import_onnx(model_from_text(CONSTANTS)).tensors()
    value = constant_value(tensors[name])
    assert value.dtype == expected.dtype and value.shape == expected.shape
    assert value.tolist() == expected.tolist()


def test_constant_value_of_a_computed_tensor_is_none():
    tensors = gs.import_onnx(model_from_text(CONSTANTS)).tensors()
    assert constant_value(tensors["y"]) is None and constant_value(tensors["x"]) is None
    assert constant_value(None) is None


def test_unfixable_carries_the_reason_and_int64_max_is_the_largest_int64():
    assert str(Unfixable("its axes are computed at run time")) == "its axes are computed at run time"
    assert INT64_MAX == np.iinfo(np.int64).max and isinstance(INT64_MAX, int)


def opset_aware_model(opset: int) -> onnx.ModelProto:
    """Every opset-aware form of the kit on x: float[2, 3, 4], exported at ``opset``."""
    x = gs.Variable("x", np.float32, [2, 3, 4])
    graph = gs.Graph(inputs=[x], opset=opset)
    build = Builder(graph)
    graph.outputs = [
        build.unsqueeze(x, [0, 2], "unsqueezed"),
        build.reduce_mean(x, [1, 2], "mean"),
        build.slice(x, [1], [INT64_MAX], "tail"),
        build.dims(x, 1, 3, "spatial"),
        build.cast(x, np.int32, "as_int"),
    ]
    for output, shape in zip(graph.outputs, ([1, 2, 1, 3, 4], [2, 1, 1], [1, 3, 4], [2], [2, 3, 4])):
        output.shape = shape  # graph outputs need one
    model = gs.export_onnx(graph)
    model.ir_version = 8 if opset >= 18 else 7
    return model


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
def test_opset_aware_forms_are_valid_and_compute_the_same_at_old_and_new_opsets(opset):
    model = opset_aware_model(opset)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).uniform(-4, 4, (2, 3, 4)).astype(np.float32)
    unsqueezed, mean, tail, spatial, as_int = run_onnx(model, [x])
    np.testing.assert_array_equal(unsqueezed, x[None, :, None])
    np.testing.assert_allclose(mean, x.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(tail, x[1:])
    np.testing.assert_array_equal(spatial, [3, 4])
    np.testing.assert_array_equal(as_int, x.astype(np.int32))
    inputs_or_attributes = {node.op_type: len(node.input) for node in model.graph.node if node.op_type != "Shape"}
    assert inputs_or_attributes["Unsqueeze"] == (2 if opset >= 13 else 1)
    assert inputs_or_attributes["ReduceMean"] == (2 if opset >= 18 else 1)
    assert inputs_or_attributes["Slice"] == (3 if opset >= 10 else 1)
