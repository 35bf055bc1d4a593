"""The plugin README.md shows is a real one: it loads by path, rewrites, and keeps the outputs."""

from pathlib import Path

import onnx

import surgeon
from surgeon.testing import assert_idempotent, assert_same_outputs, model_from_text

PLUGIN = Path(__file__).parent.parent / "examples" / "drop_identity.py"
CHAIN = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y, float[N, 4] z)
{
    a = Identity(x)
    b = Relu(a)
    c = Identity(b)
    y = Add(c, a)
    z = Identity(c)
}
"""


def test_readme_plugin_runs_by_path_and_keeps_outputs(tmp_path):
    model = model_from_text(CHAIN)
    source = tmp_path / "chain.onnx"
    onnx.save(model, str(source))
    report = surgeon.run(source, tmp_path / "out", plugins=["drop_identity"], plugin_paths=[PLUGIN],
                         formats=["onnx"], batch_sizes=[1, 3])
    assert report["plugins"][0]["nodes_removed"] == 2
    rewritten = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert [n.op_type for n in rewritten.graph.node] == ["Relu", "Add", "Identity"]
    assert_same_outputs(model, rewritten, batch_sizes=[1, 3, 8])


def test_readme_plugin_is_idempotent_and_detects(tmp_path):
    from surgeon.discovery import discover

    drop = discover([PLUGIN]).passes["drop_identity"]
    assert_idempotent(drop, model_from_text(CHAIN))
    import onnx_graphsurgeon as gs

    assert [f.where for f in drop.detect(gs.import_onnx(model_from_text(CHAIN)), drop.options())] == ["a", "c"]
