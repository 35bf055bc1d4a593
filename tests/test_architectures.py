"""Every architecture of bench/zoo.py comes out servable: converted, and in a fresh process equal to PyTorch at
batch 1, 3 and 8 (surgeon's own parity check). bench/architectures.py compares the recipe done by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import surgeon

pytestmark = pytest.mark.tf  # every test here converts with TensorFlow

ZOO = Path(__file__).parents[1] / "bench" / "zoo.py"
PLUGINS = ["dynamic_batch", "pool_fix", "gru_fix", "opset_compat", "rename_outputs"]


def zoo_module():
    spec = importlib.util.spec_from_file_location("zoo", ZOO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHAPES = zoo_module().SHAPES


def convert(name: str, out: Path, **torch_options) -> dict:
    return surgeon.run(f"{ZOO}:build", out, plugins=PLUGINS, batch_sizes=[1, 3, 8],
                       options={"torch": {"kwargs": {"name": name}, "input_shapes": SHAPES[name], **torch_options}})


def assert_served_at_every_batch(report: dict) -> None:
    assert all(row["ok"] for row in report["parity"])
    served = {(row["batch"], row["check"]) for row in report["parity"] if row["stage"] == "saved_model"}
    assert {(1, "vs reference"), (3, "vs reference"), (8, "vs reference"), (8, "per-sample")} <= served


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_architecture_serves(name: str, tmp_path: Path) -> None:
    assert_served_at_every_batch(convert(name, tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_architecture_serves_through_the_dynamo_exporter(name: str, dynamo_exporter, tmp_path: Path) -> None:
    report = convert(name, tmp_path / "out", dynamo=True)
    assert report["export"]["exporter"] == "dynamo"
    assert_served_at_every_batch(report)
