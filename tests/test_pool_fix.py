"""pool_fix on small graphs and the ONNX backend pooling cases, run on onnxruntime (no TensorFlow here).

The conversion with onnx-tf and the fresh-process SavedModel checks are in
test_pool_fix_backend.py.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import surgeon
from surgeon import UsageError
from surgeon.testing import (
    apply_pass,
    apply_pass_with_record,
    assert_idempotent,
    assert_same_outputs,
    backend_node_cases,
    find_pass,
    model_from_text,
    run_onnx,
)

POOLING = ("maxpool", "averagepool", "lppool")


def pool_model(call: str, shape: str = "N, 3, 8, 8", opset: int = 13, dtype: str = "float") -> onnx.ModelProto:
    """A one-node model: ``y = call(x)`` with ``x`` of ``shape``; ``call`` is ONNX text like ``MaxPool <...> (x)``."""
    rank = shape.count(",") + 1
    out = ", ".join(["?"] * rank)
    return model_from_text(f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g ({dtype}[{shape}] x) => ({dtype}[{out}] y) {{ y = {call} }}
    """)


def findings(model: onnx.ModelProto, **options) -> list[str]:
    rewrite = find_pass("pool_fix")
    return [f.message for f in rewrite.detect(gs.import_onnx(model), rewrite.options(**options))]


def assert_same_at_sizes(before: onnx.ModelProto, after: onnx.ModelProto, shapes: list[tuple[int, ...]]) -> None:
    """Same outputs on onnxruntime for inputs of each shape (for models with symbolic spatial dims)."""
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = (rng.standard_normal(shape) - 1.5).astype(np.float32)  # mostly negative: a 0 fill would show
        (want,), (got,) = run_onnx(before, [x]), run_onnx(after, [x])
        assert got.shape == want.shape, f"input {shape}: output {got.shape}, expected {want.shape}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"input {shape}")


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def pools(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in ("MaxPool", "AveragePool", "LpPool")]


AVG_PADS = 'AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)'
AVG_SAME_PADS = 'AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x)'  # stride 1: pads == SAME_UPPER


@pytest.mark.parametrize("call, shape, reason", [
    (AVG_PADS, "N, 3, 8, 8", "non-zero pads becomes a PyFunc (a Python callback that no server can run)"),
    (AVG_SAME_PADS, "N, 3, 8, 8", "only on a fully defined input shape, which a dynamic batch is not"),
    ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1> (x)', "1, 3, 8, 8",
     "ceil_mode=1 becomes a PyFunc"),
    ('AveragePool <kernel_shape = [2, 2], auto_pad = "SAME_LOWER"> (x)', "1, 3, 8, 8", "SAME_LOWER becomes a PyFunc"),
    ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1, count_include_pad = 1> (x)',
     "1, 3, 8, 8", "counts the ceil-mode extension in the divisor: wrong numbers"),
    ('AveragePool <kernel_shape = [3], strides = [2], ceil_mode = 1, count_include_pad = 1> (x)',
     "N, 3, L", "counts the ceil-mode extension in the divisor"),
    ('MaxPool <kernel_shape = [1, 1], strides = [2, 2], ceil_mode = 1> (x)', "1, 1, 2, 2",
     "keeps a last window that starts in the end padding"),
    ('MaxPool <kernel_shape = [2, 2, 2], strides = [3, 3, 3], ceil_mode = 1> (x)', "N, 2, D, H, W",
     "keeps a last window that starts in the end padding"),
    # onnx-tf compares these pads with SAME_UPPER pads computed from (C, H) instead of (H, W)
    ('MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 0, 1, 1]> (x)', "1, 7, 8, 7",
     "computed from the wrong dims"),
])
def test_detects_what_onnx_tf_turns_into_a_pyfunc_or_gets_wrong(call, shape, reason):
    (message,) = findings(pool_model(call, shape))
    assert reason in message


