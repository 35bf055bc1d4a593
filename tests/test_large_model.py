"""Models whose weights do not fit in a protobuf message (2 GiB): weights stay on disk from load to SavedModel.

The fast tests run a small model stored with external data through the same
code, with the sizes that switch it on lowered: the limit above which
OUT/model.onnx is written with its data file (``surgeon.onnx_io``) and the
converter's ``variables_from``. The slow one runs a generated model of
2.2 GB (bench/large_model.py writes it and measures the run).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon
from surgeon import PluginError, RewritePass, onnx_io
from surgeon.graph import constant_value
from surgeon.onnx_io import external_tensors, load_model, tensor_array
from surgeon.rewrite import import_graph, run_passes

BENCH = Path(__file__).parents[1] / "bench" / "large_model.py"


def conv_model(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A Conv, a Flatten and a MatMul, each weight of 1 KiB or more stored in ``folder/weights.bin``."""
    rng = np.random.default_rng(0)
    weights = {"kernel": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
               "dense": rng.standard_normal((16 * 6 * 6, 10)).astype(np.float32) / 24,
               "bias": np.arange(10, dtype=np.float32)}
    nodes = [helper.make_node("Conv", ["x", "kernel"], ["c"], kernel_shape=[3, 3], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "dense"], ["m"], name="dense"),
             helper.make_node("Add", ["m", "bias"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(value, name) for name, value in weights.items()])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path),
                    save_as_external_data=True, location="weights.bin", size_threshold=1024)
    return path, weights


def test_the_graph_round_trip_keeps_weights_on_disk_and_reads_them_when_asked(tmp_path):
    path, weights = conv_model(tmp_path)
    model = load_model(path)
    graph = import_graph(model)
    kernel = graph.tensors()["kernel"]
    np.testing.assert_array_equal(kernel.values, weights["kernel"])  # read from weights.bin, not the working folder
    seen = {}

    def double_the_dense_weights(graph, options):
        dense = graph.tensors()["dense"]
        seen["dense"] = np.array(dense.values)
        dense.values = dense.values * 2  # now held in memory: exported into the message

    double = RewritePass(name="double", doc="Doubles the dense weights.", run=double_the_dense_weights)
    rewritten, _ = run_passes(model, [(double, double.options())])
    np.testing.assert_array_equal(seen["dense"], weights["dense"])
    assert [tensor.name for tensor in external_tensors(rewritten)] == ["kernel"]  # left on disk, as it was
    dense = next(tensor for tensor in rewritten.graph.initializer if tensor.name == "dense")
    np.testing.assert_array_equal(tensor_array(dense), weights["dense"] * 2)
    assert external_tensors(model)[0] is not external_tensors(rewritten)[0]


def test_a_pass_that_only_reads_weights_on_disk_leaves_them_there_and_cannot_change_them_in_place(tmp_path):
    path, weights = conv_model(tmp_path)
    seen = {}

    def read_every_weight(graph, options):
        for name in ("kernel", "dense"):
            seen[name] = constant_value(graph.tensors()[name])

    reader = RewritePass(name="reader", doc="Reads the weights.", run=read_every_weight)
    rewritten, _ = run_passes(load_model(path), [(reader, reader.options())])
    for name in ("kernel", "dense"):
        np.testing.assert_array_equal(seen[name], weights[name])
    assert sorted(tensor.name for tensor in external_tensors(rewritten)) == ["dense", "kernel"]

    def scale_in_place(graph, options):
        graph.tensors()["dense"].values *= 2

    in_place = RewritePass(name="in_place", doc="Scales a weight in place.", run=scale_in_place)
    with pytest.raises(PluginError, match="plugin 'in_place'.*read-only"):
        run_passes(load_model(path), [(in_place, in_place.options())])

def test_a_pass_that_breaks_a_model_with_weights_on_disk_is_named(tmp_path):
    path, _ = conv_model(tmp_path)

    def unknown_op(graph, options):
        graph.nodes[1].op = "NotAnOnnxOp"

    broken = RewritePass(name="breaks", doc="Makes an op the checker refuses.", run=unknown_op)
    with pytest.raises(PluginError, match="plugin 'breaks': left a graph that fails the ONNX checks: .*NotAnOnnxOp"):
        run_passes(load_model(path), [(broken, broken.options())])


def test_a_large_model_is_written_with_its_data_and_verified_from_it(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "INLINE_LIMIT_BYTES", 4096)
    path, weights = conv_model(tmp_path / "source")
    report = surgeon.run(path, tmp_path / "out", plugins=["dynamic_batch"], formats=["onnx"])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.data", "report.json"]
    assert (out / "model.onnx").stat().st_size < 2048
    onnx.checker.check_model(str(out / "model.onnx"))
    written = onnx.load(str(out / "model.onnx"))
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic_batch ran
    for tensor in written.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])
    assert {row["stage"] for row in report["parity"]} == {"onnx"} and all(row["ok"] for row in report["parity"])
    assert report["reference"] == "onnxruntime on the source model"
    assert (tmp_path / "source" / "weights.bin").read_bytes()  # the source is left as it was


