"""TensorFlow's log noise stays off the user's stderr, in the converting process and in the serving child.

TensorFlow 2.21 logs through absl while its libraries load ("WARNING: All log
messages before absl::InitializeLog() is called are written to STDERR", then
"I0000 ... port.cc:153] oneDNN custom operations are on ...", "I0000 ...
cudart_stub.cc:31] Could not find cuda drivers ..."), which
TF_CPP_MIN_LOG_LEVEL does not silence; TensorFlow 2.15 logs as
"2024-01-01 00:00:00.000000: I tensorflow/...".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from surgeon import device
from surgeon.testing import run_onnx

NOISE = re.compile(
    r"absl::InitializeLog|oneDNN|cudart_stub|cuda drivers|cpu_feature_guard|TensorRT|Unable to register"
    r"|^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]"  # absl's and glog's prefix
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ",  # TensorFlow 2.15's
    re.MULTILINE)

def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def user_environment() -> dict[str, str]:
    """The environment of a user who set nothing: TF_CPP_MIN_LOG_LEVEL unset (a test may have set it here)."""
    return {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.fixture(scope="module")
def converted(tiny_file):
    """``surgeon run`` on a small model in a fresh process: it converts, then verifies in a serving child."""
    folder = tiny_file.parent
    result = subprocess.run([sys.executable, "-m", "surgeon", "run", str(tiny_file), "-o",
                             str(folder / "out")], capture_output=True, text=True, env=user_environment(),
                            cwd=folder, timeout=600)
    return result, folder / "out"


@pytest.mark.tf
def test_a_run_shows_its_stages_and_no_tensorflow_noise(converted):
    result, _ = converted
    assert result.returncode == 0, result.stderr
    for line in ("converting to TensorFlow with onnx_tf", "convert: done in", "parity:", "verify: done in"):
        assert line in result.stderr
    assert noise(result.stderr) == [], result.stderr


@pytest.mark.tf
def test_the_serving_child_writes_no_tensorflow_noise(converted, tmp_path):
    """The child as ``surgeon.serving.run_in_fresh_process`` starts it; with --verbose its stderr is the user's."""
    result, out = converted
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", count=np.array(1), inputs=np.array([i.name for i in model.graph.input]),
             outputs=np.array([o.name for o in model.graph.output]), feed0_0=x)
    child = subprocess.run([sys.executable, "-m", "surgeon.serving", str(out / "saved_model"),
                            str(tmp_path / "feeds.npz"), str(tmp_path / "results.npz")],
                           capture_output=True, text=True, env={**user_environment(), "TF_CPP_MIN_LOG_LEVEL": "3"},
                           cwd=tmp_path, timeout=300)
    assert child.returncode == 0, child.stderr
    with np.load(tmp_path / "results.npz") as results:
        np.testing.assert_allclose(results["result0_0"], run_onnx(model, [x])[0], rtol=1e-5, atol=1e-6)
    assert noise(child.stderr) == [], child.stderr


def test_what_is_held_back_is_dropped_on_success_and_shown_on_failure(capfd):
    with device.stderr_held_back():
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] noise\n")
    with pytest.raises(RuntimeError), device.stderr_held_back():
        os.write(2, b"why the import failed\n")
        raise RuntimeError
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "why the import failed\nafter\n"


@pytest.mark.parametrize("level, verbose, held", [
    (None, False, False),  # TensorFlow's default: every log
    ("0", False, False),
    ("1", False, True),
    ("3", False, True),  # surgeon's default
    ("3", True, False),  # --verbose
    ("loud", False, False),  # TensorFlow reads it as 0
])
def test_tensorflow_speaks_while_it_loads_only_when_asked(monkeypatch, level, verbose, held):
    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    monkeypatch.setattr(device, "verbose", lambda: verbose)
    assert device.holds_back_import_logs() is held
