"""The example plugin package in examples/preprocess_images, installed through its entry point.

The served SavedModel, fed raw uint8 NHWC images, must match PyTorch fed the normalized NCHW tensors.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PACKAGE = Path(__file__).parent.parent / "examples" / "preprocess_images"
NET = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, pixels):
        return self.head(torch.relu(self.conv(pixels)).mean((2, 3)))

def build():
    return Net().eval()
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(PACKAGE)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return {**os.environ, "PYTHONPATH": str(site)}


def test_package_tests_pass_when_installed(env):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")],
                            capture_output=True, text=True, env=env, cwd=PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tf
def test_served_model_takes_raw_images_and_matches_pytorch_on_normalized_tensors(env, tmp_path, cli):
    net = tmp_path / "net.py"
    net.write_text(NET)
    out = tmp_path / "out"
    result = cli("run", f"{net}:build", "--input-shape", "1,3,8,8", "-o", out, "--batch-sizes", "1,3",
                 "--plugins", "preprocess_images,dynamic_batch,rename_outputs",
                 "--set", "preprocess_images.mean=0.485,0.456,0.406", "--set", "preprocess_images.std=0.229,0.224,0.225",
                 env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert {(row["stage"], row["batch"]) for row in report["parity"]} >= {("saved_model", 1), ("saved_model", 3)}
    assert all(row["ok"] for row in report["parity"])

    from surgeon.saved_model_info import read_meta_graph, signatures
    from surgeon.serving import run_in_fresh_process

    (image,) = signatures(read_meta_graph(out / "saved_model"))["serving_default"]["inputs"]
    assert image == {"name": "images", "dtype": "uint8", "shape": [None, 8, 8, 3]}
    raw = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    served = run_in_fresh_process(out / "saved_model", [[raw]], ["images"], ["output"])[0][0]

    sys.path.insert(0, str(tmp_path))
    try:
        import torch
        from net import build
    finally:
        sys.path.remove(str(tmp_path))
    normalized = (raw.transpose(0, 3, 1, 2) / np.float32(255) - np.array([0.485, 0.456, 0.406], np.float32)
                  .reshape(1, 3, 1, 1)) / np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = build()(torch.from_numpy(normalized.astype(np.float32))).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-4)
