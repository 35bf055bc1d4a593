"""Every legal ONNX input and output name converts: inputs TensorFlow cannot take as signature keys get keys it can.

The model below is converted for real (onnx-tf, TensorFlow) without
rename_outputs and served in fresh processes; its outputs are checked against
onnxruntime, and the Triton configs and TF Serving warm-up records against
the keys the signature has.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import surgeon
from surgeon.naming import signature_input_keys
from surgeon.saved_model_info import read_meta_graph, signatures
from surgeon.testing import model_from_text, run_onnx
from surgeon.feeds import random_feed
from surgeon_plugins.writers.triton import TritonOptions, config_text, perf_analyzer_command

INPUTS = ["input.1", "images:0", "enc/in", "my input", "0", "入力", "a.b", "a_b"]
# out.1 mixes every input through its own rows of the weights, so inputs fed to the wrong keys change it
NAMES = f"""
<ir_version: 8, opset_import: ["" : 13]>
names ({", ".join(f'float[N, 2] "{name}"' for name in INPUTS)})
    => (float[N, 3] "out.1", float[N, 2] "出力", float[N, 2] a_b_1)
<float[16, 3] weights = {{{", ".join(str((i % 17 - 8) / 8) for i in range(48))}}}>
{{
    joined = Concat <axis = 1> ({", ".join(f'"{name}"' for name in INPUTS)})
    "out.1" = MatMul(joined, weights)
    "出力" = Sub("入力", "a.b")
    a_b_1 = Relu(a_b)
}}
"""
OUTPUTS = ["out.1", "出力", "a_b_1"]
# a_b keeps its name, and the output a_b_1 has the next one: a.b becomes a_b_2
RENAMED = {"input.1": "input_1", "images:0": "images_0", "enc/in": "enc_in", "my input": "my_input", "0": "input_0",
           "入力": "input", "a.b": "a_b_2"}
KEYS = [RENAMED.get(name, name) for name in INPUTS]


@pytest.fixture(scope="module")
def names_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("names") / "names.onnx"
    onnx.save(model_from_text(NAMES), str(path))
    return path


@pytest.fixture(scope="module")
def converted(names_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    report = surgeon.run(names_path, out, formats=["saved_model", "triton", "tf_serving"], batch_sizes=[1, 2])
    return out, report


def serving_signature(folder):
    return signatures(read_meta_graph(folder))["serving_default"]


@pytest.mark.tf
def test_the_run_takes_every_name_and_reports_the_keys(converted):
    out, report = converted
    assert {row["stage"] for row in report["parity"]} == {"onnx", "saved_model"}  # served in a fresh process
    assert all(row["ok"] for row in report["parity"]), report["parity"]
    assert report["signature_names"] == RENAMED
    assert json.loads((out / "report.json").read_text())["signature_names"] == RENAMED
    signature = serving_signature(out / "saved_model")
    assert sorted(tensor["name"] for tensor in signature["inputs"]) == sorted(KEYS)
    assert sorted(tensor["name"] for tensor in signature["outputs"]) == sorted(OUTPUTS)  # outputs keep their names


@pytest.mark.tf
def test_tensorflow_2_in_a_fresh_process_serves_the_keys_as_onnxruntime_computes(converted):
    """An independent check: TF2's loader and signature call, not surgeon's runner."""
    out, _ = converted
    feed = random_feed(model_from_text(NAMES), 3)
    np.savez(out.parent / "feed.npz", **dict(zip(KEYS, feed)))
    script = f"""
import json, numpy as np, tensorflow as tf
serve = tf.saved_model.load({str(out / "saved_model")!r}).signatures["serving_default"]
feed = np.load({str(out.parent / "feed.npz")!r})
result = serve(**{{key: tf.constant(feed[key]) for key in feed.files}})
np.savez({str(out.parent / "served.npz")!r}, *[result[name].numpy() for name in json.loads({json.dumps(OUTPUTS)!r})])
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    served = np.load(out.parent / "served.npz")
    for index, expected in enumerate(run_onnx(model_from_text(NAMES), feed)):
        np.testing.assert_allclose(served[f"arr_{index}"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.tf
def test_triton_names_the_saved_model_entry_by_the_keys_and_the_onnx_entry_by_the_onnx_names(converted):
    out, _ = converted
    saved, ort = (text_format.Parse((out / "triton" / entry / "config.pbtxt").read_text(),
                                    model_config_pb2.ModelConfig()) for entry in ("names", "names_onnx"))
    assert [tensor.name for tensor in saved.input] == KEYS
    assert [tensor.name for tensor in ort.input] == INPUTS
    assert [tensor.name for tensor in saved.output] == [tensor.name for tensor in ort.output] == OUTPUTS
    signature = serving_signature(out / "triton" / "names" / "1" / "model.savedmodel")
    assert sorted(tensor["name"] for tensor in signature["inputs"]) == sorted(KEYS)
    perf = shlex.split(shlex.join(perf_analyzer_command(model_from_text(NAMES), "names", 1, "savedmodel")))
    assert [perf[i + 1].split(":")[0] for i, word in enumerate(perf) if word == "--shape"] == KEYS


def test_a_triton_config_reads_back_any_onnx_name():
    x, odd = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2]), 'say "hi" \\ 出力'
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], [odd])], "odd", [x],
                                   [onnx.helper.make_tensor_value_info(odd, onnx.TensorProto.FLOAT, ["N", 2])])
    config = text_format.Parse(config_text(onnx.helper.make_model(graph), "odd", "savedmodel", TritonOptions()),
                               model_config_pb2.ModelConfig())
    assert [tensor.name for tensor in config.output] == [odd]


