"""opset_compat on tiny graphs: every adapter and decomposition keeps the model's meaning on onnxruntime and
leaves nodes onnx-tf converts; what it cannot fix is named; the detector and the converter's check read the
model without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import onnx_graphsurgeon as gs
import pytest

import surgeon
from surgeon import PluginError
from surgeon.onnx_io import opset_of
from surgeon.testing import (apply_pass, apply_pass_with_record, assert_idempotent, assert_same_outputs,
                             model_from_text, run_onnx)
from surgeon_plugins.passes import opset_compat
from surgeon_plugins.passes.opset_compat.adapt import STEPS
from surgeon_plugins.passes.opset_compat.decompose import DECOMPOSITIONS
from surgeon_plugins.passes.opset_compat.schemas import schema_versions
from surgeon_plugins.converters.onnx_tf.support import handlers, since_version, unconvertible

BATCHES = (1, 3, 8)


def header(opset: int) -> str:
    return f'<ir_version: 8, opset_import: ["" : {opset}]>'


def fitted(text: str, atol: float = 1e-5, rtol: float = 1e-4, **options) -> onnx.ModelProto:
    """The model after opset_compat, checked: same outputs at several batch sizes, idempotent, all converted."""
    model = model_from_text(text)
    rewritten = apply_pass("opset_compat", model, **options)
    assert_same_outputs(model, rewritten, BATCHES, atol=atol, rtol=rtol)
    assert_idempotent("opset_compat", model, **options)
    assert unconvertible(rewritten) == [], unconvertible(rewritten)
    return rewritten


def nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def findings(model: onnx.ModelProto) -> list[surgeon.Finding]:
    return opset_compat.detect(gs.import_onnx(model), opset_compat.OpsetCompatOptions())


def explained(model: onnx.ModelProto) -> str:
    """What the detector says about ``model``, as ``surgeon inspect`` lists it."""
    return "\n".join(f"{finding.where}: {finding.message}" for finding in findings(model))


def left_and_named(text: str) -> str:
    """The one finding about a model opset_compat leaves as it is."""
    model = model_from_text(text)
    _, record = apply_pass_with_record("opset_compat", model)
    assert not record.changed
    (finding,) = findings(model)
    return finding.message


def test_handler_table_is_read_from_onnx_tf_without_tensorflow():
    script = """
import sys, json
from surgeon_plugins.converters.onnx_tf.support import handlers
table = handlers()
print(json.dumps({"version": table.version, "squeeze": sorted(table.versions["Squeeze"]),
                  "has_layernorm": "LayerNormalization" in table.versions,
                  "tensorflow": "tensorflow" in sys.modules}))
