"""Every architecture of bench/zoo.py comes out servable: converted, and in a fresh process equal to PyTorch at
batch 1, 3 and 8 (surgeon's own parity check). bench/architectures.py compares the recipe done by hand."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon_plugins.sources.torch import parse_input_shape

ZOO = Path(__file__).parents[1] / "bench" / "zoo.py"
PLUGINS = ["dynamic_batch", "pool_fix", "gru_fix", "opset_compat", "rename_outputs"]


def zoo_module():
    spec = importlib.util.spec_from_file_location("zoo", ZOO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ZOO_MODULE = zoo_module()
SHAPES, SEQUENCE_AXES = ZOO_MODULE.SHAPES, ZOO_MODULE.SEQUENCE_AXES


def convert(name: str, out: Path, **torch_options) -> dict:
    return surgeon.run(f"{ZOO}:build", out, plugins=PLUGINS, batch_sizes=[1, 3, 8],
                       options={"torch": {"kwargs": {"name": name}, "input_shapes": SHAPES[name], **torch_options}})


def assert_served_at_every_batch(report: dict) -> None:
    assert all(row["ok"] for row in report["parity"])
    served = {(row["batch"], row["check"]) for row in report["parity"] if row["stage"] == "saved_model"}
    assert {(1, "vs reference"), (3, "vs reference"), (8, "vs reference"), (8, "per-sample")} <= served


@pytest.mark.tf
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_architecture_serves(name: str, tmp_path: Path) -> None:
    assert_served_at_every_batch(convert(name, tmp_path / "out"))


@pytest.mark.tf
@pytest.mark.parametrize("name", sorted(SEQUENCE_AXES))
def test_text_model_serves_every_sequence_length_from_one_saved_model(name: str, tmp_path: Path) -> None:
    report = surgeon.run(f"{ZOO}:build", tmp_path / "out", plugins=PLUGINS, batch_sizes=[1, 3, 8],
                         axis_sizes={"seq": [8, 16, 32]},
                         options={"torch": {"kwargs": {"name": name}, "input_shapes": SHAPES[name],
                                            "dynamic_axes": ZOO_MODULE.dynamic_sequence(name)}})
    assert all(row["ok"] for row in report["parity"]), [row for row in report["parity"] if not row["ok"]]
    served = {(row["batch"], row["sizes"]["seq"]) for row in report["parity"] if row["stage"] == "saved_model"}
    assert served == {(batch, length) for batch in (1, 3, 8) for length in (8, 16, 32)}


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_architecture_serves_through_the_dynamo_exporter(name: str, dynamo_exporter, tmp_path: Path) -> None:
    report = convert(name, tmp_path / "out", dynamo=True)
    assert report["export"]["exporter"] == "dynamo"
    assert_served_at_every_batch(report)


@pytest.mark.parametrize("name", sorted(SEQUENCE_AXES))
def test_sequence_axes_are_the_text_models_sequence_axes(name: str) -> None:
    """SEQUENCE_AXES names forward() parameters, and the models run with those axes at another length (8 for the
    exported 12 or 16): the length follows into a per-token output, and a per-sequence output keeps its shape."""
    model = ZOO_MODULE.build(name)
    parameters = list(inspect.signature(model.forward).parameters)
    specs = dict(zip(parameters, map(parse_input_shape, SHAPES[name])))
    axes = dict(entry.split(":") for entry in SEQUENCE_AXES[name].split(","))
    assert set(axes) <= set(specs)
    generator = torch.Generator().manual_seed(0)

    def outputs(length: int) -> torch.Tensor:
        shapes = {input_name: [length if str(axis) == axes.get(input_name) else size
                               for axis, size in enumerate(spec.shape)] for input_name, spec in specs.items()}
        with torch.no_grad():
            return model(*(torch.randint(0, 4, shapes[input_name], generator=generator) for input_name in specs))

    exported, shorter = outputs(specs[parameters[0]].shape[1]), outputs(8)
    assert shorter.shape == (exported.shape[:1] + (8,) + exported.shape[2:] if exported.dim() == 3
                             else exported.shape)


def bench_module():
    spec = importlib.util.spec_from_file_location("architectures", ZOO.with_name("architectures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_onnx_file_section_is_spliced_into_the_results_leaving_the_rest() -> None:
    """``architectures.py --onnx-sequence-only`` replaces its own section of the results file, or adds it at the
    end, and leaves every other line as it was."""
    bench = bench_module()
    section = bench.onnx_sequence_section([("bert", "ok at 9 batch x seq", 8.0), ("text_lstm", "fails: a | b", 9.0)],
                                          "TensorFlow 2.21.0")
    assert section[0] == bench.ONNX_SEQUENCE_TITLE and "**1 of 2** serve." in section[2]
    assert section[-1] == "| text_lstm | fails: a / b (9 s) |"
    before = "# Architectures\n\n| a |\n\n## Text models with a dynamic sequence\n\n| b |\n"
    added = bench.spliced(before, section)
    assert added == before + "\n" + "\n".join(section) + "\n"
    newer = [bench.ONNX_SEQUENCE_TITLE, "", "newer"]
    assert bench.spliced(added, newer) == before + "\n" + "\n".join(newer) + "\n"  # replaced, at the end
    later = "\n## Later\n\nkept\n"
    assert bench.spliced(added + later, newer) == before + "\n" + "\n".join(newer) + "\n" + later  # in the middle


@pytest.mark.parametrize("name", sorted(SEQUENCE_AXES))
def test_an_onnx_file_is_checked_only_at_lengths_up_to_its_export_length(name: str) -> None:
    bench = bench_module()
    lengths = bench.onnx_sequence_lengths(name)
    names, axes = bench.sequence_inputs(name)
    assert [f"{input_name}:{axis}:seq" for input_name, axis in axes.items()] == ZOO_MODULE.dynamic_sequence(name)
    assert lengths[-1] == bench.export_length(name) == parse_input_shape(SHAPES[name][0]).shape[1]
    assert len(lengths) == 3 and lengths == sorted(set(lengths))
