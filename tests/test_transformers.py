"""HuggingFace text models as people export them: built from their own classes with small configs (random weights,
nothing downloaded), exported at batch 1 with token ids and an attention mask, through the usual passes, served
from a fresh process at batch 1, 3 and 8.

Their attention masks are gathered through the flattened batch with indices computed from the batch size, and
BERT broadcasts a registered buffer to the batch: dynamic_batch follows both, so the batch-1 export itself is made
dynamic, whether surgeon exports it from PyTorch or it comes as an ONNX file (checked against onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import pytest

import surgeon

pytestmark = pytest.mark.tf  # every test here converts with TensorFlow

MODELS = '''
import torch
import transformers


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def bert():
    torch.manual_seed(0)
    return Logits(transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3)))


def distilbert():
    torch.manual_seed(0)
    return Logits(transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3)))


def gpt2():
    torch.manual_seed(0)
    return Logits(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)))
'''

PLUGINS = ["dynamic_batch", "pool_fix", "gru_fix", "opset_compat", "rename_outputs"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "hf_models.py"
    path.write_text(MODELS)
    return path


def assert_served_at_every_batch(report: dict) -> None:
    assert "dynamic_batch_fallback" not in report
    assert [record["name"] for record in report["plugins"]] == PLUGINS
    (dynamic,) = [record for record in report["plugins"] if record["name"] == "dynamic_batch"]
    assert dynamic["details"]["export_batch"] == 1
    assert any("numbers the samples of the export batch 1" in line for line in dynamic["details"]["rewritten"])
    served = {row["batch"] for row in report["parity"] if row["stage"] == "saved_model"}
    assert served == {1, 3, 8}
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]


@pytest.mark.parametrize("factory", ["bert", "distilbert", "gpt2"])
def test_a_text_model_exported_at_batch_1_serves_at_every_batch(models: Path, tmp_path: Path, factory: str) -> None:
    report = surgeon.run(f"{models}:{factory}", tmp_path / "out", plugins=PLUGINS, batch_sizes=[1, 3, 8],
                         options={"torch": {"input_shapes": ["int64:1,16", "int64:1,16"],
                                            "input_names": ["input_ids", "attention_mask"]}})
    assert report["export"]["dynamic_batch"] is False
    assert_served_at_every_batch(report)


@pytest.mark.parametrize("factory", ["bert", "distilbert", "gpt2"])
def test_a_text_model_s_onnx_file_exported_at_batch_1_serves_at_every_batch(models: Path, tmp_path: Path,
                                                                            factory: str) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("hf_models", models)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, factory)().eval()
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"{factory}.onnx"
    torch.onnx.export(net, (ids, torch.ones(1, 16, dtype=torch.int64)), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"])
    report = surgeon.run(path, tmp_path / "out", plugins=PLUGINS, batch_sizes=[1, 3, 8])
    assert report["source_plugin"] == "onnx_file"
    assert_served_at_every_batch(report)
