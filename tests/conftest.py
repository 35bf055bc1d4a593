"""Shared fixtures: tiny ONNX models and plugin files written on the fly; ``--graph-only``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from surgeon.testing import model_from_text

GRAPH_ONLY = Path(__file__).parent / "graph_only"  # its sitecustomize makes TensorFlow unimportable


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--graph-only", action="store_true",
                     help="run only the tests that need no TensorFlow (not marked tf), with TensorFlow unimportable "
                          "in the test process and in every Python process it starts")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--graph-only"):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GRAPH_ONLY), os.environ.get("PYTHONPATH")]))
        spec = importlib.util.spec_from_file_location("graph_only_site", GRAPH_ONLY / "sitecustomize.py")
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # this process too


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--graph-only"):
        return
    kept = [item for item in items if item.get_closest_marker("tf") is None]
    config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("tf") is not None])
    items[:] = kept

# y = Relu(x) @ w + b, with an exporter-style output name
TINY_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
tiny (float[N, 4] x) => (float[N, 3] add_17)
<float[4, 3] w = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2}, float[3] b = {0.5, -0.5, 0.25}>
{
    r = Relu(x)
    m = MatMul(r, w)
    add_17 = Add(m, b)
}
"""


# two inputs of two dtypes, two outputs, a dynamic batch: what the serving writers' configs and requests describe
TWO_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
two (float[N, 3, 4] pixels, int64[N, 2] ids) => (float[N, 3] features, float[N] score)
<int64[1] axes = {1}>
{
    features = ReduceMean <axes = [2], keepdims = 0> (pixels)
    total = ReduceSum <keepdims = 0> (features, axes)
    ids_float = Cast <to = 1> (ids)
    id_total = ReduceSum <keepdims = 0> (ids_float, axes)
    score = Sub(id_total, total)
}
"""


@pytest.fixture
def two_model() -> onnx.ModelProto:
    return model_from_text(TWO_TEXT)


@pytest.fixture(scope="module")
def two_path(tmp_path_factory) -> Path:
    """The two-input model as a file, for module-wide runs."""
    path = tmp_path_factory.mktemp("models") / "two.onnx"
    onnx.save(model_from_text(TWO_TEXT), str(path))
    return path


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    return model_from_text(TINY_TEXT)


@pytest.fixture
def tiny_path(tmp_path: Path, tiny_model: onnx.ModelProto) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    """The tiny model as a file, for module-wide runs."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model_from_text(TINY_TEXT), str(path))
    return path


@pytest.fixture
def write_plugin(tmp_path: Path):
    """Write a plugin file from source text; return its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def cli():
    """Run the surgeon command line in a fresh process."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "surgeon", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=cwd, timeout=600)

    return run


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put an nvidia-smi on PATH whose ``-L`` prints ``listing``; CUDA_VISIBLE_DEVICES starts unset."""

    def install(listing: str) -> None:
        (tmp_path / "nvidia-smi.txt").write_text(listing)
        script = tmp_path / "nvidia-smi"
        script.write_text(f"#!/bin/sh\ncat '{tmp_path / 'nvidia-smi.txt'}'\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # so that the value select() sets is undone after the test
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    return install


@pytest.fixture
def dynamo_exporter() -> None:
    """Skip where the dynamo exporter's packages are absent: the TensorFlow 2.15 stack cannot have them."""
    for module in ("onnxscript", "onnx_ir"):
        pytest.importorskip(module, reason="the dynamo exporter needs onnxscript and onnx-ir (ml-dtypes >= 0.5)")
