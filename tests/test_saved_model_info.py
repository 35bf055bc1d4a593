"""Describing a SavedModel without TensorFlow: signatures, ops, Python callbacks."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from surgeon import SurgeonError
from surgeon.saved_model_info import describe, format_description
from surgeon.testing import model_from_text

TENSORFLOW = metadata.version("tensorflow")

# two inputs of two dtypes, an int64 output
SCORER = """
<ir_version: 8, opset_import: ["" : 13]>
scorer (float[N, 4] features, int64[N, 4] counts) => (float[N, 2] scores, int64[N] best)
<float[4, 2] w = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8}>
{
    as_float = Cast <to = 1> (counts)
    total = Add(features, as_float)
    scores = MatMul(total, w)
    best = ArgMax <axis = 1, keepdims = 0> (scores)
}
"""

# ceil_mode with count_include_pad=0: onnx-tf runs it as a Python callback
CEIL_POOL = """
<ir_version: 8, opset_import: ["" : 13]>
ceil_pool (float[N, 1, 7, 7] x) => (float[N, 1, 4, 4] y)
{
    y = AveragePool <kernel_shape = [2, 2], strides = [2, 2], ceil_mode = 1> (x)
}
"""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """SCORER and CEIL_POOL converted by the real onnx_tf converter: name -> folder."""
    from surgeon_plugins.converters.onnx_tf import OnnxTfOptions, to_saved_model

    folders = {}
    for name, text in (("scorer", SCORER), ("ceil_pool", CEIL_POOL)):
        folders[name] = tmp_path_factory.mktemp(name) / "saved_model"
        to_saved_model(model_from_text(text), OnnxTfOptions(), folders[name])
    return folders


@pytest.mark.tf
def test_signature_names_dtypes_and_shapes(saved_models):
    info = describe(saved_models["scorer"])
    assert info["tags"] == ["serve"]
    assert info["tensorflow"] == TENSORFLOW
    signature = info["signatures"]["serving_default"]
    assert signature["method"] == "tensorflow/serving/predict"
    assert signature["inputs"] == [{"name": "counts", "dtype": "int64", "shape": [None, 4]},
                                   {"name": "features", "dtype": "float32", "shape": [None, 4]}]
    assert signature["outputs"] == [{"name": "best", "dtype": "int64", "shape": [None]},
                                    {"name": "scores", "dtype": "float32", "shape": [None, 2]}]
    assert list(info["signatures"]) == ["serving_default"]


@pytest.mark.tf
def test_ops_are_those_the_serving_signature_runs(saved_models):
    info = describe(saved_models["scorer"])
    assert {"MatMul", "ArgMax", "Cast", "AddV2"} <= set(info["ops"])
    assert "StatefulPartitionedCall" not in info["ops"] and "SaveV2" not in info["ops"]
    assert info["nodes"] == sum(info["ops"].values())
    assert info["pyfuncs"] == []
    assert info["bytes"]["saved_model.pb"] > 0


@pytest.mark.tf
def test_python_callbacks_are_found_in_the_function_library(saved_models):
    info = describe(saved_models["ceil_pool"])
    assert info["pyfuncs"]
    assert {call["op"] for call in info["pyfuncs"]} == {"PyFunc"}
    assert all(call["function"] and call["token"].startswith("pyfunc_") for call in info["pyfuncs"])
    # onnx-tf's py_pool(x, kernel_shape, strides, dilations, pads, ceil_mode, pooling_type, ...)
    assert info["pyfuncs"][0]["arguments"][1:7] == ([2, 2], [2, 2], [1, 1], [0, 0, 0, 0], True, "AVG")
    assert info["ops"]["PyFunc"] == 1


@pytest.mark.tf
def test_text_for_surgeon_inspect(saved_models):
    scorer = format_description(describe(saved_models["scorer"])).splitlines()
    assert scorer[0].startswith(f"{saved_models['scorer']}: SavedModel, tags serve; TensorFlow {TENSORFLOW};")
    # converted outside a run: TensorFlow's own version only (a run adds the record of the rest of the stack)
    minor = ".".join(TENSORFLOW.split(".")[:2])
    assert scorer[1:3] == [
        f"made with: TensorFlow {TENSORFLOW} (no assets.extra/surgeon.json: the rest of the stack is not recorded)",
        f"serve with: TensorFlow >= {minor} (TF Serving {minor} or newer)",
    ]
    assert scorer[3:8] == [
        "signature serving_default (tensorflow/serving/predict):",
        "  input   counts  int64  [?, 4]",
        "  input   features  float32  [?, 4]",
        "  output  best  int64  [?]",
        "  output  scores  float32  [?, 2]",
    ]
    assert scorer[-3:] == [
        "PyFunc: none",
        'example request to TF Serving\'s REST API (model saved_model, "instances" form, batch 1, zeros: '
        "counts int64 [1, 4], features float32 [1, 4]):",
        "  curl -d '{\"signature_name\": \"serving_default\", \"instances\": [{\"counts\": [0, 0, 0, 0], "
        "\"features\": [0.0, 0.0, 0.0, 0.0]}]}' http://localhost:8501/v1/models/saved_model:predict",
    ]
    ceil_pool = format_description(describe(saved_models["ceil_pool"]))
    assert "node(s) call back into Python; TF Serving, Triton and any fresh process fail on them:" in ceil_pool
    assert "PyFunc  token pyfunc_" in ceil_pool


@pytest.mark.tf
def test_surgeon_inspect_reads_a_saved_model_without_importing_tensorflow(saved_models):
    check = ("import sys; from surgeon.cli import main; code = main(['inspect', sys.argv[1]]); "
             "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", check, str(saved_models["ceil_pool"])], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "signature serving_default" in result.stdout and "call back into Python" in result.stdout
    assert f"made with: TensorFlow {TENSORFLOW}" in result.stdout


def test_what_is_not_a_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(SurgeonError, match=r"not a SavedModel \(no saved_model.pb in it\)"):
        describe(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xff not a protobuf")
    with pytest.raises(SurgeonError, match="saved_model.pb: not a SavedModel"):
        describe(tmp_path)
