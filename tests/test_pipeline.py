"""The pipeline: pass order, failures named, all-or-nothing output, report, pipeline files."""

import json

import onnx
import pytest

import surgeon
from surgeon import PluginError, UsageError
from surgeon.testing import run_onnx

PASSES = """
import onnx_graphsurgeon as gs
import numpy as np
from surgeon import RewritePass, hookimpl


def append_identity(tag):
    def run(graph, options):
        out = graph.outputs[0]
        new = gs.Variable(f"{out.name}_{tag}", dtype=out.dtype, shape=out.shape)
        graph.nodes.append(gs.Node("Identity", name=f"tag_{tag}", inputs=[out], outputs=[new]))
        graph.outputs[0] = new
    return run


def raise_error(graph, options):
    raise ValueError("bad axis")


def read_ghost(graph, options):
    ghost = gs.Variable("ghost", dtype=np.float32)
    out = graph.outputs[0]
    new = gs.Variable("from_ghost", dtype=out.dtype, shape=out.shape)
    graph.nodes.append(gs.Node("Add", name="dangling", inputs=[out, ghost], outputs=[new]))
    graph.outputs[0] = new


def unknown_op(graph, options):
    graph.nodes[0].op = "NotAnOnnxOp"


@hookimpl
def surgeon_passes():
    tags = [RewritePass(name=f"tag_{t}", doc="Appends an Identity.", run=append_identity(t)) for t in "abc"]
    return tags + [
        RewritePass(name="raises", doc="Raises.", run=raise_error),
        RewritePass(name="dangles", doc="Reads a tensor nothing produces.", run=read_ghost),
        RewritePass(name="unknown_op", doc="Makes an op the checker refuses.", run=unknown_op),
    ]
"""


@pytest.fixture
def passes(write_plugin):
    return write_plugin("test_passes", PASSES)


def run(source, out, **kwargs):
    kwargs.setdefault("formats", ["onnx"])
    return surgeon.run(source, out, **kwargs)


@pytest.mark.parametrize("order", [["tag_c", "tag_a", "tag_b"], ["tag_b", "tag_c", "tag_a"]])
def test_passes_run_in_the_order_given(tiny_path, tmp_path, passes, order):
    report = run(tiny_path, tmp_path / "out", plugins=order, plugin_paths=[passes])
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    chain = [node.name for node in model.graph.node if node.op_type == "Identity"]
    assert chain == order
    assert [record["name"] for record in report["plugins"]] == order
    assert all(record["nodes_added"] == 1 and record["nodes_removed"] == 0 for record in report["plugins"])


@pytest.mark.parametrize(("plugin", "message"), [
    ("raises", "plugin 'raises': the pass failed: ValueError: bad axis"),
    ("dangles", "plugin 'dangles': left an invalid graph: node 'dangling' reads 'ghost', which nothing produces"),
    ("unknown_op", "plugin 'unknown_op': left a graph that fails the ONNX checks"),
])
def test_a_failing_pass_is_named_and_nothing_is_written(tiny_path, tmp_path, passes, plugin, message):
    out = tmp_path / "out"
    with pytest.raises(PluginError) as error:
        run(tiny_path, out, plugins=["tag_a", plugin, "tag_b"], plugin_paths=[passes])
    assert message in str(error.value)
    assert error.value.plugin == plugin
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_passes.py", "tiny.onnx"]


def test_unknown_plugin_is_refused_before_any_work(tiny_path, tmp_path):
    with pytest.raises(UsageError, match="unknown rewrite plugin 'no_such_fix'; installed: .*rename_outputs"):
        run(tiny_path, tmp_path / "out", plugins=["no_such_fix"])
    assert not (tmp_path / "out").exists()


def test_options_for_an_unknown_plugin_are_refused(tiny_path, tmp_path):
    with pytest.raises(UsageError, match="options given for unknown plugin 'renam_outputs'"):
        run(tiny_path, tmp_path / "out", options={"renam_outputs": {"names": "a:b"}})


def test_non_empty_output_is_refused_and_kept_unless_forced(tiny_path, tmp_path):
    out = tmp_path / "out"
    run(tiny_path, out, formats=["onnx"])
    (out / "notes.txt").write_text("a previous output, with a note")
    with pytest.raises(UsageError, match="is not empty"):
        run(tiny_path, out)
    assert (out / "notes.txt").exists()
    run(tiny_path, out, force=True, formats=["onnx"])
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]


def test_report_and_rewritten_model(tiny_path, tmp_path, tiny_model):
    out = tmp_path / "out"
    report = run(tiny_path, out, plugins=["rename_outputs"], options={"rename_outputs": {"names": "x:images"}},
                 batch_sizes=[1, 3])
    assert json.loads((out / "report.json").read_text()) == report
    (record,) = report["plugins"]
    assert record["renamed"] == {"x": "images", "add_17": "output_0"}
    assert record["options"]["names"] == {"x": "images"}
    assert {(row["stage"], row["batch"], row["check"]) for row in report["parity"]} == {
        ("onnx", 1, "vs reference"), ("onnx", 3, "vs reference"), ("onnx", 3, "per-sample")}
    assert all(row["ok"] for row in report["parity"])
    assert set(report["seconds"]) >= {"load", "rewrite", "write_onnx", "verify", "total"}
    rewritten = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in rewritten.graph.input] == ["images"]
    x = __import__("numpy").ones((2, 4), "float32")
    assert (run_onnx(rewritten, [x])[0] == run_onnx(tiny_model, [x])[0]).all()


def test_a_verification_failure_names_stage_and_batch(tiny_path, tmp_path, write_plugin):
    plugin = write_plugin("wrong", """
        from surgeon import RewritePass, hookimpl

        def swap_relu(graph, options):
            graph.nodes[0].op = "Sigmoid"

        @hookimpl
        def surgeon_passes():
            return [RewritePass(name="wrong", doc="Changes the meaning.", run=swap_relu)]
    """)
    with pytest.raises(surgeon.SurgeonError, match="stage 'onnx' at batch size 1 .* differs from the reference"):
        run(tiny_path, tmp_path / "out", plugins=["wrong"], plugin_paths=[plugin])
    assert not (tmp_path / "out").exists()