@pytest.mark.parametrize("call, shape", [
    (AVG_SAME_PADS, "1, 3, 8, 8"),  # a fully defined shape: onnx-tf pools with TF's SAME
    ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], count_include_pad = 1> (x)',
     "N, 3, 8, 8"),
    ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1, count_include_pad = 1> (x)',
     "1, 3, 7, 7"),  # (7 - 3) % 2 == 0: ceil mode adds no window
    ('AveragePool <kernel_shape = [2, 2], auto_pad = "SAME_UPPER"> (x)', "N, 3, H, W"),
    ('MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], ceil_mode = 1> (x)', "N, 64, H, W"),
    ('MaxPool <kernel_shape = [3, 3, 3], pads = [1, 1, 1, 1, 1, 1], auto_pad = "NOTSET"> (x)', "N, 2, 5, 5, 5"),
    ('LpPool <kernel_shape = [3], pads = [2, 1], p = 3> (x)', "N, 3, L"),
    ('MaxPool <kernel_shape = [2, 2], auto_pad = "SAME_LOWER"> (x)', "N, 3, H, W"),
])
def test_finds_nothing_where_onnx_tf_is_native_and_exact(call, shape):
    model = pool_model(call, shape)
    assert findings(model) == []
    rewritten, record = apply_pass_with_record("pool_fix", model)
    assert not record.changed and rewritten.graph == model.graph


REWRITES = [
    # (call, input shape of the model, input shapes fed to onnxruntime)
    (AVG_PADS, "N, 3, 8, 8", [(1, 3, 8, 8), (3, 3, 8, 8), (8, 3, 8, 8)]),
    (AVG_PADS, "N, 3, H, W", [(2, 3, 8, 8), (1, 3, 7, 9), (3, 3, 5, 6)]),
    (AVG_SAME_PADS, "N, 3, 8, 8", [(1, 3, 8, 8), (3, 3, 8, 8)]),
    ('AveragePool <kernel_shape = [3], strides = [2], pads = [1, 1], ceil_mode = 1> (x)', "N, 2, L",
     [(2, 2, 7), (2, 2, 8), (1, 2, 10)]),
    ('AveragePool <kernel_shape = [3, 3, 3], strides = [2, 2, 2], pads = [1, 1, 1, 1, 1, 1], ceil_mode = 1> (x)',
     "N, 2, 6, 7, 8", [(1, 2, 6, 7, 8), (3, 2, 6, 7, 8)]),
    ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], ceil_mode = 1, '
     'count_include_pad = 1> (x)', "N, 3, H, W", [(2, 3, 8, 8), (1, 3, 7, 10), (1, 3, 9, 6)]),
    ('AveragePool <kernel_shape = [3, 3], strides = [3, 3], pads = [1, 1, 1, 1], ceil_mode = 1, '
     'count_include_pad = 1> (x)', "1, 3, 2, 2", [(1, 3, 2, 2)]),  # the last window starts in the padding
    ('AveragePool <kernel_shape = [2, 3], strides = [2, 3], auto_pad = "SAME_LOWER"> (x)', "N, 3, H, W",
     [(1, 3, 8, 8), (2, 3, 7, 10), (1, 3, 5, 11)]),
    ('AveragePool <kernel_shape = [5, 5], pads = [2, 2, 2, 2]> (x)', "N, 1, 6, 6", [(2, 1, 6, 6)]),
    ('AveragePool <kernel_shape = [5, 5], strides = [2, 2], pads = [2, 2, 2, 2]> (x)', "N, 1, 8, 7",
     [(2, 1, 8, 7)]),
    ('MaxPool <kernel_shape = [1, 1], strides = [2, 2], ceil_mode = 1> (x)', "N, 1, H, W",
     [(1, 1, 2, 2), (2, 1, 5, 6), (1, 1, 7, 4)]),
    ('MaxPool <kernel_shape = [2, 2, 2], strides = [3, 3, 3], dilations = [2, 2, 2], pads = [1, 0, 1, 0, 1, 1], '
     'ceil_mode = 1> (x)', "N, 2, D, H, W", [(1, 2, 6, 7, 8), (2, 2, 9, 5, 6)]),
    ('MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 0, 1, 1]> (x)', "1, 7, 8, 7", [(1, 7, 8, 7)]),
]


