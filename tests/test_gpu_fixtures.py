"""What only a GPU machine could show, replayed here from files recorded on an H200 (tests/data/make_gpu_fixtures.py).

No GPU runs in these tests: the checkpoint and outputs were written by CUDA,
and the table of CUDA_VISIBLE_DEVICES values is what CUDA itself counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon import UsageError, device
from surgeon.serving import run_in_fresh_process
from surgeon_plugins.sources.torch.checkpoints import load_weights

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "cuda_training_checkpoint.pth"
VISIBILITY = json.loads((DATA / "cuda_visibility.json").read_text())


def cuda_net() -> nn.Module:
    """The model of make_gpu_fixtures.py (keep the two alike)."""
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 3))


def gpu_outputs() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA / "cuda_outputs.npz") as recorded:
        return recorded["inputs"], recorded["outputs"]


def test_the_fixture_checkpoint_holds_cuda_tensors() -> None:
    locations = set()

    def record(storage, location):
        locations.add(location)
        return storage

    torch.load(CHECKPOINT, map_location=record, weights_only=True)
    assert "cuda:0" in locations  # the weights; Adam keeps its step counts on the CPU


def test_a_training_checkpoint_written_on_a_gpu_loads_on_a_cpu_machine() -> None:
    model = cuda_net()
    load_weights(model, CHECKPOINT)
    inputs, expected = gpu_outputs()
    with torch.no_grad():
        computed = model.eval()(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.tf
def test_the_saved_model_serves_what_the_model_computed_on_the_gpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = surgeon.run(f"{__file__}:cuda_net", out, plugins=["dynamic_batch"],
                         options={"torch": {"weights": str(CHECKPOINT), "input_shapes": ["1,1,8,8"],
                                            "input_names": ["images"], "output_names": ["result"]}})
    assert all(row["ok"] for row in report["parity"])
    inputs, expected = gpu_outputs()
    [served] = run_in_fresh_process(out / "saved_model", [[inputs]], ["images"], ["result"])
    assert not isinstance(served, str), served
    np.testing.assert_allclose(served[0], expected, rtol=1e-4, atol=1e-5)


COUNTED = {value: count for value, count in VISIBILITY["device_count"].items() if isinstance(count, int)}


@pytest.mark.parametrize("visible", sorted(COUNTED))
def test_visible_gpus_count_what_cuda_counted_on_a_one_gpu_machine(fake_nvidia_smi, monkeypatch, visible: str) -> None:
    fake_nvidia_smi(VISIBILITY["nvidia_smi_L"])
    if visible != "<unset>":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert len(device.visible_gpus()) == COUNTED[visible]


def test_a_gpu_named_twice_which_cuda_refuses_is_narrowed_to_one(fake_nvidia_smi, monkeypatch) -> None:
    assert VISIBILITY["device_count"]["0,0"] == "cuInit error 101"  # CUDA_ERROR_INVALID_DEVICE
    fake_nvidia_smi(VISIBILITY["nvidia_smi_L"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    device.select(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_device_index_beyond_the_installed_gpus_is_refused(fake_nvidia_smi) -> None:
    fake_nvidia_smi(VISIBILITY["nvidia_smi_L"])
    with pytest.raises(UsageError, match=r"--device 1: no such GPU \(nvidia-smi -L lists GPU 0\)"):
        device.select("1")
    device.select("0")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
