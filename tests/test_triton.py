"""The Triton model repository writer, checked with Triton's own ModelConfig protobuf."""

import filecmp
import json
import logging
import shlex

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import surgeon
from surgeon.options import build
from surgeon.saved_model_info import read_meta_graph, signatures
from surgeon.testing import model_from_text
from surgeon_plugins.writers.triton import TritonOptions, config_text, perf_analyzer_command, serving_commands

FIXED = """
<ir_version: 8, opset_import: ["" : 13]>
fixed (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }
"""
KIND = model_config_pb2.ModelInstanceGroup


def parse(path):
    return parse_text(path.read_text())


def parse_text(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def perf_arguments(command):
    """perf_analyzer's options: {flag: [values]}, each flag in the order given."""
    words = shlex.split(command)
    assert words[0] == "perf_analyzer"
    arguments = {}
    for flag, value in zip(words[1::2], words[2::2]):
        arguments.setdefault(flag, []).append(value)
    assert len(words) % 2 == 1, words
    return arguments


def snapshot(folder):
    """Every path below ``folder`` with the bytes of each file (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    path = tmp_path_factory.mktemp("repository")
    return path


@pytest.fixture(scope="module")
def first_run(two_path, repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    options = {"triton": {"max_batch_size": 16, "preferred_batch_sizes": [4, 8], "max_queue_delay_us": 100,
                          "instance_kind": "cpu", "instance_count": 2, "repository": str(repository)}}
    # triton before saved_model: the SavedModel both hold is still verified once, as saved_model
    report = surgeon.run(two_path, out, formats=["triton", "saved_model"], options=options, batch_sizes=[1, 2])
    return out, report


@pytest.mark.tf
def test_layout(first_run, repository):
    out, report = first_run
    triton = out / "triton"
    assert sorted(p.name for p in triton.iterdir()) == ["two", "two_onnx"]
    assert (triton / "two" / "1" / "model.savedmodel" / "saved_model.pb").is_file()
    assert (triton / "two_onnx" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert report["triton_published"] == [str(repository / "two" / "1"), str(repository / "two_onnx" / "1")]
    written = json.loads((out / "report.json").read_text())
    assert written["triton_published"] == report["triton_published"]
    assert written["triton_commands"] == report["triton_commands"]
    assert {row["stage"] for row in report["parity"]} == {"onnx", "saved_model"}


@pytest.mark.tf
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
    for config in (saved, ort):
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(group.count, group.kind) for group in config.instance_group] == [(2, KIND.KIND_CPU)]


@pytest.mark.tf
def test_the_run_reports_how_to_serve_and_measure_the_onnx_entry(first_run, repository):
    out, report = first_run
    commands = report["triton_commands"]
    assert commands["model"] == "two_onnx" and commands["release"] == "26.07"
    docker = shlex.split(commands["docker"])
    assert docker[:3] == ["docker", "run", "--rm"] and "--gpus=all" not in docker  # instance_kind cpu
    assert " ".join(docker).count("-p 800") == 3 and {"8000:8000", "8001:8001", "8002:8002"} <= set(docker)
    assert docker[docker.index("-v") + 1] == f"{repository.resolve()}:/models"  # the repository it was published to
    image = docker.index("nvcr.io/nvidia/tritonserver:26.07-py3")
    # a current Triton has no TensorFlow backend: the ONNX entry is loaded alone, or the SavedModel one stops it
    assert docker[image + 1:] == ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit",
                                  "--load-model=two_onnx"]

    arguments = perf_arguments(commands["perf_analyzer"])
    assert arguments["-m"] == ["two_onnx"] and arguments["-u"] == ["localhost:8001"] and arguments["-i"] == ["grpc"]
    assert arguments["--concurrency-range"] == ["1:4"]
    assert arguments["-b"] == ["2"]  # the largest batch size verified
    config = parse(repository / "two_onnx" / "config.pbtxt")
    shapes = dict(shape.split(":") for shape in arguments["--shape"])
    assert list(shapes) == [tensor.name for tensor in config.input] == ["pixels", "ids"]
    assert shapes == {tensor.name: ",".join(map(str, tensor.dims)) for tensor in config.input}
    assert shapes == {"pixels": "3,4", "ids": "2"}


@pytest.mark.tf
def test_the_commands_are_the_last_lines_the_run_logs(two_path, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="surgeon")
    report = surgeon.run(two_path, tmp_path / "out", formats=["triton"], verify=False)
    lines = [record.getMessage() for record in caplog.records if record.name == "surgeon"]
    commands = report["triton_commands"]
    assert lines[-4].startswith("triton: serve and measure two_onnx with Triton 26.07 (")
    assert lines[-3:] == [f"  {commands['docker']}", f"  {commands['perf_analyzer']}",
                          "  (perf_analyzer is in nvcr.io/nvidia/tritonserver:26.07-py3-sdk)"]
    assert f"-v {(tmp_path / 'out' / 'triton').resolve()}:/models" in commands["docker"]  # nothing published
    assert "--gpus=all" in commands["docker"]  # KIND_AUTO: a GPU when there is one
    assert perf_arguments(commands["perf_analyzer"])["-b"] == ["1"]  # nothing verified


def test_default_configs_batch_dynamically_on_an_automatic_instance_group(two_model):
    for kind in ("savedmodel", "onnx"):
        config = parse_text(config_text(two_model, "two", kind, TritonOptions()))
        assert config.max_batch_size == 8
        assert config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size
        assert [(group.count, group.kind) for group in config.instance_group] == [(0, KIND.KIND_AUTO)]

    off = build("triton", TritonOptions, {"dynamic_batching": "false", "instance_kind": "gpu", "instance_count": "3"})
    config = parse_text(config_text(two_model, "two_onnx", "onnx", off))
    assert not config.HasField("dynamic_batching")
    assert [(group.count, group.kind) for group in config.instance_group] == [(3, KIND.KIND_GPU)]

    fixed = parse_text(config_text(model_from_text(FIXED), "fixed", "onnx", TritonOptions()))
    assert fixed.max_batch_size == 0 and not fixed.HasField("dynamic_batching")  # Triton refuses it without a batch


@pytest.mark.parametrize(("values", "message"), [
    ({"max_batch_size": "0"}, "max_batch_size must be at least 1"),
    ({"preferred_batch_sizes": "4,16"}, "preferred_batch_sizes 16"),
    ({"release": "2025.3"}, "not YY.MM"),
    ({"instance_kind": "tpu"}, "must be one of"),
])
def test_wrong_options_are_refused(values, message):
    with pytest.raises(surgeon.UsageError, match=message):
        build("triton", TritonOptions, values)


def test_perf_analyzer_shapes_follow_the_config():
    fixed = perf_arguments(shlex.join(perf_analyzer_command(model_from_text(FIXED), "fixed", 1)))
    assert fixed["--shape"] == ["x:1,4"] and "-b" not in fixed  # the batch is in the shape
    sequence = model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        seq (int64[N, T] tokens, float[N] scale) => (float[N, T] y) {
            t = Cast <to = 1> (tokens)
            y = Mul(t, scale)
        }
    """)
    arguments = perf_arguments(shlex.join(perf_analyzer_command(sequence, "seq_onnx", 3)))
    # a symbolic dim gets the size verification used; a per-sample scalar is dims [1]
    assert arguments["--shape"] == ["tokens:4", "scale:1"] and arguments["-b"] == ["3"]