@pytest.mark.parametrize("call, shape, inputs", REWRITES)
def test_rewrite_keeps_the_outputs_and_leaves_nothing_to_fix(call, shape, inputs):
    model = pool_model(call, shape)
    assert findings(model)
    rewritten = apply_pass("pool_fix", model)
    assert_same_at_sizes(model, rewritten, inputs)
    assert findings(rewritten) == []
    for node in pools(rewritten):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert not set(attrs) & {"pads", "ceil_mode"} and attrs.get("auto_pad", b"SAME_UPPER") == b"SAME_UPPER", attrs


@pytest.mark.parametrize("call, shape, inputs", REWRITES[:4])
def test_rewrite_is_idempotent(call, shape, inputs):
    assert_idempotent("pool_fix", pool_model(call, shape))
    assert_idempotent("pool_fix", pool_model(call, shape), scope="all")


def test_max_pool_pads_with_the_lowest_value_of_its_dtype():
    for dtype, lowest in (("float", np.finfo(np.float32).min), ("float16", np.finfo(np.float16).min)):
        model = pool_model('MaxPool <kernel_shape = [1, 1], strides = [2, 2], ceil_mode = 1> (x)', "1, 1, 4, 5",
                           dtype=dtype)
        rewritten = apply_pass("pool_fix", model)
        assert ops(rewritten) == ["Pad", "MaxPool"]
        fills = [init for init in rewritten.graph.initializer if init.name.endswith("lowest")]
        assert [onnx.numpy_helper.to_array(fill).item() for fill in fills] == [lowest]


def test_static_dims_rescale_an_average_by_a_constant_and_dynamic_dims_by_a_pooled_mask():
    static = apply_pass("pool_fix", pool_model(AVG_PADS, "N, 3, 8, 8"))
    assert ops(static) == ["Pad", "AveragePool", "Mul"]
    dynamic = apply_pass("pool_fix", pool_model(AVG_PADS, "N, 3, H, W"))
    assert "ConstantOfShape" in ops(dynamic) and ops(dynamic)[-1] == "Div"
    assert len(pools(dynamic)) == 2


def test_an_average_padded_like_same_upper_becomes_same_upper_and_costs_nothing():
    """onnx-tf pools auto_pad=SAME_UPPER natively at any batch size, a dynamic one included."""
    for call, shape in ((AVG_SAME_PADS, "N, 3, H, W"),
                        ('AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [0, 0, 1, 1]> (x)', "N, 3, 8, 8"),
                        ('AveragePool <kernel_shape = [3, 3], auto_pad = "SAME_LOWER"> (x)', "N, 3, H, W")):
        model = pool_model(call, shape)
        rewritten = apply_pass("pool_fix", model)
        (node,) = rewritten.graph.node
        assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["auto_pad"] == b"SAME_UPPER"
        assert_same_at_sizes(model, rewritten, [(2, 3, 8, 8)])


def test_shapes_the_graph_lacks_come_from_shape_inference():
    """Exporters leave intermediate shapes out; static ones still make a constant divisor and a native SAME."""
    def after_relu(call: str, shape: str) -> onnx.ModelProto:
        return model_from_text(f"""
            <ir_version: 8, opset_import: ["" : 13]>
            g (float[{shape}] x) => (float[?, ?, ?, ?] y) {{ r = Relu(x) y = {call.replace("(x)", "(r)")} }}
        """)

    assert not after_relu(AVG_PADS, "1, 3, 8, 8").graph.value_info
    assert ops(apply_pass("pool_fix", after_relu(AVG_PADS, "N, 3, 8, 8"))) == ["Relu", "Pad", "AveragePool", "Mul"]
    assert findings(after_relu(AVG_SAME_PADS, "1, 3, 8, 8")) == []
    assert findings(after_relu(AVG_SAME_PADS, "N, 3, 8, 8"))