"""
    result = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                       check=True).stdout)
    assert result == {"version": "1.10.0", "squeeze": [1, 11], "has_layernorm": False, "tensorflow": False}


def test_squeeze_and_unsqueeze_13_take_their_axes_as_attributes_at_opset_12():
    text = header(14) + """
    g (float[N, 1, 4] x) => (float[N, 1, 4, 1] y) <int64[1] last = {-1}> {
        axes = Constant<value = int64[1] {1}>()
        s = Squeeze(x, axes)
        r = Relu(s)
        u = Unsqueeze(r, axes)
        y = Unsqueeze(u, last)
    }"""
    explanation = explained(model_from_text(text))
    assert "Squeeze-13 (1 node" in explanation and "opset_compat: Squeeze-11 (axes input -> attribute)" in explanation
    assert "Unsqueeze-13 (2 nodes" in explanation
    rewritten = fitted(text)
    assert opset_of(rewritten) == 12
    assert [attrs(n)["axes"] for n in nodes(rewritten, "Unsqueeze")] == [[1], [-1]]
    assert all(len(n.input) == 1 for n in nodes(rewritten, "Squeeze") + nodes(rewritten, "Unsqueeze"))


def test_axes_computed_at_run_time_are_left_and_named():
    model = model_from_text(header(14) + """
    g (float[N, 1, 4] x, int64[1] axes) => (float[N, 4] y) { y = Squeeze(x, axes) }""")
    rewritten, record = apply_pass_with_record("opset_compat", model)
    assert not record.changed and opset_of(rewritten) == 14
    (finding,) = findings(model)
    assert finding.where.startswith("Squeeze-13 (1 node")
    assert "opset_compat cannot fix it" in finding.message and "computed at run time" in finding.message
    assert not finding.fixable and finding.nodes == ()


def test_reductions_take_axes_as_attributes_and_a_no_op_reduction_becomes_identity():
    rewritten = fitted(header(18) + """
    g (float[N, 3, 4] x) => (float[N, 4] y, float[N, 1, 1] z, float[N, 3, 4] same, float[N, 1, 4] total)
      <int64[1] one = {1}, int64[2] both = {1, 2}> {
        m = ReduceMean(x, one)
        y = Squeeze(m, one)
        z = ReduceMax(x, both)
        same = ReduceSum<noop_with_empty_axes = 1>(x)
        total = ReduceSum(x, one)
    }""")
    assert opset_of(rewritten) == 12
    assert attrs(nodes(rewritten, "ReduceMean")[0])["axes"] == [1]
    assert attrs(nodes(rewritten, "ReduceMax")[0])["axes"] == [1, 2]
    assert attrs(nodes(rewritten, "ReduceSum")[0])["axes"] == [1]
    assert len(nodes(rewritten, "ReduceSum")) == 1 and nodes(rewritten, "Identity")


@pytest.mark.parametrize("squeeze", [False, True], ids=["opset17", "opset12"])
def test_split_sizes_and_num_outputs(squeeze):
    text = header(18) + f"""
    g (float[N, 7] x) => (float[N, 3] a, float[N, 4] b, float[N, 3] c, float[N, 3] d, float[N, 1] e{
        ", float[N] f" if squeeze else ""}) <int64[2] sizes = {{3, 4}}, int64[1] last = {{1}}> {{
        a, b = Split<axis = 1>(x, sizes)
        c, d, e = Split<axis = 1, num_outputs = 3>(x)
        {"f = Squeeze(e, last)" if squeeze else ""}
    }}"""
    rewritten = fitted(text)
    assert opset_of(rewritten) == (12 if squeeze else 17)
    splits = nodes(rewritten, "Split")
    if squeeze:
        assert [attrs(n)["split"] for n in splits] == [[3, 4], [3, 3, 1]]
    else:
        assert all("num_outputs" not in attrs(n) and len(n.input) == 2 for n in splits)


def test_softmax_13_normalises_one_axis_and_softmax_11_the_trailing_block():
    rewritten = fitted(header(13) + """
    g (float[N, 3, 4] x) => (float[N, 3, 4] a, float[N, 3, 4] b, float[N, 3, 4] c, float[N, 4] d)
      <int64[1] one = {1}> {
        a = Softmax<axis = 1>(x)
        b = LogSoftmax(x)
        c = Hardmax<axis = 2>(x)
        r = ReduceSum(x, one)
        d = Squeeze(r, one)
    }""")
    assert opset_of(rewritten) == 12
    assert [attrs(n)["axis"] for n in rewritten.graph.node if n.op_type.endswith("max")] == [-1, -1, -1]
    assert [attrs(n)["perm"] for n in nodes(rewritten, "Transpose")] == [[0, 2, 1], [0, 2, 1]]


def test_an_opset_that_would_change_a_node_beyond_repair_is_ruled_out_and_named():
    model = model_from_text(header(13) + """
    g (float[N, 3, 4] x) => (float[N, 3, 4] a, float[N, 4] d) <int64[1] one = {1}> {
        r = Relu(x)
        a = Softmax<axis = 1>(r)
        t = ReduceSum(x, one)
        d = Squeeze(t, one)
    }""")
    rewritten, record = apply_pass_with_record("opset_compat", model)
    assert not record.changed and opset_of(rewritten) == 13
    (finding,) = findings(model)
    assert ("it would convert at opset 12, but the Softmax node making 'a', Softmax-13, cannot be brought to "
            "opset 12: Softmax-11: axis=1 on an input of unknown rank") in finding.message


def test_types_an_older_version_does_not_take_rule_its_opset_out():
    assert "Add-13 does not take tensor(int8)" in left_and_named(header(14) + """
    g (int8[N, 4] a, float[N, 1, 4] x) => (int8[N, 4] s, float[N, 4] y) <int64[1] one = {1}> {
        s = Add(a, a)
        y = Squeeze(x, one)
    }""")


def test_resize_13_gets_the_empty_roi_and_scales_resize_11_requires():
    rewritten = fitted(header(13) + """
    g (float[N, 2, 3, 3] x) => (float[N, 2, 6, 6] y, float[N, 2, 3] z) <float[4] scales = {1, 1, 2, 2},
      int64[1] one = {1}, int64[1] last = {3}> {
        y = Resize<mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor">(x, "",
                                                                                                            scales)
        m = ReduceMax<axes = [3]>(x)
        z = Squeeze(m, last)
    }""")
    (resize,) = nodes(rewritten, "Resize")
    assert opset_of(rewritten) == 12 and len(resize.input) == 3 and all(resize.input)


def test_pad_18_axes_become_pads_for_every_axis():
    rewritten = fitted(header(18) + """
    g (float[N, 2, 3] x) => (float[N, 2, 7] y) <int64[2] pads = {1, 3}, int64[1] axes = {-1}> {
        y = Pad(x, pads, "", axes)
    }""")
    (pad,) = nodes(rewritten, "Pad")
    pads = next(i for i in rewritten.graph.initializer if i.name == pad.input[1])
    assert opset_of(rewritten) == 17 and len(pad.input) == 2
    assert onnx.numpy_helper.to_array(pads).tolist() == [0, 0, 1, 0, 0, 3]


def test_shape_15_start_and_end_become_a_slice():
    rewritten = fitted(header(15) + """
    g (float[N, 2, 3, 1] x) => (int64[2] s, int64[1] t, float[N, 2, 3] y) <int64[1] last = {3}> {
        s = Shape<start = 1, end = -1>(x)
        t = Shape<start = -1>(x)
        y = Squeeze(x, last)
    }""")
    assert opset_of(rewritten) == 12 and len(nodes(rewritten, "Slice")) == 2
    assert all(not attrs(n) for n in nodes(rewritten, "Shape"))


def test_reshape_14_allowzero_is_dropped_when_the_shape_holds_no_zero():
    """torch's dynamo exporter writes view() as Reshape allowzero=1 beside Unsqueeze-13."""
    rewritten = fitted(header(18) + """
    g (float[N, 2, 3] x) => (float[N, 6, 1] y) <int64[2] shape = {-1, 6}, int64[1] last = {-1}> {
        r = Reshape<allowzero = 1>(x, shape)
        y = Unsqueeze(r, last)
    }""")
    assert opset_of(rewritten) == 12
    assert attrs(nodes(rewritten, "Reshape")[0]) == {}


