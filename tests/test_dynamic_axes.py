"""A dynamic sequence axis (any named axis): exported dynamic from PyTorch with ``torch.dynamic_axes``, verified at
every combination of ``--batch-sizes`` and ``--axis-sizes``, refused in words when asked wrongly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import surgeon
from surgeon.errors import SurgeonError
from surgeon.feeds import Case, case_feed
from surgeon.fuzzing import cli_in_process
from test_tf_serving import WARMUP, read_records
from test_transformers import MODELS, PLUGINS

TEXT = {"input_shapes": ["int64:1,16", "int64:1,16"], "input_names": ["input_ids", "attention_mask"],
        "dynamic_axes": ["input_ids:1:seq", "attention_mask:1:seq"]}

BAKED = '''
import torch


class Cumulative(torch.nn.Module):
    """Right in PyTorch at any length; its trace keeps the export's length 16 as a constant (int() of a size)."""

    def forward(self, x):
        length = int(x.shape[1])
        return x.cumsum(1)[:, :length]


def baked():
    return Cumulative()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    (folder / "hf_models.py").write_text(MODELS)
    (folder / "baked.py").write_text(BAKED)
    return folder


@pytest.mark.tf
@pytest.mark.parametrize("factory", ["bert", "distilbert", "gpt2"])
def test_one_saved_model_serves_every_batch_and_sequence_length(models: Path, tmp_path: Path, factory: str) -> None:
    report = surgeon.run(f"{models / 'hf_models.py'}:{factory}", tmp_path / "out", plugins=PLUGINS,
                         batch_sizes=[1, 3, 8], axis_sizes={"seq": [8, 16, 32]}, options={"torch": TEXT})
    assert report["export"]["dynamic_axes"] == TEXT["dynamic_axes"]
    served = [row for row in report["parity"] if row["stage"] == "saved_model"]
    assert {(row["batch"], row["sizes"]["seq"]) for row in served} == {
        (batch, length) for batch in (1, 3, 8) for length in (8, 16, 32)}
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]
    model = onnx.load(tmp_path / "out" / "model.onnx")
    for value in model.graph.input:
        assert [dim.dim_param for dim in value.type.tensor_type.shape.dim] == ["batch", "seq"]
    signature = subprocess.run(
        [sys.executable, "-c", "import sys, tensorflow as tf; s = tf.saved_model.load(sys.argv[1])"
         ".signatures['serving_default']; print(s.structured_input_signature[1]['input_ids'].shape)",
         str(tmp_path / "out" / "saved_model")], capture_output=True, text=True, check=True)
    assert signature.stdout.strip().splitlines()[-1] == "(None, None)"


@pytest.mark.tf
def test_a_length_baked_by_the_export_fails_at_the_other_lengths_with_a_hint(models: Path, tmp_path: Path) -> None:
    with pytest.raises(SurgeonError) as raised:
        surgeon.run(f"{models / 'baked.py'}:baked", tmp_path / "out", batch_sizes=[1], axis_sizes={"seq": [8, 16, 32]},
                    options={"torch": {"input_shapes": ["1,16"], "dynamic_axes": ["x:1:seq"]}})
    message = str(raised.value)
    assert "at batch size 1 with seq 32" in message
    assert "it passes at batch size 1 with seq 8, batch size 1 with seq 16" in message
    assert not (tmp_path / "out").exists()