def test_without_lowered_limits_a_model_with_external_data_converts_as_before(tmp_path):
    path, _ = conv_model(tmp_path / "source")
    report = surgeon.run(path, tmp_path / "out", formats=["onnx"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "report.json"]
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.tf
def test_large_weights_become_variables_and_the_saved_model_still_matches_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "INLINE_LIMIT_BYTES", 4096)
    path, weights = conv_model(tmp_path / "source")
    report = surgeon.run(path, tmp_path / "out", plugins=["dynamic_batch"],
                         options={"onnx_tf": {"variables_from": 4096}})
    saved_model = tmp_path / "out" / "saved_model"
    assert report["variables"] == {"tensors": 2, "bytes": weights["kernel"].nbytes + weights["dense"].nbytes}
    assert report["layout"]["rewritten"] is False
    assert report["layout"]["why_not"] == "weights saved as variables, which the layout rewrite cannot freeze"
    assert (saved_model / "variables" / "variables.index").is_file()
    assert weights["dense"].nbytes <= (saved_model / "variables" / "variables.data-00000-of-00001").stat().st_size
    pb = (saved_model / "saved_model.pb").read_bytes()
    assert weights["dense"][:4].tobytes() not in pb and weights["kernel"][0, 0, 0].tobytes() not in pb
    # the SavedModel ran in a fresh process through serving_default, against onnxruntime on the source
    stages = {(row["stage"], row["batch"], row["check"]) for row in report["parity"] if row["ok"]}
    assert {("saved_model", 1, "vs reference"), ("saved_model", 3, "vs reference"),
            ("saved_model", 3, "per-sample")} <= stages
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.tf
def test_below_the_threshold_weights_stay_constants_and_the_layout_applies(tmp_path):
    path, _ = conv_model(tmp_path / "source")
    report = surgeon.run(path, tmp_path / "out")
    assert "variables" not in report and report["layout"]["rewritten"] is True
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.slow
@pytest.mark.tf
def test_a_model_of_2_2_gb_converts_and_verifies(tmp_path):
    spec = importlib.util.spec_from_file_location("large_model", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.write_model(tmp_path / "source", 2.2e9)
    assert (tmp_path / "source" / "model.onnx.data").stat().st_size > 2**31
    report = surgeon.run(path, tmp_path / "out", plugins=["dynamic_batch"])
    out = tmp_path / "out"
    assert (out / "model.onnx.data").stat().st_size > 2**31 and (out / "model.onnx").stat().st_size < 4096
    assert report["variables"]["tensors"] == 1 and report["variables"]["bytes"] > 2**31
    assert (out / "saved_model" / "saved_model.pb").stat().st_size < 2**20
    assert {row["stage"] for row in report["parity"]} == {"onnx", "saved_model"}
    assert all(row["ok"] for row in report["parity"])


BIG_LINEAR = """
import torch


def build():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4096, 134277, bias=False)  # 2.2 GB of float32 weights
    with torch.no_grad():
        layer.weight.mul_(0.01)
    return layer
"""


@pytest.mark.slow
@pytest.mark.tf
def test_a_pytorch_model_of_2_2_gb_is_exported_converted_and_checked_against_pytorch(tmp_path):
    (tmp_path / "big.py").write_text(BIG_LINEAR)
    report = surgeon.run(f"{tmp_path / 'big.py'}:build", tmp_path / "out", plugins=["dynamic_batch"],
                         options={"torch": {"input_shapes": ["1,4096"]}})
    out = tmp_path / "out"
    assert report["reference"] == "the PyTorch model"
    assert (out / "model.onnx.data").stat().st_size > 2**31
    assert report["variables"]["bytes"] > 2**31
    assert {row["stage"] for row in report["parity"]} == {"onnx", "saved_model"}
    assert all(row["ok"] for row in report["parity"])

@pytest.mark.tf
def test_the_triton_onnx_entry_carries_the_data_file_and_runs(tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnx_io, "INLINE_LIMIT_BYTES", 4096)
    path, _ = conv_model(tmp_path / "source")
    surgeon.run(path, tmp_path / "out", formats=["triton"])
    entry = next((tmp_path / "out" / "triton").glob("*_onnx")) / "1"
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx", "model.onnx.data"]
    session = onnxruntime.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected[0])


def test_a_frozen_graph_too_large_for_one_message_is_refused_before_tensorflow(tmp_path, monkeypatch):
    from surgeon_plugins.writers import frozen_pb

    monkeypatch.setattr(frozen_pb, "PROTOBUF_LIMIT_BYTES", 4096)
    path, _ = conv_model(tmp_path / "source")
    with pytest.raises(PluginError, match=r"plugin 'frozen_pb': a frozen GraphDef holds every weight in one "
                                          r"protobuf message, which cannot exceed 2 GiB; this model takes 0.00 GiB"):
        surgeon.run(path, tmp_path / "out", formats=["frozen_pb"])
    assert not (tmp_path / "out").exists()


def test_the_bench_never_removes_a_folder_of_the_users_in_its_work_folder(tmp_path):
    """bench/large_model.py --work DIR writes DIR/out through surgeon's --force, which replaces only a previous
    surgeon output: a folder of the user's there is refused, byte for byte as it was, and no result is written."""
    import subprocess
    import sys

    results = BENCH.parent / "results" / "large_model.md"
    before = results.read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    finished = subprocess.run([sys.executable, str(BENCH), "--gb", "0.0001", "--work", str(tmp_path)],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0
    assert "--force will not replace" in finished.stderr + finished.stdout
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert results.read_bytes() == before