@pytest.mark.parametrize("inputs, shape, why", [
    ("float[2, 0] x", "shape = Constant<value = int64[2] {0, 4}>()", "its shape holds a 0"),
    ("float[N, 4] x", "shape = Shape(x)", "its shape is computed at run time"),
])
def test_reshape_14_allowzero_with_a_zero_or_a_run_time_shape_is_left_and_named(inputs, shape, why):
    assert f"allowzero=1 and {why}" in left_and_named(header(14) + f"""
    g ({inputs}) => (float[?, 4, 1] y) <int64[1] last = {{-1}}> {{
        {shape}
        r = Reshape<allowzero = 1>(x, shape)
        y = Unsqueeze(r, last)
    }}""")


def test_pooling_22_in_ceil_mode_becomes_floor_mode_where_the_extra_window_starts_in_the_padding():
    rewritten = fitted(header(22) + """
    g (float[N, 1, 2, 2] x, float[N, 1, 4, 4] v) => (float[N, 1, 1, 1] y, float[N, 1, 2, 2] w) {
        y = MaxPool<kernel_shape = [1, 1], strides = [2, 2], ceil_mode = 1>(x)
        w = AveragePool<kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1>(v)
    }""")
    assert opset_of(rewritten) == 18  # AveragePool-19 has no onnx-tf handler
    assert attrs(nodes(rewritten, "MaxPool")[0])["ceil_mode"] == 0
    assert attrs(nodes(rewritten, "AveragePool")[0])["ceil_mode"] == 1