@pytest.mark.tf
def test_tf_serving_warmup_records_and_example_request_use_the_keys(converted):
    out, report = converted
    prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    import tensorflow as tf

    path = out / "tf_serving" / "names" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
               for record in tf.data.TFRecordDataset(str(path))]
    assert len(records) == 2  # batch sizes 1 and 2
    for size, record in zip((1, 2), records):
        inputs = record.predict_log.request.inputs
        assert sorted(inputs) == sorted(KEYS)
        for key, expected in zip(KEYS, random_feed(model_from_text(NAMES), size)):
            np.testing.assert_array_equal(tf.make_ndarray(inputs[key]), expected)
    *_, curl = report["tf_serving_commands"]["request"]
    words = shlex.split(curl)
    [instance] = json.loads(words[words.index("-d") + 1])["instances"]
    assert sorted(instance) == sorted(KEYS)


@pytest.mark.tf
def test_the_keys_are_the_same_on_another_run_and_logged_once(names_path, converted, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="surgeon")
    report = surgeon.run(names_path, tmp_path / "out", verify=False)
    assert report["signature_names"] == converted[1]["signature_names"]
    assert serving_signature(tmp_path / "out" / "saved_model") == serving_signature(converted[0] / "saved_model")
    [line] = [record.getMessage() for record in caplog.records if "signature_names" in record.getMessage()]
    assert "'input.1' as 'input_1'" in line and "'入力' as 'input'" in line and "'a_b' as" not in line


@pytest.mark.tf
def test_safe_names_are_kept_and_nothing_is_renamed(two_path, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="surgeon")
    report = surgeon.run(two_path, tmp_path / "out", verify=False)
    assert report["signature_names"] == {}
    assert [tensor["name"] for tensor in serving_signature(tmp_path / "out" / "saved_model")["inputs"]] == [
        "ids", "pixels"]
    assert not [record for record in caplog.records if "signature_names" in record.getMessage()]


def tensorflow_takes(names: list[str], folder) -> bool:
    """Whether TensorFlow traces a function whose parameters are ``names`` unchanged (onnx-tf finds its inputs by
    them) and saves it as a signature with ``names`` as input keys."""
    import tensorflow as tf

    specs = {name: tf.TensorSpec([None], tf.float32, name=name) for name in names}
    function = tf.function(lambda **inputs: {"total": tf.add_n(list(inputs.values()))}, autograph=False)
    try:
        concrete = function.get_concrete_function(**specs)
        tf.saved_model.save(tf.Module(), str(folder), signatures=concrete)
    except ValueError:  # e.g. 'Got non-flat/non-unique argument names', "'class' is not a valid parameter name"
        return False
    keys = [tensor["name"] for tensor in serving_signature(folder)["inputs"]]
    return sorted(concrete.structured_input_signature[1]) == keys == sorted(names)


@pytest.mark.tf
@pytest.mark.parametrize("names", [["input.1"], ["images:0"], ["enc/in"], ["my input"], ["0"], ["入力"], ["class"],
                                   ["_x"], ["café"], ["X", "x"]])
def test_tensorflow_refuses_or_changes_the_names_and_takes_the_keys(names, tmp_path):
    keys = signature_input_keys(names, [])
    assert not tensorflow_takes(names, tmp_path / "names")
    assert tensorflow_takes(list(keys.values()), tmp_path / "keys")
    kept = [name for name, key in keys.items() if key == name]
    assert kept == (["X"] if names == ["X", "x"] else [])  # the first of two names equal ignoring case keeps it


def test_only_names_tensorflow_refuses_are_changed():
    keys = signature_input_keys(["x", "X", "class", "café.x", "_x", "1st", "ok_Name2", "input"], ["x_1"])
    # ignoring case: x is kept, x_1 an output's, so X gets X_2 and _x then x_3
    assert keys == {"x": "x", "X": "X_2", "class": "class_1", "café.x": "cafe_x", "_x": "x_3", "1st": "input_1st",
                    "ok_Name2": "ok_Name2", "input": "input"}
