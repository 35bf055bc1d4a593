"""The Triton model repository writer, checked with Triton's own ModelConfig protobuf."""

import filecmp
import json

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import surgeon
from surgeon.saved_model_info import read_meta_graph, signatures
from surgeon.testing import model_from_text

TWO_OUTPUTS = """
<ir_version: 8, opset_import: ["" : 13]>
two (float[N, 3, 4] pixels, int64[N, 2] ids) => (float[N, 3] features, float[N] score)
<int64[1] axes = {1}>
{
    features = ReduceMean <axes = [2], keepdims = 0> (pixels)
    total = ReduceSum <keepdims = 0> (features, axes)
    ids_float = Cast <to = 1> (ids)
    id_total = ReduceSum <keepdims = 0> (ids_float, axes)
    score = Sub(id_total, total)
}
"""


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "two.onnx"
    onnx.save(model_from_text(TWO_OUTPUTS), str(path))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    path = tmp_path_factory.mktemp("repository")
    return path


@pytest.fixture(scope="module")
def first_run(model_path, repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    options = {"triton": {"max_batch_size": 16, "dynamic_batching": True, "preferred_batch_sizes": [4, 8],
                          "instance_kind": "cpu", "instance_count": 2, "repository": str(repository)}}
    report = surgeon.run(model_path, out, formats=["saved_model", "triton"], options=options, batch_sizes=[1, 2])
    return out, report


def test_layout(first_run, repository):
    out, report = first_run
    triton = out / "triton"
    assert sorted(p.name for p in triton.iterdir()) == ["two", "two_onnx"]
    assert (triton / "two" / "1" / "model.savedmodel" / "saved_model.pb").is_file()
    assert (triton / "two_onnx" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert report["triton_published"] == [str(repository / "two" / "1"), str(repository / "two_onnx" / "1")]
    assert json.loads((out / "report.json").read_text())["triton_published"] == report["triton_published"]


def test_configs_parse_and_match_the_saved_model_signature_and_the_onnx_model(first_run):
    out, _ = first_run
    saved = parse(out / "triton" / "two" / "config.pbtxt")
    ort = parse(out / "triton" / "two_onnx" / "config.pbtxt")
    assert saved.platform == "tensorflow_savedmodel" and ort.platform == "onnxruntime_onnx"
    assert saved.max_batch_size == ort.max_batch_size == 16
    assert list(saved.input) == list(ort.input) and list(saved.output) == list(ort.output)
    signature = signatures(read_meta_graph(out / "triton" / "two" / "1" / "model.savedmodel"))["serving_default"]
    types = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}
    for config_tensors, signature_tensors in ((saved.input, signature["inputs"]), (saved.output, signature["outputs"])):
        by_name = {tensor.name: tensor for tensor in config_tensors}
        assert set(by_name) == {tensor["name"] for tensor in signature_tensors}
        for tensor in signature_tensors:
            config_tensor = by_name[tensor["name"]]
            assert config_tensor.data_type == types[tensor["dtype"]]
            expected_dims = [-1 if size is None else size for size in tensor["shape"][1:]]
            assert list(config_tensor.dims) == (expected_dims or [1])
    model = onnx.load(str(out / "model.onnx"))
    assert [t.name for t in saved.input] == [v.name for v in model.graph.input]
    score = next(t for t in saved.output if t.name == "score")
    assert list(score.dims) == [1] and list(score.reshape.shape) == []
    assert list(saved.dynamic_batching.preferred_batch_size) == [4, 8]
    assert saved.instance_group[0].count == 2 and saved.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_publishing_twice_adds_version_2_and_leaves_version_1_untouched(first_run, model_path, repository, tmp_path):
    assert sorted(p.name for p in (repository / "two").iterdir()) == ["1", "config.pbtxt"]
    before = {p.relative_to(repository): p.read_bytes() for p in (repository / "two" / "1").rglob("*") if p.is_file()}
    surgeon.run(model_path, tmp_path / "again", formats=["triton"], options={"triton": {"repository": str(repository)}},
                verify=False)
    assert sorted(p.name for p in (repository / "two").iterdir()) == ["1", "2", "config.pbtxt"]
    assert sorted(p.name for p in (repository / "two_onnx").iterdir()) == ["1", "2", "config.pbtxt"]
    after = {p.relative_to(repository): p.read_bytes() for p in (repository / "two" / "1").rglob("*") if p.is_file()}
    assert after == before
    assert filecmp.cmp(repository / "two_onnx" / "2" / "model.onnx", tmp_path / "again" / "model.onnx", shallow=False)
    assert not [p for p in repository.rglob(".surgeon-*")]


def test_an_existing_version_is_never_overwritten(first_run, model_path, repository, tmp_path):
    with pytest.raises(surgeon.SurgeonError, match="exists; versions are never overwritten"):
        surgeon.run(model_path, tmp_path / "out", formats=["triton"], verify=False,
                    options={"triton": {"repository": str(repository), "version": 1, "onnx": False}})
    assert (tmp_path / "out" / "triton" / "two" / "1").is_dir()


def test_a_fixed_batch_gives_max_batch_size_0_and_full_dims(tmp_path):
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        fixed (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }
    """)
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    surgeon.run(path, tmp_path / "out", formats=["triton"], options={"triton": {"name": "relu", "onnx": False}},
                verify=False)
    config = parse(tmp_path / "out" / "triton" / "relu" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]
    assert not (tmp_path / "out" / "triton" / "relu_onnx").exists()


@pytest.mark.parametrize(("source", "name"), [("m.onnx", "m"), ("dir/net.py:build", "build"),
                                              ("example:ct-position", "ct_position"), ("pkg.mod:make-net", "make_net")])
def test_default_names(source, name):
    from surgeon_plugins.triton import default_name

    assert default_name(source) == name