def test_begin_pads_over_one_are_added_one_at_a_time():
    """onnx-tf's Pad handler fails on a constant begin pad of 2 or more."""
    rewritten = apply_pass("pool_fix", pool_model(
        'AveragePool <kernel_shape = [5, 5], strides = [2, 2], pads = [2, 2, 2, 2]> (x)', "N, 1, 8, 8"))
    pads = [onnx.numpy_helper.to_array(init).tolist() for init in rewritten.graph.initializer
            if init.name.endswith("/pads") or "/pads_" in init.name]
    assert ops(rewritten)[:2] == ["Pad", "Pad"]
    assert sorted(pads) == sorted([[0, 0, 1, 1, 0, 0, 2, 2], [0, 0, 1, 1, 0, 0, 0, 0]])
    assert_same_at_sizes(pool_model('AveragePool <kernel_shape = [5, 5], strides = [2, 2], pads = [2, 2, 2, 2]> (x)',
                                    "N, 1, 8, 8"), rewritten, [(3, 1, 8, 8)])


def test_default_scope_leaves_native_pooling_alone_and_scope_all_rewrites_it():
    model = pool_model('MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)', "N, 3, 9, 9")
    assert findings(model) == [] and ops(apply_pass("pool_fix", model)) == ["MaxPool"]
    (message,) = findings(model, scope="all")
    assert "scope=all" in message
    rewritten = apply_pass("pool_fix", model, scope="all")
    assert ops(rewritten) == ["Pad", "MaxPool"]
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3])
    assert findings(rewritten, scope="all") == []


def test_a_typed_option_with_a_clear_error():
    with pytest.raises(UsageError, match="option pool_fix.scope"):
        apply_pass("pool_fix", pool_model(AVG_PADS), scope="everything")


@pytest.mark.parametrize("model, blocked", [
    (pool_model(AVG_PADS, opset=10), "pool_fix needs opset >= 11"),
    (pool_model('AveragePool <kernel_shape = [2], strides = [2], auto_pad = "VALID", ceil_mode = 1> (x)', "1, 3, 7"),
     "ONNX Runtime applies ceil_mode=1 and the ONNX spec does not"),
])
def test_what_cannot_be_rewritten_is_reported_and_left(model, blocked):
    (message,) = findings(model)
    assert "PyFunc" in message and blocked in message
    rewritten, record = apply_pass_with_record("pool_fix", model)
    assert not record.changed


def test_report_names_each_rewritten_node_with_its_reason():
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 3, 8, 8] x) => (float[N, 3, ?, ?] y) <float[N, 3, 8, 8] a> {
            a = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x)
            y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (a)
        }
    """)
    model.graph.node[1].name = "avg"
    rewritten, record = apply_pass_with_record("pool_fix", model)
    assert list(record.details["rewritten"]) == ["node 'avg' (AveragePool)"]
    assert "PyFunc" in record.details["rewritten"]["node 'avg' (AveragePool)"]
    assert ops(rewritten) == ["MaxPool", "Pad", "AveragePool", "Mul"]
    assert [o.name for o in rewritten.graph.output] == ["y"]
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3, 8])


def test_inspect_shows_the_hazards_with_the_plugin_that_fixes_them(tmp_path):
    path = tmp_path / "pool.onnx"
    onnx.save(pool_model(AVG_PADS), path)
    found = [f for f in surgeon.inspect(path)["findings"] if f["plugin"] == "pool_fix"]
    assert len(found) == 1 and "PyFunc" in found[0]["message"]


@pytest.mark.parametrize("scope", ["hazards", "all"])
def test_every_backend_pooling_case_still_matches_its_expected_outputs(scope):
    cases = backend_node_cases(POOLING)
    assert len(cases) >= 40
    rewritten = 0
    for case in cases:
        model = apply_pass("pool_fix", case.model, scope=scope)
        rewritten += len(model.graph.node) != len(case.model.graph.node)
        for got, want in zip(run_onnx(model, case.inputs), case.outputs):
            assert got.shape == want.shape, case.name
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5, err_msg=case.name)  # the ONNX runner's rtol
        assert findings(model, scope=scope) == [], case.name
    assert rewritten >= (8 if scope == "hazards" else 20)
