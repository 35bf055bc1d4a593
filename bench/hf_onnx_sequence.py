"""Which HuggingFace text models, exported to ONNX at one length, serve every length after dynamic_axes?

Each model is built from its own ``transformers`` class with a tiny config
(random weights, seeded; nothing is downloaded): hidden 48, 2 layers, 2 heads
of 24, so that no width equals the export length; and Llama again with heads
of 32, a width equal to the export length. It is exported as people export
it: ``torch.onnx.export(dynamo=False, opset_version=17)`` at batch 1 and a
fixed length of 32, inputs ``input_ids`` and ``attention_mask``, one output
(the logits, or the last hidden state). Then, through surgeon's Python API::

    surgeon.run(model.onnx, OUT, formats=["onnx"],
                plugins=["dynamic_batch", "dynamic_axes", "opset_compat", "rename_outputs"],
                options={"dynamic_axes": {"axes": ["input_ids:1:seq", "attention_mask:1:seq"]}},
                batch_sizes=[1, 3], axis_sizes={"seq": [2, 8, 32]})

(surgeon's own verification: the rewritten model at every batch x length
against onnxruntime on the original, given the input padded to 32). Last,
onnxruntime on ``OUT/model.onnx`` is compared with PyTorch itself, the HF
model, at lengths 5, 20, 32 x batch 1, 3, token ids seeded, an all-ones
mask: lengths surgeon did not verify at, and no padded reference in between.

Outcomes: served (and equal to PyTorch everywhere: atol 1e-4 + rtol 1e-3),
served but unlike PyTorch (the case a benchmark of this kind is for),
refused (surgeon stopped with a message before writing), verification failed
(surgeon rewrote the model and its own check caught the difference), and
export failed or crashed. Seconds: ``surgeon.run`` alone, and the model's
whole process (imports, build, export, run, comparison).

No TensorFlow is needed or imported (formats=["onnx"]). Each model runs in a
process of its own, so that one crash does not stop the others.

    python bench/hf_onnx_sequence.py                      # ~3 min, all models
    python bench/hf_onnx_sequence.py --only bert,llama_hd32 [--output PATH]

Results go to bench/results/hf_onnx_sequence.md on the default stack (the
TensorFlow that constraints.txt pins; TensorFlow itself is not used, the file
follows the other benchmarks' stacks), to hf_onnx_sequence-tfX.Y.md on any
other; ``--output`` writes elsewhere. ``--only`` without ``--output`` prints
and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from stacks import stack  # noqa: E402  (beside this script)

RESULTS = HERE / "results" / "hf_onnx_sequence.md"
PLUGINS = ["dynamic_batch", "dynamic_axes", "opset_compat", "rename_outputs"]
AXES = ["input_ids:1:seq", "attention_mask:1:seq"]
EXPORT_LENGTH, OPSET = 32, 17
VERIFY_BATCHES, VERIFY_LENGTHS = (1, 3), (2, 8, 32)  # surgeon's own verification
BATCHES, LENGTHS = (1, 3), (5, 20, 32)  # onnxruntime on OUT/model.onnx against PyTorch
ATOL, RTOL = 1e-4, 1e-3
TIMEOUT_S = 600

VOCABULARY, HIDDEN, HEADS, LAYERS, FFN, POSITIONS = 100, 48, 2, 2, 64, 64  # heads of 24
WIDE = 64  # Llama's hidden size with heads of 32, the export length

SERVED, WRONG, REFUSED, UNVERIFIED, EXPORT_FAILED, CRASHED = (
    "served", "served but unlike PyTorch", "refused", "verification failed", "export failed", "crashed")


@dataclass(frozen=True)
class Model:
    """One text model: ``build(transformers)`` makes it; ``extra(batch)`` the keyword arguments its forward takes
    besides the ids and the mask (built at batch 1 for the export, at each batch for the reference)."""

    name: str
    what: str
    build: Callable[[Any], Any]
    extra: Callable[[int], dict] = field(default=lambda batch: {})


def no_cache(batch: int) -> dict:
    return {"use_cache": False}


def encoder_states(batch: int) -> dict:
    """Whisper's decoder attends to an encoder's output: 4 frames of zeros."""
    import torch

    return {"encoder_hidden_states": torch.zeros(batch, 4, HIDDEN), "use_cache": False}


def whisper_decoder(t: Any) -> Any:
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    return WhisperDecoder(t.WhisperConfig(
        d_model=HIDDEN, decoder_layers=LAYERS, decoder_attention_heads=HEADS, decoder_ffn_dim=FFN,
        vocab_size=VOCABULARY, max_target_positions=POSITIONS, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=2))


BERT_LIKE = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
                 vocab_size=VOCABULARY)
DECODER = dict(BERT_LIKE, max_position_embeddings=POSITIONS)
GPT2 = dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCABULARY, n_positions=POSITIONS)

MODELS = [
    # encoders
    Model("bert", "BertModel: absolute positions, token type ids from a buffer, post-LN",
          lambda t: t.BertModel(t.BertConfig(**BERT_LIKE, max_position_embeddings=POSITIONS))),
    Model("roberta", "RobertaForSequenceClassification: positions from a cumsum of the mask of non-pad ids",
          lambda t: t.RobertaForSequenceClassification(t.RobertaConfig(**BERT_LIKE, max_position_embeddings=70,
                                                                       pad_token_id=1))),
    Model("xlmroberta", "XLMRobertaModel: RoBERTa's positions",
          lambda t: t.XLMRobertaModel(t.XLMRobertaConfig(**BERT_LIKE, max_position_embeddings=70, pad_token_id=1))),
    Model("albert", "AlbertModel: factorised embedding (16), shared layers",
          lambda t: t.AlbertModel(t.AlbertConfig(**BERT_LIKE, embedding_size=16, max_position_embeddings=POSITIONS))),
    Model("electra", "ElectraForTokenClassification: embedding projected 16 -> 48, a label per token",
          lambda t: t.ElectraForTokenClassification(t.ElectraConfig(**BERT_LIKE, embedding_size=16,
                                                                    max_position_embeddings=POSITIONS))),
    Model("distilbert", "DistilBertModel: positions from a buffer, masked_fill with the dtype's minimum",
          lambda t: t.DistilBertModel(t.DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                                         vocab_size=VOCABULARY, max_position_embeddings=POSITIONS))),
    Model("mpnet", "MPNetModel: relative position buckets added to the scores",
          lambda t: t.MPNetModel(t.MPNetConfig(**BERT_LIKE, max_position_embeddings=70))),
    Model("t5", "T5EncoderModel: relative position buckets (8, distance 20), RMS norm",
          lambda t: t.T5EncoderModel(t.T5Config(d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS,
                                                num_heads=HEADS, vocab_size=VOCABULARY,
                                                relative_attention_num_buckets=8,
                                                relative_attention_max_distance=20))),
    Model("bart", "BART's encoder (1 layer): learned positions offset by 2",
          lambda t: t.BartModel(t.BartConfig(d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
                                             encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                             encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, vocab_size=VOCABULARY,
                                             max_position_embeddings=POSITIONS)).encoder),
    Model("debertav2", "DebertaV2Model: disentangled attention (p2c, c2p), log buckets (16)",
          lambda t: t.DebertaV2Model(t.DebertaV2Config(**BERT_LIKE, max_position_embeddings=POSITIONS,
                                                       relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                       position_buckets=16))),
    Model("convbert", "ConvBertModel (1 layer): span-based dynamic convolution over the sequence",
          lambda t: t.ConvBertModel(t.ConvBertConfig(**dict(BERT_LIKE, num_hidden_layers=1), embedding_size=HIDDEN,
                                                     max_position_embeddings=POSITIONS))),
    Model("funnel", "FunnelModel: pooling the sequence between blocks, relative attention by einsum",
          lambda t: t.FunnelModel(t.FunnelConfig(d_model=HIDDEN, n_head=HEADS, d_head=HIDDEN // HEADS, d_inner=FFN,
                                                 vocab_size=VOCABULARY, block_sizes=[1, 1], num_decoder_layers=1))),
    Model("xlnet", "XLNetModel: two-stream relative attention by einsum",
          lambda t: t.XLNetModel(t.XLNetConfig(d_model=HIDDEN, n_layer=LAYERS, n_head=HEADS, d_inner=FFN,
                                               vocab_size=VOCABULARY))),
    # decoders
    Model("gpt2", "GPT2LMHeadModel: causal mask, learned positions", lambda t: t.GPT2LMHeadModel(t.GPT2Config(**GPT2)),
          no_cache),
    Model("gpt2cls", "GPT2ForSequenceClassification: the logits of each sample's last non-pad token",
          lambda t: t.GPT2ForSequenceClassification(t.GPT2Config(**GPT2, pad_token_id=0)), no_cache),
    Model("gptj", "GPTJForCausalLM: interleaved rotary (8 dims)",
          lambda t: t.GPTJForCausalLM(t.GPTJConfig(**GPT2, rotary_dim=8)), no_cache),
    Model("gptneox", "GPTNeoXForCausalLM: rotary on half the head",
          lambda t: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**DECODER, rotary_pct=0.5)), no_cache),
    Model("opt", "OPTForCausalLM: positions from a cumsum of the mask, offset by 2",
          lambda t: t.OPTForCausalLM(t.OPTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                 num_attention_heads=HEADS, ffn_dim=FFN, vocab_size=VOCABULARY,
                                                 max_position_embeddings=128, word_embed_proj_dim=HIDDEN)), no_cache),
    Model("bloom", "BloomModel: ALiBi from a cumsum of the mask",
          lambda t: t.BloomModel(t.BloomConfig(hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                               vocab_size=VOCABULARY)), no_cache),
    Model("falcon", "FalconForCausalLM: ALiBi, multi-query attention",
          lambda t: t.FalconForCausalLM(t.FalconConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                       num_attention_heads=HEADS, vocab_size=VOCABULARY, alibi=True,
                                                       new_decoder_architecture=False, multi_query=True)), no_cache),
    Model("llama", "LlamaForCausalLM: rotary, grouped-query attention (1 KV head)",
          lambda t: t.LlamaForCausalLM(t.LlamaConfig(**DECODER, num_key_value_heads=1)), no_cache),
    Model("llama_hd32", "LlamaForCausalLM with hidden 64, heads of 32: the head width equals the export length",
          lambda t: t.LlamaForCausalLM(t.LlamaConfig(**dict(DECODER, hidden_size=WIDE), num_key_value_heads=1)),
          no_cache),
    Model("mistral", "MistralForCausalLM: sliding window 8, grouped-query attention",
          lambda t: t.MistralForCausalLM(t.MistralConfig(**DECODER, num_key_value_heads=1, sliding_window=8)),
          no_cache),
    Model("qwen2", "Qwen2ForCausalLM: rotary, grouped-query attention, QKV biases",
          lambda t: t.Qwen2ForCausalLM(t.Qwen2Config(**DECODER, num_key_value_heads=1)), no_cache),
    Model("gemma", "GemmaForCausalLM: embeddings scaled by sqrt(hidden), multi-query attention",
          lambda t: t.GemmaForCausalLM(t.GemmaConfig(**DECODER, num_key_value_heads=1, head_dim=HIDDEN // HEADS)),
          no_cache),
    Model("phi", "PhiForCausalLM: partial rotary (half), parallel attention and MLP",
          lambda t: t.PhiForCausalLM(t.PhiConfig(**DECODER, partial_rotary_factor=0.5)), no_cache),
    Model("whisper_decoder", "Whisper's decoder: learned positions, cross-attention to 4 encoder frames",
          whisper_decoder, encoder_states),
]
BY_NAME = {model.name: model for model in MODELS}


def build(model: Model) -> Any:
    """The model, seeded, in eval mode."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return model.build(transformers).eval()


