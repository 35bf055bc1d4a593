"""A dynamic sequence from an ONNX file: HuggingFace text models exported at one fixed length ([1, 32]) are made
dynamic in the batch by ``dynamic_batch`` and in the length by ``dynamic_axes``, and one SavedModel serves every
batch and every length up to the export's, each checked against onnxruntime on the original given the input padded
with zeros to 32. A length over 32 is refused before anything is written, and a model where the padding is not
inert fails verification at the shorter length."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import pytest

import surgeon
from surgeon.errors import SurgeonError
from surgeon.fuzzing import cli_in_process
from surgeon.saved_model_info import read_meta_graph, signatures
from test_transformers import MODELS

pytestmark = pytest.mark.tf  # every test here converts with TensorFlow

LENGTH = 32  # the export's length; the configs of MODELS have a head size of 16, a hidden size of 32
PLUGINS = ["dynamic_batch", "dynamic_axes", "pool_fix", "gru_fix", "opset_compat", "rename_outputs"]
AXES = ["input_ids:1:seq", "attention_mask:1:seq"]
REFERENCE = f"onnxruntime on the source model, inputs padded with zeros to its fixed seq {LENGTH}"

MEAN_POOL = '''
import torch


class MeanPool(torch.nn.Module):
    """Token embeddings averaged over the sequence with no mask: padding with zeros changes the mean."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(10, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids).mean(1))


def mean_pool():
    return MeanPool()
'''


def exported_onnx(module_path: Path, factory: str, folder: Path, names: list[str], length: int) -> Path:
    """The model ``factory`` of the module at ``module_path`` exported at batch 1 and ``length``, one int64
    input per name, by the TorchScript exporter (opset 17)."""
    import torch

    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, factory)().eval()
    ids = torch.randint(0, 10, (1, length), generator=torch.Generator().manual_seed(0))
    inputs = (ids, torch.ones(1, length, dtype=torch.int64))[:len(names)]
    path = folder / f"{factory}.onnx"
    torch.onnx.export(net, inputs, str(path), dynamo=False, opset_version=17, input_names=names)
    return path


@pytest.fixture(scope="module")
def hf_onnx(tmp_path_factory) -> Callable[[str], Path]:
    """The HF model ``factory`` of MODELS as an ONNX file with input_ids and attention_mask [1, 32], exported
    once per module."""
    folder = tmp_path_factory.mktemp("hf_onnx")
    (folder / "hf_models.py").write_text(MODELS)
    done: dict[str, Path] = {}

    def export(factory: str) -> Path:
        if factory not in done:
            done[factory] = exported_onnx(folder / "hf_models.py", factory, folder, ["input_ids", "attention_mask"],
                                          LENGTH)
        return done[factory]

    return export


@pytest.mark.parametrize(("factory", "batches", "lengths"), [
    ("bert", [1, 3, 8], [8, 16, 32]),  # the whole grid once: 9 cases
    ("distilbert", [1, 3], [8, 32]),
    ("gpt2", [1, 3], [8, 32]),  # logits [batch, seq, 100]: cut back to the length fed
])
def test_an_hf_onnx_file_at_one_length_serves_every_batch_and_shorter_length(
        hf_onnx: Callable[[str], Path], tmp_path: Path, factory: str, batches: list[int], lengths: list[int]) -> None:
    out = tmp_path / "out"
    report = surgeon.run(hf_onnx(factory), out, plugins=PLUGINS, batch_sizes=batches, axis_sizes={"seq": lengths},
                         options={"dynamic_axes": {"axes": AXES}})
    assert report["source_plugin"] == "onnx_file"
    assert [record["name"] for record in report["plugins"]] == PLUGINS
    assert report["reference"] == REFERENCE
    (record,) = [record for record in report["plugins"] if record["name"] == "dynamic_axes"]
    details = record["details"]
    assert (details["name"], details["export_length"], details["inputs"]) == ("seq", LENGTH,
                                                                              ["input_ids:1", "attention_mask:1"])
    assert record["nodes_rewritten"] > 0 and details["rewritten"]
    assert any("(Reshape): shape entry" in line and f"bakes the export length {LENGTH}" in line
               for line in details["rewritten"]), details["rewritten"]
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]
    served = [row for row in report["parity"] if row["stage"] == "saved_model" and row["check"] == "vs reference"]
    assert sorted((row["batch"], row["sizes"]["seq"]) for row in served) == [
        (batch, length) for batch in batches for length in lengths]
    signature = signatures(read_meta_graph(out / "saved_model"))["serving_default"]
    assert {tensor["name"]: tensor["shape"] for tensor in signature["inputs"]} == {
        "input_ids": [None, None], "attention_mask": [None, None]}
    (output,) = signature["outputs"]
    assert output["shape"] == ([None, None, 100] if factory == "gpt2" else [None, 3])


def test_a_length_over_the_export_s_is_refused_before_writing_in_one_line(hf_onnx: Callable[[str], Path],
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, err = cli_in_process("run", hf_onnx("bert"), "-o", out, "--plugins", ",".join(PLUGINS),
                               "--set", f"dynamic_axes.axes={','.join(AXES)}", "--batch-sizes", "1,3",
                               "--axis-sizes", "seq=8,64")
    assert code != 0
    (error,) = [line for line in err.splitlines() if line.startswith("surgeon: error:")]
    assert error == (f"surgeon: error: --axis-sizes seq=64: the ONNX file fixes seq at {LENGTH}, and nothing "
                     "computes the original at a longer length (each length is checked against the original given "
                     f"the input padded with zeros to {LENGTH})"), err
    assert f"hint: ask for lengths up to {LENGTH}" in err
    assert "converting" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_model_where_padding_is_not_inert_fails_at_the_shorter_length_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "mean_pool.py").write_text(MEAN_POOL)
    path = exported_onnx(tmp_path / "mean_pool.py", "mean_pool", tmp_path, ["input_ids"], 16)
    with pytest.raises(SurgeonError) as raised:
        surgeon.run(path, tmp_path / "out", plugins=["dynamic_batch", "dynamic_axes"], batch_sizes=[1, 3],
                    axis_sizes={"seq": [8, 16]}, options={"dynamic_axes": {"axes": ["input_ids:1:seq"]}})
    error = raised.value
    assert str(error).startswith("verification failed: stage 'onnx' at batch size 1 with seq 8 (vs reference")
    assert "differs from the reference" in str(error)
    assert error.hint is not None
    assert "it passes at batch size 1 with seq 16" in error.hint and "docs/dynamic_axes.md" in error.hint
    assert "nothing was written" in error.hint
    assert not (tmp_path / "out").exists()
