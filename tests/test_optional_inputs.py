"""Empty optional inputs (``''``) made readable for onnx-tf 1.10: ``readable_by_onnx_tf``.

Each small model leaves an optional input out where onnx-tf fails on it or reads it wrongly. The readable copy must
compute on onnxruntime exactly what the original computes, and, converted by the real converter and served from the
SavedModel in a fresh process, what onnxruntime computes on the original. The ONNX backend node cases that leave an
input out are converted the same way and checked against their expected outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon import PluginError
from surgeon.testing import BackendCase, apply_pass, backend_node_cases, model_from_text, run_onnx
from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, to_saved_model
from surgeon_plugins.converters.onnx_tf.readable import readable_by_onnx_tf
from surgeon_plugins.converters.onnx_tf.support import all_nodes, unconvertible
from test_onnx_tf_compat import serve_in_fresh_process

SEQUENCE, BATCH, HIDDEN, FEATURES = 5, 2, 3, 2


def recurrent(op: str, given: dict[str, int], directions: int = 1, x_shape: list | None = None,
              states_fed: bool = False) -> onnx.ModelProto:
    """One ``op`` node (RNN, GRU, LSTM) over X [seq, batch, features] with the optional inputs named in ``given``
    (name -> seed of its values) and the ones between them left out; outputs Y and Y_h. ``states_fed``: the
    initial states are graph inputs rather than initializers."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    rng = np.random.default_rng(3)
    shapes = {"B": [directions, 2 * gates * HIDDEN], "sequence_lens": [BATCH],
              "initial_h": [directions, BATCH, HIDDEN], "initial_c": [directions, BATCH, HIDDEN],
              "P": [directions, 3 * HIDDEN]}
    optional = ["B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    last = max(optional.index(name) for name in given)
    names = ["X", "W", "R"] + [name if name in given else "" for name in optional[:last + 1]]
    initializers = [numpy_helper.from_array(rng.standard_normal((directions, gates * HIDDEN, FEATURES)).astype(
                        np.float32) / 2, "W"),
                    numpy_helper.from_array(rng.standard_normal((directions, gates * HIDDEN, HIDDEN)).astype(
                        np.float32) / 2, "R")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape or [SEQUENCE, BATCH, FEATURES])]
    for name, seed in given.items():
        if name.startswith("initial") and states_fed:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [directions, "N", HIDDEN]))
        elif name == "sequence_lens":
            initializers.append(numpy_helper.from_array(np.array([SEQUENCE, SEQUENCE - 2], np.int32), name))
        else:
            values = np.random.default_rng(seed).standard_normal(shapes[name]).astype(np.float32)
            initializers.append(numpy_helper.from_array(values, name))
    direction = "bidirectional" if directions == 2 else "forward"
    node = helper.make_node(op, names, ["Y", "Y_h"], name=op.lower(), hidden_size=HIDDEN, direction=direction)
    batch = (x_shape or [SEQUENCE, BATCH])[1]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [SEQUENCE, directions, batch, HIDDEN]),
               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [directions, batch, HIDDEN])]
    graph = helper.make_graph([node], op.lower(), inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def without_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``'s one recurrent node with its B (and every input after it) not given at all."""
    del model.graph.node[0].input[3:]
    model.graph.initializer.remove(next(tensor for tensor in model.graph.initializer if tensor.name == "B"))
    return model


def loop_without_cond() -> onnx.ModelProto:
    """Loop(M, '') with scan outputs only: a for loop, which the text syntax cannot write (it drops a trailing '')."""
    body = onnx.parser.parse_graph("""
        body (int64 i, bool c) => (bool c_out, float[2, 4] step) {
            c_out = Identity(c)
            i_float = Cast<to = 1>(i)
            step = Add(x, i_float)
        }""")
    node = helper.make_node("Loop", ["trips", ""], ["steps"], name="loop", body=body)
    graph = helper.make_graph([node], "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("steps", TensorProto.FLOAT, [3, 2, 4])],
                              [numpy_helper.from_array(np.array(3, np.int64), "trips")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def unnamed_output_then_left_out_input() -> onnx.ModelProto:
    """A Dropout with its mask unnamed, feeding a GRU that leaves sequence_lens out: onnx-tf filed the mask under
    '' and the GRU took it as its sequence_lens."""
    model = recurrent("GRU", {"B": 1, "initial_h": 2})
    gru = model.graph.node[0]
    gru.input[0] = "X_kept"
    model.graph.node.insert(0, helper.make_node("Dropout", ["X"], ["X_kept", ""], name="dropout"))
    onnx.checker.check_model(model, full_check=True)
    return model


TEXT = {
    "ConvInteger x_zero_point": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (uint8[N, 1, 5, 5] x) => (int32[N, 2, 3, 3] y)
        <uint8[2, 1, 3, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1}, uint8 w_zero = {3}>
        { y = ConvInteger(x, w, "", w_zero) }""",
    "MatMulInteger a_zero_point": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (int8[N, 4] a) => (int32[N, 3] y)
        <int8[4, 3] b = {1, -2, 3, 4, 5, -6, 7, 8, 9, -10, 11, 12}, int8 b_zero = {-5}>
        { y = MatMulInteger(a, b, "", b_zero) }""",
    "Dropout ratio, training_mode a false initializer": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[N, 4] y) <bool training = {0}> { y = Dropout(x, "", training) }""",
    "Dropout ratio, training_mode a false Constant": """
        <ir_version: 8, opset_import: ["" : 12]>
        g (float[N, 4] x) => (float[N, 4] y) {
            training = Constant<value = bool {0}>()
            y = Dropout(x, "", training)
        }""",
    "Slice axes, constant starts": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[8, 6, N] x) => (float[3, 3, N] y)
        <int64[2] starts = {1, 5}, int64[2] ends = {7, 0}, int64[2] steps = {2, -2}>
        { y = Slice(x, starts, ends, "", steps) }""",
    "Slice axes, starts fed (int32)": """
        <ir_version: 8, opset_import: ["" : 11]>
        g (float[N, 6] x, int32[2] starts) => (float[M, K] y) <int32[2] ends = {100, 5}, int32[2] steps = {1, 2}>
        { y = Slice(x, starts, ends, "", steps) }""",
    "Slice axes, in a Loop body": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[6, N] x) => (float[6, N] y)
        <int64 trips = {2}, bool go = {1}, int64[1] starts = {0}, int64[1] ends = {6}, int64[1] steps = {2}>
        {
            y = Loop(trips, go, x) <body = body (int64 i, bool c, float[6, N] total) => (bool c_out, float[6, N] next) {
                c_out = Identity(c)
                every_other = Slice(total, starts, ends, "", steps)
                twice = Concat<axis = 0>(every_other, every_other)
                next = Add(total, twice)
            }>
        }""",
    "Gemm C (trailing), in an If branch": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3] x) => (float[N, 2] y) <float[3, 2] w = {1, 2, 3, 4, 5, 6}, bool yes = {1}> {
            y = If(yes) <
                then_branch = then_graph () => (float[N, 2] a) { a = Gemm<alpha = 2.0>(x, w, "") },
                else_branch = else_graph () => (float[N, 2] b) { b = MatMul(x, w) }>
        }""",
    "Pad constant_value (trailing)": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[N, 7] y) <int64[4] pads = {0, 1, 0, 2}> { y = Pad(x, pads, "") }""",
}

BUILT: dict[str, Callable[[], onnx.ModelProto]] = {
    "RNN B": lambda: recurrent("RNN", {"initial_h": 1}),
    "GRU B": lambda: recurrent("GRU", {"sequence_lens": 0, "initial_h": 1}),
    "LSTM B": lambda: recurrent("LSTM", {"initial_h": 1, "initial_c": 2}),
    "LSTM initial_h, initial_c given": lambda: recurrent("LSTM", {"B": 1, "initial_c": 2}),
    "LSTM initial_c, initial_h and P given": lambda: recurrent("LSTM", {"B": 1, "initial_h": 2, "P": 3}),
    "LSTM bidirectional initial_h, initial_c given": lambda: recurrent("LSTM", {"initial_c": 2}, directions=2),
    "LSTM both states, P given (kept)": lambda: recurrent("LSTM", {"B": 1, "P": 3}),
    "GRU B not given": lambda: without_bias(recurrent("GRU", {"B": 1})),
    "GRU after an unnamed Dropout mask": unnamed_output_then_left_out_input,
}

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    **{name: functools.partial(model_from_text, text) for name, text in TEXT.items()}, **BUILT}


def feed_for(model: onnx.ModelProto) -> list[np.ndarray]:
    """Seeded inputs: each symbolic dimension 2, integers over their type's whole range (zero points matter)."""
    rng = np.random.default_rng(11)
    feed = []
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else 2 for dim in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if value.name == "starts":
            feed.append(np.array([1, 0], dtype))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            feed.append(rng.integers(info.min, int(info.max) + 1, shape).astype(dtype))
        else:
            feed.append(rng.standard_normal(shape).astype(dtype))
    return feed


def empty_inputs(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(op, position) of every input left out, subgraphs included."""
    return [(node.op_type, index) for node in all_nodes(model.graph) for index, name in enumerate(node.input)
            if not name]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [value.name for value in model.graph.output]


def assert_served(got: list[np.ndarray] | str, want: list[np.ndarray], name: str) -> None:
    assert not isinstance(got, str), f"{name}: {got}"
    for actual, expected in zip(got, want):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=name)


# --------------------------------------------------------------------------- the readable copy, on onnxruntime

@pytest.mark.parametrize("name", [*MODELS, "Loop cond (kept)"])
def test_the_readable_copy_computes_exactly_what_the_model_computes(name):
    model = loop_without_cond() if name == "Loop cond (kept)" else MODELS[name]()
    readable = readable_by_onnx_tf(model)
    onnx.checker.check_model(readable, full_check=True)
    feed = feed_for(model)
    for got, want in zip(run_onnx(readable, feed, optimized=False), run_onnx(model, feed, optimized=False)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name, left_out", [
    ("ConvInteger x_zero_point", [("ConvInteger", 2)]),  # filled with 0 of x's type
    ("Slice axes, starts fed (int32)", [("Slice", 3)]),  # filled with [0, 1] as int32
    ("Dropout ratio, training_mode a false Constant", [("Dropout", 1)]),  # both dropped
    ("LSTM both states, P given (kept)", [("LSTM", 4), ("LSTM", 5), ("LSTM", 6)]),
    ("Gemm C (trailing), in an If branch", [("Gemm", 2)]),  # dropped
    ("GRU B not given", []),  # zeros: onnx-tf's GRU fails to run without B
])
def test_each_left_out_input_is_filled_with_its_default_kept_or_dropped(name, left_out):
    model = MODELS[name]()
    assert empty_inputs(model) == left_out
    readable = readable_by_onnx_tf(model)
    op = left_out[0][0] if left_out else name.split()[0]
    node = next(node for node in all_nodes(readable.graph) if node.op_type == op)
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in readable.graph.initializer}
    if name.startswith("ConvInteger"):
        assert values[node.input[2]].dtype == np.uint8 and values[node.input[2]] == 0
    elif name.startswith("Slice"):
        np.testing.assert_array_equal(values[node.input[3]], np.array([0, 1], np.int32))
        assert values[node.input[3]].dtype == np.int32
    elif name.startswith("Dropout"):
        assert list(node.input) == ["x"]
    elif name.startswith("GRU"):
        np.testing.assert_array_equal(values[node.input[3]], np.zeros((1, 6 * HIDDEN), np.float32))
    elif name.startswith("LSTM"):
        assert empty_inputs(readable) == left_out  # onnx-tf reads both states left out as zeros
    else:
        assert list(node.input) == ["x", "w"]
    assert empty_inputs(readable) == (left_out if "(kept)" in name else [])


def test_a_batch_first_lstm_gets_its_left_out_state_batch_first_like_the_state_given():
    """layout=1: X [batch, seq, input] and the states [batch, num_directions, hidden] (onnxruntime does not run
    that layout, so the filled state is checked against the one given, which must have the same shape)."""
    hidden, batch = 5, 3
    node = helper.make_node("LSTM", ["x", "w", "r", "", "", "", "c0"], ["y"], hidden_size=hidden, layout=1,
                            name="lstm")
    graph = helper.make_graph(
        [node], "batch_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 2]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [batch, 1, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((1, 4 * hidden, 2), np.float32), "w"),
         numpy_helper.from_array(np.ones((1, 4 * hidden, hidden), np.float32), "r")])
    readable = readable_by_onnx_tf(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    filled = next(tensor for tensor in readable.graph.initializer if tensor.name == readable.graph.node[0].input[5])
    assert list(filled.dims) == [batch, 1, hidden] and not numpy_helper.to_array(filled).any()


def test_the_loop_keeps_its_left_out_cond_for_the_handler_reads_it_by_position():
    readable = readable_by_onnx_tf(loop_without_cond())
    assert list(readable.graph.node[0].input) == ["trips", ""]


def test_an_lstm_state_whose_zeros_need_a_batch_the_model_does_not_fix_is_refused_naming_the_node():
    model = recurrent("LSTM", {"B": 1, "initial_c": 2}, x_shape=[SEQUENCE, "N", FEATURES], states_fed=True)
    with pytest.raises(PluginError, match=r"node 'lstm' \(LSTM\) leaves out initial_h and gives initial_c") as error:
        readable_by_onnx_tf(model)
    assert error.value.nodes == ("lstm",)


def test_a_model_with_unique_node_names_and_no_empty_names_is_returned_as_it_is():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 4] x) => (float[N, 4] y) <int64[4] pads = {0, 0, 0, 0}> {
            [pad] p = Pad(x, pads)
            [relu] y = Relu(p)
        }""")
    assert readable_by_onnx_tf(model) is model


def test_the_nodes_keep_their_order_so_a_failed_node_is_found_in_the_users_model():
    model = MODELS["Slice axes, in a Loop body"]()
    readable = readable_by_onnx_tf(model)
    assert [node.op_type for node in all_nodes(readable.graph)] == [node.op_type for node in all_nodes(model.graph)]


# --------------------------------------------------------------------------- converted and served

def convert_readable(models: dict[str, onnx.ModelProto], tmp_path: Path) -> dict:
    """name -> what the SavedModel of ``readable_by_onnx_tf(model)``, served from one fresh process, computes."""
    served: dict[str, tuple[Path, list[np.ndarray], list[str], list[str]]] = {}
    for name, model in models.items():
        target = tmp_path / f"model{len(served)}"
        to_saved_model(readable_by_onnx_tf(model), OnnxTfOptions(), target)
        initializers = {tensor.name for tensor in model.graph.initializer}
        inputs = [value.name for value in model.graph.input if value.name not in initializers]
        served[name] = (target, feed_for(model), inputs, output_names(model))
    return serve_in_fresh_process(served, tmp_path)


@pytest.mark.tf
def test_every_small_model_serves_what_onnxruntime_computes_on_the_original(tmp_path):
    models = {name: build() for name, build in MODELS.items()}
    results = convert_readable(models, tmp_path)
    for name, model in models.items():
        assert_served(results[name], run_onnx(model, feed_for(model)), name)


# --------------------------------------------------------------------------- the ONNX backend node cases

# backend cases that leave an input out and serve their expected outputs once readable (on the stack's onnx wheel:
# 1.18 has Clip-13 cases with min left out before max, later wheels write them at Clip-13 with both left out)
SERVED = {"test_clip_default_inbounds", "test_clip_default_int8_inbounds", "test_scan_sum",
          "test_resize_upsample_scales_linear", "test_resize_upsample_scales_linear_align_corners",
          "test_resize_upsample_scales_cubic_A_n0p5_exclude_outside", "test_resize_tf_crop_and_resize",
          "test_resize_tf_crop_and_resize_extrapolation_value"}
SERVED_WHERE_SHIPPED = {"test_clip_default_max", "test_clip_default_int8_max"}
# what onnx-tf's own handler refuses or computes otherwise (not the left-out input): case prefix -> its message
ONNX_TF_LIMITS = {
    "test_resize_downsample_scales_linear": "differs",  # onnx-tf's bilinear downscaling is not ONNX's
    "test_resize_downsample_scales_cubic_A_n0p5_exclude_outside": "differs",
    "test_resize_downsample_sizes_linear_pytorch_half_pixel": "pytorch_half_pixel is not supported",
    "test_resize_upsample_sizes_nearest_floor_align_corners": "align_corners, mode=nearest",
    "test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric": "asymmetric, mode=nearest",
    "test_resize_": "is not supported in Tensorflow",  # cubic without exclude_outside, nearest with half_pixel
}


def convertible_cases_with_left_out_inputs() -> dict[str, BackendCase]:
    """The backend cases that leave an input out and that onnx-tf has handlers for, after opset_compat where the
    onnx wheel wrote them at newer operator versions."""
    found = {}
    for case in backend_node_cases():
        if not empty_inputs(case.model):
            continue
        model = apply_pass("opset_compat", case.model) if unconvertible(case.model) else case.model
        if not unconvertible(model):
            found[case.name] = BackendCase(case.name, model, case.inputs, case.outputs)
    return found


def serve_backend_cases(cases: dict[str, BackendCase], tmp_path: Path) -> dict[str, str]:
    """Convert each case's readable copy and serve it from one fresh process: case -> why it failed ("" when it
    served its expected outputs)."""
    served: dict[str, tuple[Path, list[np.ndarray], list[str], list[str]]] = {}
    why: dict[str, str] = {}
    for name, case in cases.items():
        target = tmp_path / name
        try:
            to_saved_model(readable_by_onnx_tf(case.model), OnnxTfOptions(), target)
        except PluginError as error:
            why[name] = str(error)
            continue
        initializers = {tensor.name for tensor in case.model.graph.initializer}
        inputs = [value.name for value in case.model.graph.input if value.name not in initializers]
        served[name] = (target, case.inputs, inputs, output_names(case.model))
    for name, result in serve_in_fresh_process(served, tmp_path).items():
        try:
            assert_close(result, cases[name].outputs)
            why[name] = ""
        except AssertionError:
            why[name] = "differs"
    return why


def assert_close(got: list[np.ndarray] | str, want: list[np.ndarray]) -> None:
    assert not isinstance(got, str), got
    for actual, expected in zip(got, want):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.tf
def test_every_backend_case_that_leaves_an_input_out_serves_or_fails_for_onnx_tfs_own_reason(tmp_path):
    cases = convertible_cases_with_left_out_inputs()
    expected = SERVED | (SERVED_WHERE_SHIPPED & set(cases))
    assert SERVED <= set(cases)
    why = serve_backend_cases(cases, tmp_path)
    assert {name for name, reason in why.items() if not reason} == expected
    for name, reason in why.items():
        if reason:
            limit = next(message for prefix, message in ONNX_TF_LIMITS.items() if name.startswith(prefix))
            assert limit in reason and "KeyError" not in reason, (name, reason)
