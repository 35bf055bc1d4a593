"""The bundled ct-position example: the recipe's 3D ResNet-34 CT classifier, through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from surgeon_plugins.examples import EXAMPLES, get
from surgeon_plugins.examples.ct_position import ct_position

EXAMPLE = EXAMPLES["ct-position"]


def test_registry_entry() -> None:
    assert get("ct-position") is EXAMPLE
    assert EXAMPLE.plugins == ("dynamic_batch", "pool_fix", "rename_outputs")
    assert EXAMPLE.full_input_shape == (1, 1, 128, 128, 128)
    assert EXAMPLE.input_shape[:2] == (1, 1) and EXAMPLE.input_shape[3] == EXAMPLE.input_shape[4]


def test_architecture_is_the_recipes_3d_resnet34() -> None:
    model = EXAMPLE.factory(input_shape=EXAMPLE.input_shape)
    conv1 = model.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (1, (7, 7, 7), (1, 2, 2), (3, 3, 3))
    assert (model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding) == (3, 2, 1)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    main_path = [m for name, m in model.named_modules() if isinstance(m, nn.Conv3d) and "downsample" not in name]
    assert len(main_path) + 1 == 34  # 33 convolutions and the linear head
    assert model.fc.out_features == 6
    assert model.avgpool.kernel_size == (2, 2, 2)  # ceil(32 / 16), ceil(64 / 32), ceil(64 / 32)
    # parameter names of the 3D ResNets the recipe trained, so their checkpoints load
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean", "layer4.2.bn2.weight", "fc.bias"} <= set(model.state_dict())


def test_full_size_pools_over_the_last_8x4x4_features() -> None:
    model = ct_position(EXAMPLE.full_input_shape)
    assert model.avgpool.kernel_size == (8, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in ct_position(EXAMPLE.input_shape).parameters())


def test_weights_are_deterministic_and_not_trivial() -> None:
    first, second = (ct_position(EXAMPLE.input_shape).state_dict() for _ in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert first["layer3.1.bn2.running_var"].std() > 0.1  # batch norm that really computes something
    volumes = torch.randn(3, *EXAMPLE.input_shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = ct_position(EXAMPLE.input_shape)(volumes)
    assert logits.shape == (3, 6) and torch.isfinite(logits).all()
    spread = (logits - logits.mean(0)).abs().max()
    assert spread > 10 * (1e-4 + 1e-3 * logits.abs().max())  # mixing samples would fail the parity check


@pytest.mark.parametrize("shape", [(1, 1, 32, 64, 48), (1, 32, 64, 64)])
def test_other_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"takes volumes N, C, D, H, W with square slices \(H == W\)"):
        ct_position(shape)


@pytest.mark.tf
def test_example_runs_the_whole_pipeline(cli, tmp_path: Path) -> None:
    """``surgeon run --example ct-position -o OUT``: exported at batch 1 as in the recipe, the example's
    plugins rewrite the flatten's frozen batch, and the SavedModel serves at batch 1 and 3."""
    result = cli("run", "--example", "ct-position", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["export"]["inputs"] == [{"name": "input", "shape": list(EXAMPLE.input_shape), "dtype": "float32"}]
    assert report["export"]["outputs"] == ["output"]
    assert [record["name"] for record in report["plugins"]] == list(EXAMPLE.plugins)
    dynamic_batch = next(record for record in report["plugins"] if record["name"] == "dynamic_batch")
    assert dynamic_batch["nodes_rewritten"] >= 1  # the Reshape to [1, -1] of x.view(x.size(0), -1)
    checked = {(row["stage"], row["batch"]) for row in report["parity"]}
    assert {("saved_model", 1), ("saved_model", 3)} <= checked
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.slow
def test_full_size_example(cli, tmp_path: Path) -> None:
    """The recipe's real input, 1x1x128x128x128, through the example's plugins to a verified SavedModel."""
    result = cli("run", "--example", "ct-position", "--input-shape", "1,1,128,128,128", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["export"]["inputs"][0]["shape"] == [1, 1, 128, 128, 128]
    assert {("saved_model", 3)} <= {(row["stage"], row["batch"]) for row in report["parity"]}
    assert all(row["ok"] for row in report["parity"])


@pytest.mark.slow
def test_example_with_the_dynamo_exporter(cli, dynamo_exporter, tmp_path: Path) -> None:
    """torch.export + the dynamo exporter at opset 18, made dynamic, lowered for onnx-tf, served."""
    out = tmp_path / "out"
    result = cli("run", "--example", "ct-position", "-o", out, "--set", "torch.dynamo=true",
                 "--plugins", "dynamic_batch,pool_fix,opset_compat,rename_outputs")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert (report["export"]["exporter"], report["export"]["opset"]) == ("dynamo", 18)
    assert {(row["stage"], row["batch"]) for row in report["parity"]} >= {("saved_model", 1), ("saved_model", 3)}
    assert all(row["ok"] for row in report["parity"])
