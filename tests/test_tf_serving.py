"""The TF Serving writer: the model folder, publishing, warm-up records and the example request.

The warm-up records are parsed back with TensorFlow Serving's own protos (the
``tensorflow-serving-api`` package, test-only) and replayed through the
SavedModel's serving signature in a fresh process, against onnxruntime on
OUT/model.onnx. TF Serving itself cannot run here.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import textwrap
from importlib import metadata

import numpy as np
import onnx
import onnxruntime
import pytest
from google.protobuf import text_format

import surgeon
from surgeon.example_request import request_body, request_commands
from surgeon.options import build
from surgeon.saved_model_info import describe, format_description, read_meta_graph, signatures
from surgeon.serving import run_in_fresh_process
from surgeon.stack import minor_version
from surgeon.feeds import random_feed
from surgeon_plugins.writers.tf_serving import TfServingOptions, prediction_log

TENSORFLOW = metadata.version("tensorflow")
WARMUP = ("assets.extra", "tf_serving_warmup_requests")
NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64}


def serving_apis():
    """TF Serving's protos. The default stack's test extra installs them; on the TensorFlow 2.15 stack (installed
    without the extra) tensorflow-serving-api 2.15.1 may be missing, and only there the tests that need it skip."""
    if minor_version(TENSORFLOW) == "2.15":
        pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2",
                            reason="tensorflow-serving-api is not installed in this TensorFlow 2.15 environment "
                                   "(pip install -c constraints-tf2.15.txt tensorflow-serving-api==2.15.1)")
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    from tensorflow_serving.config import model_server_config_pb2

    return prediction_log_pb2, predict_pb2, model_pb2, model_server_config_pb2


def read_records(path):
    """The records of a TFRecord file, read by TensorFlow."""
    import tensorflow as tf

    return [record.numpy() for record in tf.data.TFRecordDataset(str(path))]


def snapshot(folder):
    """Every path below ``folder`` with the bytes of each file (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def body_of(commands, tmp_path):
    """The JSON body the example request commands send: inline after ``-d``, or what ``python3 -c`` writes."""
    words = shlex.split(commands[-1])
    assert words[0] == "curl" and words[-1].startswith("http://localhost:8501/v1/models/"), words
    data = words[words.index("-d") + 1]
    if not data.startswith("@"):
        return json.loads(data)
    python = shlex.split(commands[0])
    assert python[:2] == ["python3", "-c"] and len(python) == 3
    subprocess.run([sys.executable, "-c", python[2]], cwd=tmp_path, check=True)
    return json.loads((tmp_path / data[1:]).read_text())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A model base path that does not exist yet (its parent does): the first run creates it."""
    return tmp_path_factory.mktemp("served") / "two"


@pytest.fixture(scope="module")
def first_run(two_path, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    # tf_serving alone: verification runs its version folder in a fresh process
    report = surgeon.run(two_path, out, formats=["tf_serving"], batch_sizes=[1, 2],
                         options={"tf_serving": {"base": str(base)}})
    return out, report


@pytest.mark.tf
def test_layout_and_a_fresh_base(first_run, base):
    out, report = first_run
    root = out / "tf_serving"
    assert sorted(p.name for p in root.iterdir()) == ["models.config", "two"]
    version = root / "two" / "1"
    assert sorted(p.name for p in (root / "two").iterdir()) == ["1"]
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / "assets.extra" / "surgeon.json").is_file()  # the stack record is kept beside the warm-up
    assert (version.joinpath(*WARMUP)).is_file()
    assert {row["stage"] for row in report["parity"]} == {"onnx", "tf_serving"}
    assert all(row["ok"] for row in report["parity"])
    # published: the base path was created, holding version 1 and nothing else
    assert sorted(p.name for p in base.iterdir()) == ["1"]
    assert snapshot(base / "1") == snapshot(version)
    assert report["tf_serving_published"] == str(base / "1")
    written = json.loads((out / "report.json").read_text())
    assert written["tf_serving_published"] == report["tf_serving_published"]
    assert written["tf_serving_commands"] == report["tf_serving_commands"]
    assert written["tf_serving_warmup"] == {"file": "assets.extra/tf_serving_warmup_requests", "batch_sizes": [1, 2]}


@pytest.mark.tf
def test_models_config_parses_as_a_model_server_config(first_run):
    out, _ = first_run
    *_, model_server_config_pb2 = serving_apis()
    config = text_format.Parse((out / "tf_serving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    [entry] = config.model_config_list.config
    assert entry.name == "two" and entry.model_platform == "tensorflow"
    # as the docker command mounts OUT/tf_serving: /models/two is OUT/tf_serving/two, the model folder
    assert entry.base_path == "/models/two" and (out / "tf_serving" / "two").is_dir()


@pytest.mark.tf
def test_warmup_records_parse_with_tf_serving_protos_and_replay_through_the_signature(first_run, tmp_path):
    out, _ = first_run
    prediction_log_pb2, *_ = serving_apis()
    import tensorflow as tf

    version = out / "tf_serving" / "two" / "1"
    model = onnx.load(str(out / "model.onnx"))
    input_names = [value.name for value in model.graph.input]
    output_names = [value.name for value in model.graph.output]
    records = [prediction_log_pb2.PredictionLog.FromString(record)
               for record in read_records(version.joinpath(*WARMUP))]
    assert len(records) == 2  # one per verified batch size
    feeds = []
    for size, record in zip((1, 2), records):
        assert record.WhichOneof("log_type") == "predict_log"
        request = record.predict_log.request
        assert request.model_spec.name == "two" and request.model_spec.signature_name == "serving_default"
        assert sorted(request.inputs) == sorted(input_names)
        feed = [tf.make_ndarray(request.inputs[name]) for name in input_names]
        for array, expected in zip(feed, random_feed(model, size)):  # the inputs verification used
            assert array.dtype == expected.dtype and np.array_equal(array, expected)
        feeds.append(feed)

    # and the example request inspect prints, converted as TF Serving converts its JSON to the signature's dtypes
    info = describe(version)
    body = body_of(info["example_request"]["commands"], tmp_path)
    signature = info["signatures"]["serving_default"]
    dtypes = {tensor["name"]: NUMPY_DTYPES[tensor["dtype"]] for tensor in signature["inputs"]}
    [instance] = body["instances"]
    feeds.append([np.asarray(instance[name], dtype=dtypes[name])[None] for name in input_names])

    served = run_in_fresh_process(version, feeds, input_names, output_names)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for feed, got in zip(feeds, served):
        assert not isinstance(got, str), got
        expected = session.run(output_names, dict(zip(input_names, feed)))
        for actual, want in zip(got, expected):
            np.testing.assert_allclose(actual, want, rtol=1e-5, atol=1e-5)
    assert [len(result[0]) for result in served] == [1, 2, 1]


@pytest.mark.parametrize("inputs", [
    {"pixels": np.zeros((1, 3, 4), np.float32), "ids": np.arange(2, dtype=np.int64)[None]},
    {"b": np.array([True, False]), "a": np.array(3.5, np.float64), "é": np.array([b"x", b""], dtype=object)},
], ids=["two-inputs", "scalar-bool-string-unicode-name"])
@pytest.mark.tf
def test_records_are_the_bytes_tensorflow_serving_api_writes(inputs):
    prediction_log_pb2, predict_pb2, model_pb2, _ = serving_apis()
    import tensorflow as tf

    tensors = {name: tf.make_tensor_proto(array) for name, array in inputs.items()}
    spec = model_pb2.ModelSpec(name="two", signature_name="serving_default")
    expected = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=predict_pb2.PredictRequest(model_spec=spec)))
    for name, tensor in tensors.items():
        expected.predict_log.request.inputs[name].CopyFrom(tensor)
    written = prediction_log("two", {name: tensor.SerializeToString() for name, tensor in tensors.items()})
    assert written == expected.SerializeToString(deterministic=True)
    assert prediction_log_pb2.PredictionLog.FromString(written) == expected


@pytest.mark.tf
def test_the_run_ends_with_where_the_servable_is_and_how_to_serve_it(first_run, two_path, base, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="surgeon")
    out = tmp_path / "out"
    # base now holds version 1: the next free one is 2, and version 1 stays as it was
    before = snapshot(base / "1")
    report = surgeon.run(two_path, out, formats=["saved_model", "tf_serving"], verify=False,
                         options={"tf_serving": {"base": str(base)}})
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"] and snapshot(base / "1") == before
    assert not list(base.glob(".surgeon-*"))
    # with verification off, the warm-up still covers the batch sizes verification would check
    assert len(read_records(out / "tf_serving" / "two" / "1" / WARMUP[0] / WARMUP[1])) == 2
    assert report["tf_serving_warmup"]["batch_sizes"] == [1, 3]
    assert not (out / "saved_model").joinpath(*WARMUP).exists()  # OUT/saved_model is left as converted

    commands = report["tf_serving_commands"]
    assert commands["model"] == "two" and commands["version"] == 2
    assert commands["servable"] == str((base / "2").resolve()) == str(base.resolve() / "2")
    assert report["tf_serving_published"] == str(base / "2")
    docker = shlex.split(commands["docker"])
    release = f"{minor_version(TENSORFLOW)}.0"
    assert docker == ["docker", "run", "--rm", "-p", "8500:8500", "-p", "8501:8501",
                      "-v", f"{base.resolve()}:/models/two", "-e", "MODEL_NAME=two", f"tensorflow/serving:{release}"]
    [curl] = commands["request"]
    assert shlex.split(curl)[-1] == "http://localhost:8501/v1/models/two:predict"

    lines = [record.getMessage() for record in caplog.records if record.name == "surgeon"]
    assert lines[-3].startswith(f"tf_serving: serve two version 2 ({commands['servable']}) with TF Serving {release}")
    assert lines[-2:] == [f"  {commands['docker']}", f"  {curl}"]

    # inspect names OUT/saved_model after the run that wrote it, and prints the same request
    printed = subprocess.run([sys.executable, "-m", "surgeon", "inspect", str(out / "saved_model")],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed[-1] == f"  {curl}"
    assert printed[-2].startswith('example request to TF Serving\'s REST API (model two, "instances" form, batch 1')


@pytest.mark.tf
def test_warmup_false_writes_none_and_an_explicit_version_is_used(two_path, tmp_path):
    out = tmp_path / "out"
    report = surgeon.run(two_path, out, formats=["tf_serving"], verify=False,
                         options={"tf_serving": {"warmup": "false", "version": "5", "name": "scorer"}})
    version = out / "tf_serving" / "scorer" / "5"
    assert (version / "saved_model.pb").is_file()
    assert not version.joinpath(*WARMUP).exists()
    assert sorted(p.name for p in (version / "assets.extra").iterdir()) == ["surgeon.json"]
    assert "tf_serving_warmup" not in report and "tf_serving_published" not in report
    commands = report["tf_serving_commands"]
    assert f"-v {(out / 'tf_serving').resolve()}:/models -e MODEL_NAME=scorer" in commands["docker"]
    assert 'name: "scorer"' in (out / "tf_serving" / "models.config").read_text()


@pytest.mark.tf
def test_existing_versions_are_kept_and_the_next_free_one_is_chosen(first_run, tmp_path):
    from surgeon_plugins.writers.tf_serving import publish_version

    out, _ = first_run
    version = out / "tf_serving" / "two" / "1"
    base = tmp_path / "two"
    for name in ("1", "7", "notes", ".hidden-9"):  # only integer folders are versions
        (base / name).mkdir(parents=True)
        (base / name / "keep").write_text(name)
    (base / "12").write_text("a file is not a version\n")
    before = snapshot(base)
    assert publish_version(version, base) == base / "8"
    assert snapshot(base / "8") == snapshot(version)
    after = snapshot(base)
    assert {key: value for key, value in after.items() if not key.startswith("8")} == before

    with pytest.raises(surgeon.SurgeonError, match="exists; versions are never overwritten"):
        publish_version(version, base, version=7)
    with pytest.raises(surgeon.SurgeonError, match="exists; versions are never overwritten"):
        publish_version(version, base, version=12)
    with pytest.raises(surgeon.SurgeonError, match="holds a saved_model.pb: that is a version folder"):
        publish_version(version, base / "8")
    with pytest.raises(surgeon.SurgeonError, match="is not a folder; nothing was published"):
        publish_version(version, base / "12")
    with pytest.raises(surgeon.SurgeonError, match="no such folder, nor its parent"):
        publish_version(version, tmp_path / "missing" / "two")
    assert snapshot(base) == after


@pytest.mark.tf
def test_a_failed_run_publishes_nothing(two_path, base, tmp_path):
    before = snapshot(base)
    # every output is out of a negative tolerance: verification fails after tf_serving was written
    with pytest.raises(surgeon.SurgeonError, match="verification failed"):
        surgeon.run(two_path, tmp_path / "out", formats=["tf_serving"], atol=-1.0,
                    options={"tf_serving": {"base": str(base)}})
    assert snapshot(base) == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", [True, False], ids=["existing-base", "new-base"])
@pytest.mark.tf
def test_a_publish_that_fails_while_copying_leaves_the_base_as_it_was(first_run, tmp_path, existing):
    """The disk fills up mid-copy (a file-size limit makes the writes fail, as a full disk does)."""
    out, _ = first_run
    base = tmp_path / "two"
    if existing:
        (base / "1").mkdir(parents=True)
        (base / "1" / "saved_model.pb").write_bytes(b"version 1")
    before = snapshot(tmp_path)
    script = textwrap.dedent("""
        import resource, signal, sys
        from pathlib import Path
        from surgeon import SurgeonError
        from surgeon_plugins.writers.tf_serving import publish_version

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
        try:
            publish_version(Path(sys.argv[1]), Path(sys.argv[2]))
        except SurgeonError as error:
            print(error)
            sys.exit(1)
    """)
    version = out / "tf_serving" / "two" / "1"
    assert (version / "saved_model.pb").stat().st_size > 1024 > (version / "fingerprint.pb").stat().st_size
    result = subprocess.run([sys.executable, "-c", script, str(version), str(base)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"tf_serving.base {base}: publishing failed: File too large (copying ")
    assert message.endswith("the base path was left as it was")
    assert snapshot(tmp_path) == before


@pytest.mark.tf
def test_the_example_request_matches_the_signature(first_run, tmp_path):
    out, _ = first_run
    version = out / "tf_serving" / "two" / "1"
    signature = signatures(read_meta_graph(version))["serving_default"]
    result = subprocess.run([sys.executable, "-m", "surgeon", "inspect", str(version)], capture_output=True,
                            text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[-2] == ('example request to TF Serving\'s REST API (model two, "instances" form, batch 1, zeros: '
                         'ids int64 [1, 2], pixels float32 [1, 3, 4]):')
    body = body_of([lines[-1].strip()], tmp_path)
    assert body == request_body(signature)
    assert body["signature_name"] == "serving_default"
    [instance] = body["instances"]
    assert sorted(instance) == sorted(tensor["name"] for tensor in signature["inputs"]) == ["ids", "pixels"]
    for tensor in signature["inputs"]:
        value = np.asarray(instance[tensor["name"]])
        assert [1, *value.shape] == [1 if size is None else size for size in tensor["shape"]]
        kind = {"float32": float, "int64": int}[tensor["dtype"]]
        assert {type(item) for item in value.ravel().tolist()} == {kind} and not value.any()

    # a body too big to inline is written to request.json by the first command, the same body
    commands = request_commands("two", signature, inline_limit=10)
    assert len(commands) == 2 and shlex.split(commands[1])[:3] == ["curl", "-d", "@request.json"]
    assert body_of(commands, tmp_path) == body


def test_a_tensor_without_a_batch_dimension_uses_the_columnar_form(tmp_path):
    signature = {"inputs": [{"name": "scale", "dtype": "float64", "shape": []},
                            {"name": "mask", "dtype": "bool", "shape": [2, None]},
                            {"name": "tokens", "dtype": "string", "shape": [None]}]}
    body = request_body(signature)
    assert body == {"signature_name": "serving_default",
                    "inputs": {"scale": 0.0, "mask": [[False] * 4] * 2, "tokens": [""]}}
    assert body_of(request_commands("m", signature, inline_limit=0), tmp_path) == body
    assert body_of(request_commands("m", signature), tmp_path) == body
    with pytest.raises(surgeon.SurgeonError, match="unknown rank"):
        request_body({"inputs": [{"name": "x", "dtype": "float32", "shape": None}]})
    text = format_description({**describe_stub(), "example_request": {"problem": "input 'x' has an unknown rank"}})
    assert text.splitlines()[-1] == "example request: none (input 'x' has an unknown rank)"


def describe_stub():
    return {"path": "m", "tags": ["serve"], "tensorflow": "2.21.0", "stack": None, "stack_problem": None,
            "serve_with": None, "signatures": {}, "nodes": 0, "ops": {}, "pyfuncs": [], "bytes": {}}


@pytest.mark.parametrize(("values", "message"), [
    ({"version": "-1"}, "version cannot be negative"),
    ({"name": "a/b"}, "is not a folder name"),
    ({"release": "2.21 gpu"}, "is not a docker tag"),
])
def test_wrong_options_are_refused(values, message):
    with pytest.raises(surgeon.UsageError, match=message):
        build("tf_serving", TfServingOptions, values)