def wrapped(model: Model, net: Any) -> Any:
    """``net`` as ``forward(input_ids, attention_mask)`` -> the logits or the last hidden state, the extra
    arguments at batch 1 (the export's)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return first_output(self.net(input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                                         **model.extra(1)))

    return Exported().eval()


def first_output(output: Any) -> Any:
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def token_ids(batch: int, length: int, seed: int) -> Any:
    """Seeded ids in 2..VOCABULARY-1 (no padding id, no special tokens) and an all-ones mask."""
    import torch

    ids = torch.randint(2, VOCABULARY, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones(batch, length, dtype=torch.int64)


def export(model: Model, net: Any, path: Path) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(wrapped(model, net), token_ids(1, EXPORT_LENGTH, 0), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["input_ids", "attention_mask"], output_names=["out"])


def against_torch(model: Model, net: Any, path: Path) -> tuple[float, str]:
    """onnxruntime on ``path`` against PyTorch at every batch x length of BATCHES x LENGTHS: the worst absolute
    difference over all, and the first divergence in words ('' when there is none)."""
    import numpy as np
    import onnxruntime
    import torch

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        return 0.0, f"onnxruntime cannot load it: {first_line(str(error))}"
    worst, why = 0.0, ""
    for length in LENGTHS:
        for batch in BATCHES:
            ids, mask = token_ids(batch, length, 100 * length + batch)
            with torch.no_grad():
                want = first_output(net(input_ids=ids, attention_mask=mask, return_dict=True,
                                        **model.extra(batch))).numpy()
            at = f"batch {batch}, length {length}"
            try:
                got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            except Exception as error:
                why = why or f"{at}: onnxruntime fails: {first_line(str(error))}"
                continue
            if got.shape != want.shape:
                why = why or f"{at}: shape {list(got.shape)}, PyTorch {list(want.shape)}"
                continue
            difference = float(np.max(np.abs(got - want))) if want.size else 0.0
            worst = max(worst, difference)
            if not np.allclose(got, want, atol=ATOL, rtol=RTOL):
                why = why or f"{at}: differs by up to {difference:.3g}"
    return worst, why


def measure(name: str, folder: Path) -> dict:
    """Build, export, run surgeon on and compare the model ``name``, in this process (a child of main()); what
    happened, as a dict for ``Outcome``."""
    import surgeon

    model = BY_NAME[name]
    path = folder / f"{name}.onnx"
    try:
        net = build(model)
        export(model, net, path)
    except Exception as error:
        return {"status": EXPORT_FAILED, "why": first_line(f"{type(error).__name__}: {error}")}
    note = export_runs(path)
    started = time.perf_counter()
    try:
        report = surgeon.run(path, folder / "out", formats=["onnx"], plugins=PLUGINS,
                             options={"dynamic_axes": {"axes": AXES}}, batch_sizes=list(VERIFY_BATCHES),
                             axis_sizes={"seq": list(VERIFY_LENGTHS)})
    except surgeon.SurgeonError as error:
        seconds = time.perf_counter() - started
        text = first_line(str(error))
        status = UNVERIFIED if text.startswith("verification failed") else REFUSED
        return {"status": status, "why": text, "surgeon_s": seconds, "note": note}
    except Exception as error:
        return {"status": CRASHED, "why": first_line(f"{type(error).__name__}: {error}"),
                "surgeon_s": time.perf_counter() - started, "note": note}
    seconds = time.perf_counter() - started
    (axes,) = [record for record in report["plugins"] if record["name"] == "dynamic_axes"]
    worst, why = against_torch(model, net, folder / "out" / "model.onnx")
    return {"status": WRONG if why else SERVED, "why": why, "max_abs": worst, "surgeon_s": seconds,
            "rewritten": axes["nodes_rewritten"], "added": axes["nodes_added"], "note": note}


def export_runs(path: Path) -> str:
    """'' when onnxruntime runs the export at its own shape; else a note that it does not (then a refusal is the
    exporter's doing as much as surgeon's)."""
    import onnxruntime

    ids, mask = token_ids(1, EXPORT_LENGTH, 0)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    except Exception:
        return "the export itself does not run in onnxruntime either"
    return ""


@dataclass
class Outcome:
    """What became of one model: ``status`` one of SERVED ... CRASHED; ``why`` the first line of the error or the
    first divergence; ``max_abs`` the worst |onnxruntime - PyTorch| (served ones); seconds of ``surgeon.run``
    (None when it did not start) and of the model's whole process; the nodes dynamic_axes rewrote and added."""

    name: str
    status: str
    why: str = ""
    max_abs: float | None = None
    surgeon_s: float | None = None
    total_s: float = 0.0
    rewritten: int | None = None
    added: int | None = None
    note: str = ""

    def row(self) -> str:
        """This model's line of the results table."""
        model = BY_NAME.get(self.name)
        verdict = self.status + (f": {self.why}" if self.why else "")
        if self.rewritten is not None:
            verdict += f" (dynamic_axes rewrote {self.rewritten} nodes, added {self.added})"
        if self.note:
            verdict += f" ({self.note})"
        cells = [self.name, model.what if model else "", verdict,
                 "" if self.max_abs is None else f"{self.max_abs:.2g}",
                 "" if self.surgeon_s is None else f"{self.surgeon_s:.1f}", f"{self.total_s:.0f}"]
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def run_model(name: str) -> Outcome:
    """``name`` measured in a process of its own."""
    with tempfile.TemporaryDirectory(prefix="hf-onnx-sequence-") as folder:
        started = time.perf_counter()
        try:
            finished = subprocess.run([sys.executable, __file__, "--child", name, folder], capture_output=True,
                                      text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Outcome(name, CRASHED, f"did not finish in {TIMEOUT_S} s", total_s=time.perf_counter() - started)
        seconds = time.perf_counter() - started
    lines = finished.stdout.strip().splitlines()
    if finished.returncode != 0 or not lines or not lines[-1].startswith("{"):
        last = (finished.stderr.strip().splitlines() or [f"exit status {finished.returncode}"])[-1]
        return Outcome(name, CRASHED, first_line(last), total_s=seconds)
    return Outcome(name, total_s=seconds, **json.loads(lines[-1]))


def first_line(text: str) -> str:
    """The first line, cut to 300 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:297] + "..." if len(line) > 300 else line


def stack_words() -> str:
    """The versions this measures with (TensorFlow's is in ``stack``'s words, though it is not imported)."""
    words, _ = stack(RESULTS)
    return (f"{words}, torch {version('torch')}, transformers {version('transformers')}, "
            f"onnxruntime {version('onnxruntime')}")


def commit() -> str:
    """The repository's commit, and whether the work tree differs from it; '' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE,
                              timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def summary(outcomes: list[Outcome]) -> str:
    """One sentence: how many models of each outcome, and the worst difference from PyTorch of the served."""
    counts = {status: sum(outcome.status == status for outcome in outcomes)
              for status in (SERVED, WRONG, REFUSED, UNVERIFIED, EXPORT_FAILED, CRASHED)}
    served = [outcome.max_abs for outcome in outcomes if outcome.status == SERVED and outcome.max_abs is not None]
    text = f"**{counts[SERVED]} of {len(outcomes)}** served and equal to PyTorch"
    if served:
        text += f" (worst \\|difference\\| {max(served):.2g})"
    others = [f"{count} {status}" for status, count in counts.items() if status != SERVED and count]
    return text + (f"; {', '.join(others)}" if others else "") + "."


def report(outcomes: list[Outcome], words: str, where: str) -> str:
    """The results file."""
    lines = [
        "# HuggingFace text models from an ONNX file exported at one length: dynamic_axes, checked against PyTorch",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {where}. Machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"shared with other work, Python {platform.python_version()}, {words} (TensorFlow is not imported); "
        "`python bench/hf_onnx_sequence.py`.",
        "",
        f"Each model is built from its `transformers` class with a tiny config (random weights, seeded, nothing "
        f"downloaded): vocabulary {VOCABULARY}, hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads of "
        f"{HIDDEN // HEADS}, unless its row says otherwise; `llama_hd32` has heads of {WIDE // HEADS}, the export "
        f"length. Exported with `torch.onnx.export(dynamo=False, opset_version={OPSET})` at batch 1 and length "
        f"{EXPORT_LENGTH}, inputs `input_ids` and `attention_mask`, one output (the logits, or the last hidden "
        f"state). Then `surgeon.run(..., formats=[\"onnx\"], plugins={json.dumps(PLUGINS)}, "
        f"options={json.dumps({'dynamic_axes': {'axes': AXES}})}, batch_sizes={list(VERIFY_BATCHES)}, "
        f"axis_sizes={json.dumps({'seq': list(VERIFY_LENGTHS)})})` (the same as `surgeon run M.onnx --format onnx "
        "--plugins "
        f"{','.join(PLUGINS)} --set dynamic_axes.axes={','.join(AXES)} --batch-sizes "
        f"{','.join(map(str, VERIFY_BATCHES))} --axis-sizes seq={','.join(map(str, VERIFY_LENGTHS))}`), whose own "
        f"check compares with onnxruntime on the original given the input padded to {EXPORT_LENGTH}. Last, "
        f"onnxruntime on `OUT/model.onnx` against the PyTorch model itself at lengths "
        f"{', '.join(map(str, LENGTHS))} x batch {', '.join(map(str, BATCHES))}, seeded token ids in "
        f"2..{VOCABULARY - 1}, an all-ones mask (atol {ATOL} + rtol {RTOL}).",
        "",
        f"'{SERVED}': written, and equal to PyTorch at every batch x length; '{WRONG}': written, but not; "
        f"'{REFUSED}': surgeon stopped before writing, with the message quoted (its first line); "
        f"'{UNVERIFIED}': surgeon rewrote the model and its own check caught a difference. \\|diff\\|: the worst "
        "absolute difference from PyTorch over every batch x length. Seconds: `surgeon.run` (rewrite and its "
        "verification), and the model's whole process (imports, build, export, run, comparison with PyTorch).",
        "",
        summary(outcomes),
        "",
        "| model | what it has | outcome | \\|diff\\| vs PyTorch | surgeon.run (s) | in all (s) |",
        "|---|---|---|---:|---:|---:|",
        *(outcome.row() for outcome in outcomes),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated model names, of: {', '.join(BY_NAME)}")
    parser.add_argument("--output", type=Path, help="the results file (default: bench/results/hf_onnx_sequence.md, "
                                                    "per stack); with --only, nothing is written without it")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return
    names = args.only.split(",") if args.only else list(BY_NAME)
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; the models: {', '.join(BY_NAME)}")
    words = stack_words()
    results = args.output or stack(RESULTS)[1]
    print(f"stack: {words}", flush=True)
    outcomes = []
    for name in names:
        outcome = run_model(name)
        diff = "" if outcome.max_abs is None else f" |diff| {outcome.max_abs:.2g}"
        print(f"{name:<16} {outcome.total_s:5.1f}s  {outcome.status}{diff}  {outcome.why}", flush=True)
        outcomes.append(outcome)
    print(summary(outcomes).replace("**", "").replace("\\|", "|"))
    if args.only and not args.output:
        print(f"not written to {results}: --only ran a subset (--output writes it)")
        return
    where = commit()
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(report(outcomes, words, f"commit {where}" if where else "this checkout"))
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