def test_the_release_decides_which_entries_the_docker_command_loads(two_model, tmp_path):
    old = serving_commands(two_model, "two", TritonOptions(release="25.02"), tmp_path, 1)
    assert "nvcr.io/nvidia/tritonserver:25.02-py3" in old["docker"] and "--load-model" not in old["docker"]
    assert old["model"] == "two_onnx"
    savedmodel_only = serving_commands(two_model, "two", TritonOptions(onnx=False), tmp_path, 1)
    assert savedmodel_only["release"] == "25.02" and savedmodel_only["model"] == "two"
    assert "--load-model" not in savedmodel_only["docker"]
    assert perf_arguments(savedmodel_only["perf_analyzer"])["-m"] == ["two"]


@pytest.mark.tf
def test_a_triton_only_run_verifies_the_saved_model_of_its_entry_in_a_fresh_process(two_path, tmp_path, cli):
    out = tmp_path / "out"
    result = cli("run", two_path, "-o", out, "--format", "triton", "--batch-sizes", "1,2",
                 "--set", "triton.max_batch_size=4")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert not (out / "saved_model").exists()
    rows = [row for row in report["parity"] if row["stage"] == "triton"]
    assert {(row["batch"], row["check"]) for row in rows} == {(1, "vs reference"), (2, "vs reference"),
                                                              (2, "per-sample")}
    assert all(row["ok"] for row in rows)
    for name in ("two", "two_onnx"):
        assert parse(out / "triton" / name / "config.pbtxt").max_batch_size == 4
    lines = result.stderr.splitlines()
    assert lines[-4].startswith("triton: serve and measure two_onnx with Triton 26.07 (")
    assert lines[-2].strip() == report["triton_commands"]["perf_analyzer"]
    assert perf_arguments(lines[-2].strip())["-b"] == ["2"]
    assert result.stdout.startswith(f"surgeon: wrote {out}")


