"""gru_fix: GRUs unrolled step by step compute what the GRU node computes, in every direction and form; what it
cannot unroll is named; PyTorch's GRU then converts with onnx-tf and serves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

import surgeon
from surgeon import SurgeonError
from surgeon.testing import (BackendCase, apply_pass, apply_pass_with_record, assert_idempotent,
                             assert_same_outputs, backend_node_cases, model_from_text, run_onnx)
from surgeon_plugins.passes import gru_fix

BATCHES = (1, 3, 8)
HIDDEN, FEATURES, STEPS = 2, 3, 4


def values(shape: tuple[int, ...], seed: int) -> str:
    numbers = np.random.default_rng(seed).uniform(-1, 1, shape).ravel()
    return ", ".join(f"{number:.4f}" for number in numbers)


def gru_text(direction: str = "forward", linear_before_reset: int = 1, bias: bool = True, initial: bool = False,
             outputs: str = "y, y_h", steps: object = STEPS, extra_attrs: str = "", lengths: bool = False) -> str:
    """A GRU over x[steps, N, 3] with hidden size 2, weights from a seeded generator."""
    directions = 2 if direction == "bidirectional" else 1
    # batch first at the graph's inputs, as the parity check feeds them; the GRU takes it second
    inputs = f"float[N, {steps}, {FEATURES}] xb" + (f", float[N, {directions}, {HIDDEN}] hb" if initial else "")
    inputs += ", int32[N] lens" if lengths else ""
    declared = {"y": f"float[{steps}, {directions}, N, {HIDDEN}] y", "y_h": f"float[{directions}, N, {HIDDEN}] y_h"}
    weights = [f"float[{directions}, {3 * HIDDEN}, {FEATURES}] w = {{{values((directions, 3 * HIDDEN, FEATURES), 1)}}}",
               f"float[{directions}, {3 * HIDDEN}, {HIDDEN}] r = {{{values((directions, 3 * HIDDEN, HIDDEN), 2)}}}"]
    if bias:
        weights.append(f"float[{directions}, {6 * HIDDEN}] b = {{{values((directions, 6 * HIDDEN), 3)}}}")
    arguments = ["x", "w", "r", "b" if bias else "", "lens" if lengths else "", "h0" if initial else ""]
    while arguments[-1] == "":
        arguments.pop()
    results = outputs.split(", ")
    node_outputs = ", ".join(name if name in results else "" for name in ("y", "y_h")).rstrip(", ")
    return f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g ({inputs}) => ({", ".join(declared[name] for name in results)}) <{", ".join(weights)}> {{
        x = Transpose<perm = [1, 0, 2]>(xb)
        {"h0 = Transpose<perm = [1, 0, 2]>(hb)" if initial else ""}
        {node_outputs} = GRU<hidden_size = {HIDDEN}, direction = "{direction}",
                             linear_before_reset = {linear_before_reset}{extra_attrs}>({", ".join(arguments)})
    }}"""


def unrolled(text: str, **options) -> onnx.ModelProto:
    """The model after gru_fix, checked: no GRU left, same outputs at several batch sizes, idempotent."""
    model = model_from_text(text)
    rewritten = apply_pass("gru_fix", model, **options)
    assert not [node for node in rewritten.graph.node if node.op_type == "GRU"]
    assert rewritten.opset_import == model.opset_import
    assert_same_outputs(model, rewritten, BATCHES, atol=1e-5, rtol=1e-4)
    assert_idempotent("gru_fix", model, **options)
    return rewritten


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("initial", [False, True])
def test_pytorch_style_grus_are_unrolled_in_every_direction(direction: str, initial: bool) -> None:
    unrolled(gru_text(direction, initial=initial))


@pytest.mark.parametrize("outputs", ["y", "y_h"])
def test_either_output_alone(outputs: str) -> None:
    unrolled(gru_text("bidirectional", outputs=outputs))


def test_without_bias_and_with_the_default_activations_spelled_out() -> None:
    unrolled(gru_text(bias=False, extra_attrs=', activations = ["Sigmoid", "Tanh"]'))


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_linear_before_reset_0_is_left_unless_scope_is_all(direction: str) -> None:
    text = gru_text(direction, linear_before_reset=0, initial=True)
    _, record = apply_pass_with_record("gru_fix", model_from_text(text))
    assert not record.changed
    unrolled(text, scope="all")


