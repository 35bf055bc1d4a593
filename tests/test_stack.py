"""The stack that made a model: in report.json, in the SavedModel, and printed by `surgeon inspect`."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import onnx
import pytest

import surgeon
from surgeon import stack
from surgeon.saved_model_info import describe, format_description

NO_HEAVY_IMPORTS = "assert not {'tensorflow', 'torch', 'onnx_tf'} & set(sys.modules), sorted(sys.modules)"


def installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def run_output(tiny_file) -> Path:
    """A real run of a tiny ONNX model, with a SavedModel and a Triton repository."""
    surgeon.run(tiny_file, tiny_file.parent / "out", formats=["saved_model", "triton"], batch_sizes=[1, 3])
    return tiny_file.parent / "out"


def test_the_versions_are_the_installed_ones():
    versions = stack.installed_versions()
    assert versions["tensorflow"] == installed("tensorflow")
    assert versions["onnx-tf"] == installed("onnx-tf")
    assert versions["onnx"] == installed("onnx") == onnx.__version__
    assert versions["torch"] == installed("torch")
    assert versions["onnxruntime"] == (installed("onnxruntime") or installed("onnxruntime-gpu"))
    assert versions["numpy"] == installed("numpy")
    assert versions["python"] == platform.python_version()
    assert versions["surgeon"] == surgeon.__version__
    assert versions["tensorflow"] and versions["onnx-tf"] and versions["onnx"]  # what converts: installed here


def test_a_package_not_installed_is_absent_not_an_error(monkeypatch):
    monkeypatch.setitem(stack.PACKAGES, "torch", ("surgeon-no-such-package",))
    monkeypatch.setitem(stack.PACKAGES, "tensorflow", ("surgeon-no-such-package", "numpy"))  # the next one found
    versions = stack.installed_versions()
    assert versions["torch"] is None
    assert versions["tensorflow"] == installed("numpy")
    assert "torch not installed" in stack.format_stack(versions)


def test_reading_the_versions_imports_neither_tensorflow_nor_torch():
    check = f"import sys, json; from surgeon.stack import installed_versions; installed_versions(); {NO_HEAVY_IMPORTS}"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("version, minor", [("2.21.0", "2.21"), ("2.15.1", "2.15"), ("2.22.0-dev20260101", "2.22"),
                                            ("2.16.0rc0", "2.16"), ("", None), (None, None), ("unknown", None)])
def test_minor_version(version, minor):
    assert stack.minor_version(version) == minor


def test_serve_with_the_same_tensorflow_or_newer():
    assert stack.serve_with("2.21.0") == "TensorFlow >= 2.21 (TF Serving 2.21 or newer)"
    assert stack.serve_with("2.15.1") == "TensorFlow >= 2.15 (TF Serving 2.15 or newer)"
    assert stack.serve_with("") is None


@pytest.mark.tf
def test_report_json_carries_the_stack(run_output):
    report = json.loads((run_output / "report.json").read_text())
    assert report["stack"] == stack.installed_versions()
    assert report["stack"]["tensorflow"] == installed("tensorflow")
    # the record does not disturb loading: verification served the SavedModel in a fresh TensorFlow
    served = [row for row in report["parity"] if row["stage"] == "saved_model"]
    assert served and all(row["ok"] for row in served)


@pytest.mark.tf
def test_every_saved_model_of_the_run_carries_the_record(run_output):
    copies = [run_output / "saved_model", run_output / "triton" / "tiny" / "1" / "model.savedmodel"]
    for folder in copies:
        record = json.loads((folder / "assets.extra" / "surgeon.json").read_text())
        assert record["stack"] == stack.installed_versions(), folder
        assert stack.read_record(folder) == stack.installed_versions()
    assert not (run_output / "triton" / "tiny_onnx" / "1" / "assets.extra").exists()


@pytest.mark.tf
def test_inspect_prints_the_stack_and_what_serves_it(run_output):
    info = describe(run_output / "saved_model")
    assert info["tensorflow"] == installed("tensorflow")
    assert info["tensorflow_git_version"]
    assert info["stack"] == stack.installed_versions()
    assert info["stack_problem"] is None
    lines = format_description(info).splitlines()
    versions = stack.installed_versions()
    assert lines[1] == "made with: " + stack.format_stack(versions)
    assert lines[1].startswith(f"made with: TensorFlow {installed('tensorflow')}, onnx-tf {installed('onnx-tf')}, "
                               f"onnx {installed('onnx')}, torch {installed('torch') or 'not installed'}, ")
    assert f"Python {platform.python_version()}, surgeon {surgeon.__version__}" in lines[1]
    minor = ".".join(installed("tensorflow").split(".")[:2])
    assert lines[2] == f"serve with: TensorFlow >= {minor} (TF Serving {minor} or newer)"


@pytest.mark.tf
def test_surgeon_inspect_prints_the_stack_without_importing_tensorflow(run_output):
    check = ("import sys; from surgeon.cli import main; code = main(['inspect', sys.argv[1]]); "
             f"{NO_HEAVY_IMPORTS}; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", check, str(run_output / "saved_model")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"made with: TensorFlow {installed('tensorflow')}, onnx-tf {installed('onnx-tf')}" in result.stdout
    assert "serve with: TensorFlow >= " in result.stdout


@pytest.mark.tf
def test_surgeon_inspect_json_carries_the_stack(run_output, tmp_path):
    copy = tmp_path / "elsewhere"  # a SavedModel copied away from its report.json
    subprocess.run(["cp", "-r", str(run_output / "saved_model"), str(copy)], check=True)
    result = subprocess.run([sys.executable, "-m", "surgeon", "inspect", "--json", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["stack"] == stack.installed_versions()
    assert info["serve_with"].startswith("TensorFlow >= ")


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory) -> Path:
    """A SavedModel saved with tf.saved_model.save, in a process of its own: no surgeon record in it."""
    folder = tmp_path_factory.mktemp("plain") / "saved_model"
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf

        class Double(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
            def __call__(self, x):
                return {"y": x * 2.0}

        module = Double()
        tf.saved_model.save(module, sys.argv[1], signatures=module.__call__)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (folder / "assets.extra").exists()
    return folder


@pytest.mark.tf
def test_inspect_of_a_saved_model_without_the_record(plain_saved_model):
    result = subprocess.run([sys.executable, "-m", "surgeon", "inspect", str(plain_saved_model)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    version = installed("tensorflow")
    minor = ".".join(version.split(".")[:2])
    assert lines[1] == (f"made with: TensorFlow {version} (no assets.extra/surgeon.json: "
                        "the rest of the stack is not recorded)")
    assert lines[2] == f"serve with: TensorFlow >= {minor} (TF Serving {minor} or newer)"
    info = describe(plain_saved_model)
    assert info["tensorflow"] == version and info["stack"] is None and info["stack_problem"] is None


@pytest.mark.tf
def test_an_unreadable_record_is_named_not_fatal(plain_saved_model, tmp_path):
    copy = tmp_path / "saved_model"
    subprocess.run(["cp", "-r", str(plain_saved_model), str(copy)], check=True)
    (copy / "assets.extra").mkdir()
    (copy / "assets.extra" / "surgeon.json").write_text("{not json")
    with pytest.raises(ValueError, match="surgeon.json is unreadable"):
        stack.read_record(copy)
    info = describe(copy)
    assert info["stack"] is None and "unreadable" in info["stack_problem"]
    made_with = format_description(info).splitlines()[1]
    assert made_with.startswith(f"made with: TensorFlow {installed('tensorflow')} (assets.extra/surgeon.json is "
                                "unreadable (JSONDecodeError")
    assert info["serve_with"].startswith("TensorFlow >= ")


def test_the_record_round_trips(tmp_path):
    versions = {"tensorflow": "2.15.1", "onnx-tf": "1.10.0", "torch": None, "python": "3.11.7"}
    path = stack.write_record(tmp_path, versions)
    assert path == tmp_path / "assets.extra" / "surgeon.json"
    assert stack.read_record(tmp_path) == versions
    assert stack.read_record(tmp_path / "missing") is None
    assert stack.format_stack(versions) == "TensorFlow 2.15.1, onnx-tf 1.10.0, torch not installed, Python 3.11.7"
