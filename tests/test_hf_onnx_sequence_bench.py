"""bench/hf_onnx_sequence.py's machinery: a HuggingFace model measured in a process of its own, through surgeon's
Python API (ONNX out, no TensorFlow), and checked against PyTorch; its results table and summary."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).parents[1] / "bench" / "hf_onnx_sequence.py"
GRAPH_ONLY = Path(__file__).parent / "graph_only"  # its sitecustomize makes TensorFlow unimportable


def bench_module():
    if "hf_onnx_sequence" in sys.modules:
        return sys.modules["hf_onnx_sequence"]
    spec = importlib.util.spec_from_file_location("hf_onnx_sequence", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cells(row: str) -> list[str]:
    """A markdown table row's cells (escaped bars kept inside their cell)."""
    assert row.startswith("| ") and row.endswith(" |"), row
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row[1:-1])]


def test_bert_is_served_equal_to_pytorch_and_gpt2cls_refused_without_tensorflow(tmp_path: Path) -> None:
    """Two models through the whole bench, each in its own process, TensorFlow unimportable in all of them: the
    results file has a row per model in the table's format, BERT served within float error of PyTorch at every
    batch x length, GPT-2's classifier refused by dynamic_batch with its message's first line."""
    results = tmp_path / "results.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(GRAPH_ONLY), os.environ.get("PYTHONPATH")]))}
    finished = subprocess.run([sys.executable, str(BENCH), "--only", "bert,gpt2cls", "--output", str(results)],
                              capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    text = results.read_text()
    assert "**1 of 2** served and equal to PyTorch" in text and "; 1 refused." in text
    assert re.search(r"Measured \d{4}-\d\d-\d\d on ", text) and "transformers " in text and "onnxruntime " in text
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    rows = {cells(line)[0]: cells(line) for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| model |", "|---"))}
    assert set(rows) == {"bert", "gpt2cls"} and all(len(row) == len(cells(header)) == 6 for row in rows.values())
    name, what, outcome, diff, surgeon_s, total_s = rows["bert"]
    assert what.startswith("BertModel") and outcome.startswith("served (dynamic_axes rewrote ")
    assert float(diff) <= 1e-5 and float(surgeon_s) > 0 and float(total_s) >= float(surgeon_s)
    name, what, outcome, diff, surgeon_s, total_s = rows["gpt2cls"]
    assert outcome.startswith("refused: plugin 'dynamic_batch': node ") and "\n" not in outcome
    assert diff == "" and float(surgeon_s) >= 0


def test_a_row_and_the_summary_say_each_outcome() -> None:
    bench = bench_module()
    outcomes = [
        bench.Outcome("bert", bench.SERVED, max_abs=7.15e-07, surgeon_s=0.34, total_s=4.6, rewritten=16, added=30),
        bench.Outcome("gpt2", bench.SERVED, max_abs=2.4e-06, surgeon_s=0.3, total_s=5.0, rewritten=25, added=50),
        bench.Outcome("xlnet", bench.REFUSED, "plugin 'dynamic_axes': a | b", surgeon_s=0.2, total_s=4.0),
        bench.Outcome("t5", bench.UNVERIFIED, "verification failed: stage 'onnx'", surgeon_s=0.5, total_s=4.0),
        bench.Outcome("opt", bench.WRONG, "batch 3, length 5: differs by up to 0.5", 0.5, 0.4, 4.0, 3, 4),
        bench.Outcome("nobody", bench.CRASHED, "did not finish in 600 s", total_s=600.0),
    ]
    assert outcomes[0].row() == ("| bert | BertModel: absolute positions, token type ids from a buffer, post-LN | "
                                 "served (dynamic_axes rewrote 16 nodes, added 30) | 7.2e-07 | 0.3 | 5 |")
    assert cells(outcomes[2].row())[2] == "refused: plugin 'dynamic_axes': a \\| b"  # the bar escaped
    assert cells(outcomes[4].row())[2:4] == [
        "served but unlike PyTorch: batch 3, length 5: differs by up to 0.5 (dynamic_axes rewrote 3 nodes, added 4)",
        "0.5"]
    assert cells(outcomes[5].row()) == ["nobody", "", "crashed: did not finish in 600 s", "", "", "600"]
    assert bench.summary(outcomes) == ("**2 of 6** served and equal to PyTorch (worst \\|difference\\| 2.4e-06); "
                                       "1 served but unlike PyTorch, 1 refused, 1 verification failed, 1 crashed.")
    written = bench.report(outcomes, "TensorFlow 2.21.0, onnx 1.23.2", "commit abc1234")
    assert "on commit abc1234" in written and written.endswith(outcomes[-1].row() + "\n")


def test_onnxruntime_is_compared_with_pytorch_at_every_batch_and_length(tmp_path: Path) -> None:
    """``against_torch`` reports the worst difference over every batch x length, and the first divergence: a wrong
    value, or a wrong shape."""
    import onnx
    import torch

    from surgeon.testing import model_from_text

    bench = bench_module()
    path = tmp_path / "ids.onnx"
    onnx.save(model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[batch, seq] input_ids, int64[batch, seq] attention_mask) => (float[batch, seq] out) {
            out = Cast<to = 1>(input_ids)
        }"""), str(path))

    class Net(torch.nn.Module):
        def __init__(self, shift: float, transposed: bool = False) -> None:
            super().__init__()
            self.shift, self.transposed = shift, transposed

        def forward(self, input_ids, attention_mask, return_dict, **extra):
            logits = input_ids.float() + self.shift * (input_ids == input_ids.max())
            return SimpleNamespace(logits=logits.T if self.transposed else logits)

    model = bench.Model("ids", "token ids as floats", lambda transformers: None)
    assert bench.against_torch(model, Net(0.0), path) == (0.0, "")
    worst, why = bench.against_torch(model, Net(0.5), path)
    assert worst == 0.5 and why == "batch 1, length 5: differs by up to 0.5"
    worst, why = bench.against_torch(model, Net(0.0, transposed=True), path)
    assert why == "batch 1, length 5: shape [1, 5], PyTorch [5, 1]"


def test_an_unknown_model_is_named_with_the_known_ones() -> None:
    finished = subprocess.run([sys.executable, str(BENCH), "--only", "bert,nosuch"], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 2 and "unknown model nosuch; the models: bert, roberta," in finished.stderr


@pytest.mark.parametrize("name", ["bert", "llama_hd32"])
def test_the_configs_are_tiny_and_llama_hd32_has_heads_as_wide_as_the_export_length(name: str) -> None:
    import transformers

    bench = bench_module()
    config = bench.build(bench.BY_NAME[name]).config
    head = config.hidden_size // config.num_attention_heads
    assert config.num_hidden_layers == bench.LAYERS and config.vocab_size == bench.VOCABULARY
    assert (head == bench.EXPORT_LENGTH) == (name == "llama_hd32"), transformers.__version__
