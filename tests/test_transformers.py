"""HuggingFace text models as people export them: built from their own classes with small configs (random weights,
nothing downloaded), exported at batch 1 with token ids and an attention mask, through the usual passes, served
from a fresh process at batch 1, 3 and 8.

Their attention masks are gathered through the flattened batch with indices computed from the batch size (and
BERT broadcasts a registered buffer to the batch), which no rewrite of a batch-1 export can make dynamic: the
torch source exports them again with a dynamic batch axis, and the report says so."""

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


@pytest.mark.parametrize(("factory", "refusal"), [
    ("bert", "needs the static shape of"),
    ("distilbert", "picks samples along the batch axis"),
    ("gpt2", "picks samples along the batch axis"),
])
def test_a_text_model_exported_at_batch_1_serves_at_every_batch(models: Path, tmp_path: Path, factory: str,
                                                                 refusal: str) -> None:
    report = surgeon.run(f"{models}:{factory}", tmp_path / "out", plugins=PLUGINS, batch_sizes=[1, 3, 8],
                         options={"torch": {"input_shapes": ["int64:1,16", "int64:1,16"],
                                            "input_names": ["input_ids", "attention_mask"]}})
    assert report["dynamic_batch_fallback"]["refused_by"] == "dynamic_batch"
    assert refusal in report["dynamic_batch_fallback"]["reason"]
    assert report["export"]["dynamic_batch"] is True
    assert [record["name"] for record in report["plugins"]] == [name for name in PLUGINS if name != "dynamic_batch"]
    served = {row["batch"] for row in report["parity"] if row["stage"] == "saved_model"}
    assert served == {1, 3, 8}
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]
