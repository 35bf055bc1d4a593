"""--force replaces a previous surgeon output, and nothing else: never a folder holding a file the run reads, the
current or home folder, or a filesystem root. Each refusal leaves every file byte for byte as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

import surgeon
from surgeon import UsageError


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def refused(source, out: Path, match: str, **settings) -> None:
    before = snapshot(out)
    with pytest.raises(UsageError, match=match):
        surgeon.run(source, out, force=True, formats=["onnx"], verify=False, **settings)
    assert snapshot(out) == before


def test_the_folder_holding_the_source_is_never_replaced(tiny_path):
    (tiny_path.parent / "other.txt").write_text("beside the model")
    refused(tiny_path, tiny_path.parent, r"it holds .*tiny\.onnx, which this run reads")


def test_a_folder_holding_the_sources_external_data_is_never_replaced(tiny_model, tmp_path):
    model_folder = tmp_path / "model"
    (model_folder / "weights").mkdir(parents=True)
    for tensor in tiny_model.graph.initializer:  # external data holds raw bytes
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save(tiny_model, str(model_folder / "big.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights/big.bin", size_threshold=0)
    refused(model_folder / "big.onnx", model_folder / "weights", r"it holds .*big\.bin, which this run reads")


def test_a_folder_holding_the_checkpoint_or_a_plugin_file_is_never_replaced(tiny_path, tmp_path):
    out = tmp_path / "previous"
    surgeon.run(tiny_path, out, formats=["onnx"], verify=False)
    (out / "net.pth").write_bytes(b"a checkpoint")
    refused("example:ct-position", out, r"it holds .*net\.pth, which this run reads",
            options={"torch": {"weights": str(out / "net.pth")}})
    (out / "my_fix.py").write_text("# a plugin")
    refused(tiny_path, out, r"it holds .*my_fix\.py, which this run reads", plugin_paths=[out / "my_fix.py"])


def test_a_folder_holding_the_pipeline_file_is_never_replaced(tiny_path, tmp_path):
    out = tmp_path / "previous"
    surgeon.run(tiny_path, out, formats=["onnx"], verify=False)
    (out / "pipeline.toml").write_text(f'source = "{tiny_path}"\noutput = "."\nformat = ["onnx"]\nverify = false\n')
    before = snapshot(out)
    result = subprocess.run([sys.executable, "-m", "surgeon", "run", "--config", str(out / "pipeline.toml"),
                             "--force"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "pipeline.toml, which this run reads" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(out) == before


def test_the_current_and_home_folders_and_a_root_are_never_replaced(tiny_path, tmp_path, monkeypatch):
    out = tmp_path / "previous"
    surgeon.run(tiny_path, out, formats=["onnx"], verify=False)
    (out / "work").mkdir()
    monkeypatch.chdir(out / "work")
    refused(tiny_path, out, "it holds the current folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(out / "work"))
    refused(tiny_path, out, "it holds the home folder")
    with pytest.raises(UsageError, match="it is a filesystem root"):
        surgeon.run(tiny_path, Path("/"), force=True, formats=["onnx"], verify=False)


def test_only_a_previous_surgeon_output_is_replaced(tiny_path, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not a surgeon output")
    refused(tiny_path, out, "it is not a previous surgeon output")
    (out / "report.json").write_text("[1, 2]")  # a report.json that is not surgeon's
    refused(tiny_path, out, "it is not a previous surgeon output")

    previous = tmp_path / "previous"
    surgeon.run(tiny_path, previous, formats=["onnx"], verify=False)
    (previous / "stale.txt").write_text("from an older run")
    surgeon.run(tiny_path, previous, force=True, formats=["onnx"], verify=False)
    assert sorted(path.name for path in previous.iterdir()) == ["model.onnx", "report.json"]