def test_pooling_22_in_ceil_mode_on_unknown_sizes_is_left():
    assert "ceil_mode=1 needs explicit pads and known spatial sizes" in left_and_named(header(22) + """
    g (float[N, 1, H, W] x) => (float[N, 1, A, B] y) {
        y = MaxPool<kernel_shape = [1, 1], strides = [2, 2], ceil_mode = 1>(x)
    }""")


def test_layer_normalization_is_decomposed_with_its_statistics():
    rewritten = fitted(header(17) + """
    g (float[N, 3, 4] x) => (float[N, 3, 4] y, float[N, 3, 4] z, float[N, 1, 1] mean, float[N, 1, 1] inv)
      <float[4] s = {0.5, 1.0, 1.5, 2.0}, float[4] b = {0.1, 0.2, 0.3, 0.4},
       float[3, 4] s2 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> {
        y = LayerNormalization<epsilon = 0.001>(x, s, b)
        z, mean, inv = LayerNormalization<axis = 1>(x, s2)
    }""")
    assert opset_of(rewritten) == 17 and not nodes(rewritten, "LayerNormalization")
    assert sorted(attrs(n)["axes"] for n in nodes(rewritten, "ReduceMean")) == [[-1], [-1], [1, 2], [1, 2]]


def test_layer_normalization_in_float16_computes_in_its_stash_type():
    rewritten = fitted(header(17) + """
    g (float16[N, 8] x) => (float16[N, 8] y) <float16[8] s = {1, 1, 1, 1, 2, 2, 2, 2}> {
        y = LayerNormalization(x, s)
    }""", atol=2e-3, rtol=2e-3)
    assert [attrs(n)["to"] for n in nodes(rewritten, "Cast")] == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]


def test_gelu_mish_and_rms_normalization_are_decomposed_at_the_model_opset_where_possible():
    rewritten = fitted(header(23) + """
    g (float[N, 5] x) => (float[N, 5] a, float[N, 5] b, float[N, 5] c, float[N, 5] d)
      <float[5] s = {1, 2, 3, 4, 5}> {
        a = Gelu(x)
        b = Gelu<approximate = "tanh">(x)
        c = Mish(x)
        d = RMSNormalization<epsilon = 0.01>(x, s)
    }""")
    assert opset_of(rewritten) == 17
    assert {"Gelu", "Mish", "RMSNormalization"}.isdisjoint(n.op_type for n in rewritten.graph.node)


def test_gelu_alone_keeps_opset_20():
    rewritten = fitted(header(20) + """g (float[N, 5] x) => (float[N, 5] y) { y = Gelu(x) }""")
    assert opset_of(rewritten) == 20 and nodes(rewritten, "Erf")