@pytest.mark.tf
def test_publishing_twice_adds_version_2_and_leaves_version_1_untouched(first_run, two_path, repository, tmp_path):
    assert sorted(p.name for p in (repository / "two").iterdir()) == ["1", "config.pbtxt"]
    before = {p.relative_to(repository): p.read_bytes() for p in (repository / "two" / "1").rglob("*") if p.is_file()}
    surgeon.run(two_path, tmp_path / "again", formats=["triton"], options={"triton": {"repository": str(repository)}},
                verify=False)
    assert sorted(p.name for p in (repository / "two").iterdir()) == ["1", "2", "config.pbtxt"]
    assert sorted(p.name for p in (repository / "two_onnx").iterdir()) == ["1", "2", "config.pbtxt"]
    after = {p.relative_to(repository): p.read_bytes() for p in (repository / "two" / "1").rglob("*") if p.is_file()}
    assert after == before
    assert filecmp.cmp(repository / "two_onnx" / "2" / "model.onnx", tmp_path / "again" / "model.onnx", shallow=False)
    assert not [p for p in repository.rglob(".surgeon-*")]


@pytest.mark.tf
def test_an_existing_version_is_never_overwritten(first_run, two_path, repository, tmp_path):
    with pytest.raises(surgeon.SurgeonError, match="exists; versions are never overwritten"):
        surgeon.run(two_path, tmp_path / "out", formats=["triton"], verify=False,
                    options={"triton": {"repository": str(repository), "version": 1, "onnx": False}})
    assert (tmp_path / "out" / "triton" / "two" / "1").is_dir()


def _onnx_entry_is_a_file(repository):
    (repository / "two_onnx").write_text("not a model folder\n")


def _onnx_config_is_a_folder(repository):
    (repository / "two_onnx" / "config.pbtxt").mkdir(parents=True)
    (repository / "two_onnx" / "config.pbtxt" / "keep").write_text("a folder where config.pbtxt must go\n")


@pytest.mark.parametrize("existing_model", [True, False], ids=["existing-model", "new-model"])
@pytest.mark.parametrize(("break_onnx_entry", "message"), [
    (_onnx_entry_is_a_file, "two_onnx is not a folder"),  # refused before anything is staged
    (_onnx_config_is_a_folder, "publishing failed: Is a directory"),  # fails after two/ was renamed into place
], ids=["file-for-folder", "folder-for-file"])
@pytest.mark.tf
def test_publishing_is_all_or_nothing_across_both_entries(two_path, tmp_path, break_onnx_entry, message,
                                                          existing_model):
    repository = tmp_path / "repository"
    repository.mkdir()
    if existing_model:
        (repository / "two" / "1").mkdir(parents=True)
        (repository / "two" / "1" / "model.savedmodel").write_text("version 1\n")
        (repository / "two" / "config.pbtxt").write_text('name: "two"\n')
    break_onnx_entry(repository)
    before = snapshot(repository)
    with pytest.raises(surgeon.SurgeonError, match=message) as raised:
        surgeon.run(two_path, tmp_path / "out", formats=["triton"], verify=False,
                    options={"triton": {"repository": str(repository)}})
    assert snapshot(repository) == before
    assert "could not take back" not in str(raised.value)
    assert (tmp_path / "out" / "triton" / "two_onnx" / "1" / "model.onnx").is_file()  # OUT itself is complete


@pytest.mark.tf
def test_a_fixed_batch_gives_max_batch_size_0_and_full_dims(tmp_path):
    path = tmp_path / "fixed.onnx"
    onnx.save(model_from_text(FIXED), str(path))
    report = surgeon.run(path, tmp_path / "out", formats=["triton"],
                         options={"triton": {"name": "relu", "onnx": False}}, verify=False)
    config = parse(tmp_path / "out" / "triton" / "relu" / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]
    assert not (tmp_path / "out" / "triton" / "relu_onnx").exists()
    assert report["triton_commands"]["release"] == "25.02"  # the SavedModel entry alone: the last TensorFlow release


@pytest.mark.parametrize(("source", "name"), [("m.onnx", "m"), ("dir/net.py:build", "build"),
                                              ("example:ct-position", "ct_position"), ("pkg.mod:make-net", "make_net")])
def test_default_names(source, name):
    from surgeon_plugins.writers.triton import default_name

    assert default_name(source) == name