def text_model(seq: int | str) -> onnx.ModelProto:
    """Token ids [batch, seq] -> ids + 1, with the sequence dim ``seq`` (a size, or a symbolic name)."""
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    graph = helper.make_graph([helper.make_node("Add", ["ids", "one"], ["out"])], "text",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", seq])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", seq])], [one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.tf
def test_an_onnx_file_with_a_named_dynamic_axis_is_checked_at_each_size(tmp_path: Path) -> None:
    onnx.save(text_model("seq"), tmp_path / "text.onnx")
    report = surgeon.run(tmp_path / "text.onnx", tmp_path / "out", batch_sizes=[2], axis_sizes={"seq": [5, 7]},
                         formats=["saved_model", "triton", "tf_serving"])
    assert {(row["stage"], row["sizes"]["seq"]) for row in report["parity"] if row["check"] == "vs reference"} == {
        (stage, length) for stage in ("onnx", "saved_model") for length in (5, 7)}
    configs = sorted((tmp_path / "out" / "triton").glob("*/config.pbtxt"))
    assert len(configs) == 2  # the SavedModel entry and the ONNX one
    for config in configs:  # any length, after the batch
        assert 'name: "ids" data_type: TYPE_INT64 dims: [ -1 ]' in config.read_text()
    assert report["tf_serving_warmup"]["batch_sizes"] == [2]
    warmup = next((tmp_path / "out" / "tf_serving").glob("*/1")).joinpath(*WARMUP)
    records = read_records(warmup)
    assert len(records) == 2  # one per length verified: 5 and 7
    for record, length in zip(records, (5, 7)):  # each request holds the ids verification ran, as raw int64s
        (ids,) = case_feed(text_model("seq"), Case(2, (("seq", length),)))
        assert ids.shape == (2, length) and ids.tobytes() in record


def test_a_fixed_axis_of_an_onnx_file_is_refused_before_conversion_with_what_to_do(tmp_path: Path) -> None:
    onnx.save(text_model(16), tmp_path / "text.onnx")
    code, err = cli_in_process("run", tmp_path / "text.onnx", "-o", tmp_path / "out", "--axis-sizes", "seq=8,16")
    assert code != 0 and "converting" not in err
    assert "--axis-sizes seq: no input has a dynamic dimension named 'seq' (named dimensions: batch)" in err
    assert "--plugins dynamic_axes --set dynamic_axes.axes=INPUT:AXIS:seq" in err
    assert "--set torch.dynamic_axes=INPUT:AXIS:seq" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "message"), [
    ("seq", "--axis-sizes 'seq': expected NAME=SIZES, e.g. seq=8,16,32"),
    ("seq=8,x", "--axis-sizes seq= '8,x': expected positive whole numbers"),
    ("seq=0", "--axis-sizes seq= '0': expected positive whole numbers"),
    ("=8", "--axis-sizes '=8': expected NAME=SIZES"),
])
def test_malformed_axis_sizes_are_refused_in_one_line(tmp_path: Path, flag: str, message: str) -> None:
    onnx.save(text_model("seq"), tmp_path / "text.onnx")
    code, err = cli_in_process("run", tmp_path / "text.onnx", "-o", tmp_path / "out", "--axis-sizes", flag)
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize(("axes", "message"), [
    ("input_ids:0:seq", "axis 0 is the batch"),
    ("input_ids:seq", "expected INPUT:AXIS:NAME"),
    ("input_ids:1:my seq", "the name must be a word"),
    ("input_ids:1:batch", "the name must be a word such as seq, and not 'batch'"),
    ("tokens:1:seq", "option torch.dynamic_axes: the model has no input 'tokens' (its inputs: input_ids, "
                     "attention_mask)"),
    ("input_ids:2:seq", "option torch.dynamic_axes: input 'input_ids' has no axis 2 (shape [1, 16])"),
])
def test_wrong_dynamic_axes_are_refused_in_one_line(models: Path, tmp_path: Path, axes: str, message: str) -> None:
    code, err = cli_in_process("run", f"{models / 'hf_models.py'}:bert", "-o", tmp_path / "out", "--format", "onnx",
                               "--input-shape", "int64:1,16", "--input-shape", "int64:1,16",
                               "--set", "torch.input_names=input_ids,attention_mask",
                               "--set", f"torch.dynamic_axes={axes}")
    assert code != 0 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_the_pipeline_file_takes_axis_sizes_as_a_table(tmp_path: Path) -> None:
    onnx.save(text_model("seq"), tmp_path / "text.onnx")
    (tmp_path / "good.toml").write_text('source = "text.onnx"\noutput = "out"\nformat = ["onnx"]\n'
                                        "batch_sizes = [2]\naxis_sizes = {seq = [3, 9]}\n")
    code, err = cli_in_process("run", "--config", tmp_path / "good.toml")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(row["sizes"]["seq"] for row in report["parity"] if row["check"] == "vs reference") == [3, 9]
    (tmp_path / "bad.toml").write_text('source = "text.onnx"\noutput = "out2"\naxis_sizes = {seq = [3, "9"]}\n')
    code, err = cli_in_process("run", "--config", tmp_path / "bad.toml")
    assert code != 0 and "axis_sizes.seq = [3, '9']: expected a list of positive whole numbers" in err