@pytest.mark.parametrize("text, why", [
    (gru_text(steps="T"), "its sequence length is not known"),
    (gru_text(extra_attrs=", clip = 2.0"), "it clips"),
    (gru_text(extra_attrs=', activations = ["Sigmoid", "Relu"]'), "its activations ['Sigmoid', 'Relu'] are not the default"),
    (gru_text(steps=600), "its sequence has 600 steps, over max_steps=512"),
    (gru_text(lengths=True), "it takes sequence_lens"),
])
def test_what_cannot_be_unrolled_is_left_and_named(text: str, why: str) -> None:
    model = model_from_text(text)
    _, record = apply_pass_with_record("gru_fix", model)
    assert not record.changed
    (finding,) = gru_fix.detect(gs.import_onnx(model), gru_fix.GruFixOptions())
    assert "linear_before_reset=1 (PyTorch's GRU): onnx-tf 1.10 cannot convert it" in finding.message
    assert f"gru_fix cannot unroll it: {why}" in finding.message


def weights_as_initializers(case: BackendCase) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The case's model with W, R and B (graph inputs there) as initializers, and the inputs left to feed."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    weights = {"W", "R", "B"}
    feed = [array for value, array in zip(model.graph.input, case.inputs) if value.name not in weights]
    for value, array in zip(list(model.graph.input), case.inputs):
        if value.name in weights:
            model.graph.initializer.append(onnx.numpy_helper.from_array(array, value.name))
            model.graph.input.remove(value)
    return model, feed


def test_the_onnx_backend_gru_cases_still_pass_unrolled() -> None:
    """The cases shipped with onnx (linear_before_reset=0), with their weights fixed, unrolled with scope=all."""
    cases, unrolled_cases = backend_node_cases(["gru"]), []
    for case in cases:
        model, feed = weights_as_initializers(case)
        rewritten, record = apply_pass_with_record("gru_fix", model, scope="all")  # onnxruntime lacks layout=1
        for got, want in zip(run_onnx(rewritten, feed), case.outputs):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=case.name)
        if record.changed:
            unrolled_cases.append(case.name)
    # onnx 1.18 ships 4 such cases; the case code of later wheels adds reverse and bidirectional ones
    assert {"test_gru_batchwise", "test_gru_defaults", "test_gru_seq_length", "test_gru_with_initial_bias"} <= set(
        unrolled_cases)
    assert unrolled_cases == [case.name for case in cases]


class Recurrent(torch.nn.Module):
    """What an audio or text model feeds a GRU: two layers, both directions, batch first."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, hidden = self.gru(x)
        return self.head(out[:, -1]) + hidden.sum(0).mean(-1, keepdim=True)


def recurrent() -> torch.nn.Module:
    return Recurrent()


@pytest.mark.tf
def test_pytorch_gru_serves_after_gru_fix(tmp_path: Path) -> None:
    options = {"torch": {"input_shapes": ["1,6,3"]}}
    with pytest.raises(SurgeonError, match="GRU with linear_before_reset is not supported") as refused:
        surgeon.run(f"{__file__}:recurrent", tmp_path / "plain", plugins=["dynamic_batch"], options=options)
    failed = re.search(r"conversion failed at node '([^']+)' \(GRU\)", str(refused.value))
    assert failed, str(refused.value)
    # the node onnx-tf failed on, and only the pass that fixes it: dynamic_batch detects nothing there
    assert refused.value.hint.startswith(f"add gru_fix to --plugins, which detects node {failed[1]!r} (GRU): "
                                         "linear_before_reset=1")
    assert "dynamic_batch" not in refused.value.hint
    report = surgeon.run(f"{__file__}:recurrent", tmp_path / "out", plugins=["dynamic_batch", "gru_fix"],
                         batch_sizes=[1, 3, 8], options=options)
    assert all(row["ok"] for row in report["parity"])
    assert {row["batch"] for row in report["parity"] if row["stage"] == "saved_model"} == {1, 3, 8}
    (record,) = [plugin for plugin in report["plugins"] if plugin["name"] == "gru_fix"]
    assert len(record["details"]["unrolled"]) == 2  # one GRU node per layer