def group_normalization(x: np.ndarray, groups: int, scale: np.ndarray, bias: np.ndarray, epsilon: float,
                        per_group: bool) -> np.ndarray:
    grouped = x.reshape(len(x), groups, -1)
    mean, variance = grouped.mean(axis=2, keepdims=True), grouped.var(axis=2, keepdims=True)
    normalized = (grouped - mean) / np.sqrt(variance + epsilon)
    if per_group:
        return (normalized * scale[:, None] + bias[:, None]).reshape(x.shape)
    return normalized.reshape(x.shape) * scale[:, None, None] + bias[:, None, None]


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_scales_per_group_at_18_and_per_channel_at_21(opset):
    scale = np.array([2, 3] if opset == 18 else [1, 2, 3, 4], np.float32)
    values = ", ".join(map(str, scale))
    model = onnx.parser.parse_model(header(opset) + f"""
    g (float[N, 4, 3, 3] x) => (float[N, 4, 3, 3] y) <float[{len(scale)}] s = {{{values}}},
      float[{len(scale)}] b = {{{values}}}> {{
        y = GroupNormalization<num_groups = 2, epsilon = 0.01>(x, s, b)
    }}""")  # GroupNormalization-18 is deprecated: the checker refuses it, onnx-tf needs it rewritten all the same
    rewritten = apply_pass("opset_compat", model)
    assert opset_of(rewritten) == 17 and not nodes(rewritten, "GroupNormalization")
    x = np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(rewritten, [x])[0],
                               group_normalization(x, 2, scale, scale, 0.01, per_group=opset == 18),
                               rtol=1e-4, atol=1e-5)


def test_hard_swish_and_cast_like_are_decomposed_below_their_opsets():
    rewritten = fitted(header(15) + """
    g (float[N, 1, 4] x, int32[N, 4] i) => (float[N, 4] y, float[N, 4] f) <int64[1] one = {1}> {
        s = Squeeze(x, one)
        y = HardSwish(s)
        f = CastLike(i, y)
    }""")
    assert opset_of(rewritten) == 12
    assert {n.op_type for n in rewritten.graph.node} == {"Squeeze", "HardSigmoid", "Mul", "Cast"}


def test_upsample_becomes_resize_and_scatter_scatter_elements():
    upsample = onnx.parser.parse_model(header(10) + """
    g (float[N, 2, 3, 3] x) => (float[N, 2, 6, 6] y) <float[4] scales = {1, 1, 2, 2}> {
        y = Upsample<mode = "nearest">(x, scales)
    }""")
    scatter = onnx.parser.parse_model(header(11) + """
    g (float[N, 5] x) => (float[N, 5] y) <int64[1, 2] idx = {1, 3}, float[1, 2] upd = {7, 8}> {
        y = Scatter<axis = 1>(x, idx, upd)
    }""")
    x = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32)
    (resized,) = run_onnx(apply_pass("opset_compat", upsample), [x])
    np.testing.assert_array_equal(resized, x.repeat(2, axis=2).repeat(2, axis=3))
    rows = np.zeros((3, 5), np.float32)
    (scattered,) = run_onnx(apply_pass("opset_compat", scatter), [rows])
    expected = rows.copy()
    expected[0, [1, 3]] = [7, 8]
    np.testing.assert_array_equal(scattered, expected)


def test_subgraphs_are_fitted_too():
    rewritten = fitted(header(13) + """
    g (bool c, float[N, 1, 4] x) => (float[N, 4] y) <int64[1] one = {1}> {
        y = If(c) <then_branch = g1 () => (float[N, 4] t) { t = Squeeze(x, one) },
                   else_branch = g2 () => (float[N, 4] e) { s = Squeeze(x, one)
                                                                 e = Neg(s) }>
    }""")
    (branch_node,) = nodes(rewritten, "If")
    squeezes = [n for branch in attrs(branch_node).values() for n in branch.node if n.op_type == "Squeeze"]
    assert opset_of(rewritten) == 12 and [attrs(n)["axes"] for n in squeezes] == [[1], [1]]


def test_operators_without_any_handler_stay_and_the_rest_is_fitted():
    model = model_from_text(header(13) + """
    g (float[N, 1, 4] x) => (float[N, 4] y, float[M] u) <int64[1] one = {1}> {
        y = Squeeze(x, one)
        u = Unique<sorted = 1>(y)
    }""")
    rewritten, record = apply_pass_with_record("opset_compat", model)
    assert opset_of(rewritten) == 12 and record.details["left"] == [
        "the Unique node making 'u', Unique-11: opset_compat knows no decomposition of Unique"]
    explanation = explained(rewritten)
    assert ("Unique-11 (1 node: the Unique node making 'u'): onnx-tf 1.10.0 has no handler for Unique; "
            "opset_compat cannot fix") \
           in explanation


def test_nodes_of_other_domains_are_named():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13, "com.example" : 1]>
    g (float[N, 4] x) => (float[N, 4] y) { y = com.example.Fancy(x) }""")
    explanation = explained(model)
    assert ("com.example.Fancy (1 node: the Fancy node making 'y'): onnx-tf has no handlers for the domain "
            "'com.example'") \
           in explanation


def test_a_model_onnx_tf_converts_is_left_alone():
    model = model_from_text(header(13) + "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }")
    _, record = apply_pass_with_record("opset_compat", model)
    assert not record.changed and findings(model) == [] and unconvertible(model) == []


def test_the_opset_option_lowers_further_or_says_why_not():
    model = model_from_text(header(14) + "g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }")
    assert opset_of(apply_pass("opset_compat", model, opset=11)) == 11
    runtime_axes = model_from_text(header(14) + """
    g (float[N, 1, 4] x, int64[1] axes) => (float[N, 4] y) { y = Squeeze(x, axes) }""")
    with pytest.raises(PluginError, match="opset_compat.opset: the model cannot be brought to opset 12 or below: "
                                          "the Squeeze node making 'y', .* its axes .* are computed at run time"):
        apply_pass("opset_compat", runtime_axes, opset=12)


def test_every_step_the_table_names_exists_in_onnx():
    for (op, version) in STEPS:
        assert version in schema_versions(op), (op, version)
    for op, decomposition in DECOMPOSITIONS.items():
        assert all(primitive in handlers().versions for primitive in decomposition.primitives), op
    assert since_version("Squeeze", 14) == 13


def test_inspect_shows_the_findings_without_importing_tensorflow(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(model_from_text(header(17) + """
    g (float[N, 1, 4] x) => (float[N, 4] y) <float[4] s = {1, 1, 1, 1}, int64[1] one = {1}> {
        z = Squeeze(x, one)
        y = LayerNormalization(z, s)
    }"""), str(path))
    script = f"""
import json, sys, surgeon
found = [f for f in surgeon.inspect({str(path)!r})["findings"] if f["plugin"] == "opset_compat"]
print(json.dumps({{"found": found, "tensorflow": "tensorflow" in sys.modules}}))
"""
    result = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    assert not result["tensorflow"]
    wheres = [f["where"] for f in result["found"]]
    assert wheres[:2] == ["Squeeze-13 (1 node: the Squeeze node making 'z')",
                          "LayerNormalization-17 (1 node: the LayerNormalization node making 'y')"]
    assert (result["found"][2]["where"], result["found"][2]["message"]) == (
        "opset 17", "opset_compat lowers the model to opset 12")


@pytest.mark.parametrize("upper, diagonal, dtype", [(0, 0, "float"), (1, 1, "float"), (0, -1, "bool")])
def test_trilu_is_decomposed_where_squeeze_needs_an_opset_below_14(upper, diagonal, dtype):
    rewritten = fitted(header(14) + f"""
    g ({dtype}[N, 1, 3, 4] x) => ({dtype}[N, 3, 4] y) <int64[1] one = {{1}}, int64 k = {{{diagonal}}}> {{
        s = Squeeze(x, one)
        y = Trilu<upper = {upper}>(s, k)
    }}""")
    assert opset_of(rewritten) == 12 and nodes(rewritten, "And" if dtype == "bool" else "Where")
    assert not nodes(rewritten, "Trilu")
