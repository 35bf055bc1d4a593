"""The parity check end to end: NaN and Inf (the same on both sides is equal, on one side only fails, saying
where, and no Python warning reaches the terminal); the hint of a failure; a whole run that diverges just over or
just under the default tolerance, and --atol, --rtol and their pipeline-file keys moving that verdict; a model
that mixes samples across the batch; a PyTorch source checked against PyTorch itself."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import surgeon
from surgeon.fuzzing import cli_in_process
from surgeon.testing import model_from_text
from surgeon.verify import compare

NAN, INF = float("nan"), float("inf")


def verdict(got, want, atol=1e-5, rtol=1e-4):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would reach the user's terminal
        (row,) = compare("saved_model", 2, [np.array(got, np.float32)], [np.array(want, np.float32)], atol, rtol)
    return row


@pytest.mark.parametrize("values", [[NAN, 1.0], [INF, 1.0], [-INF, 1.0], [NAN, INF, -INF, 0.0]])
def test_the_same_nan_or_inf_on_both_sides_is_equal(values):
    row = verdict(values, values)
    assert row["ok"] and row["max_abs"] == 0.0 and "error" not in row


@pytest.mark.parametrize("got, want, count", [
    ([NAN, 1.0], [0.5, 1.0], 1),  # NaN here only
    ([0.5, 1.0], [NAN, 1.0], 1),  # NaN in the reference only
    ([INF, 1.0], [-INF, 1.0], 1),  # Inf of the other sign
    ([INF, NAN, 1.0], [1.0, 2.0, 1.0], 2),
])
def test_nan_or_inf_on_one_side_fails_saying_how_many_and_where(got, want, count):
    row = verdict(got, want)
    assert not row["ok"]
    assert row["error"].startswith(f"{count} of {len(want)} values are NaN or Inf on one side only (first at [")


def test_finite_values_beside_nan_are_still_compared():
    assert not verdict([NAN, 1.0], [NAN, 1.1])["ok"]
    assert verdict([NAN, 1.0], [NAN, 1.0 + 1e-7])["ok"]


@pytest.mark.tf
def test_a_model_that_computes_nan_and_inf_serves_and_verifies_without_warnings(tmp_path):
    """Sqrt of negative inputs is NaN, a division by zero Inf: onnxruntime and TensorFlow agree, sample by sample."""
    path = tmp_path / "special.onnx"
    onnx.save(model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, 8] x) => (float[N, 8] root, float[N, 8] ratio) {
            root = Sqrt(x)
            zero = Sub(x, x)
            ratio = Div(x, zero)
        }
    """), str(path))
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "surgeon", "run", str(path),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["parity"]
    assert {row["stage"] for row in rows} == {"onnx", "saved_model"} and all(row["ok"] for row in rows)


def row(batch, check, ok):
    return {"stage": "saved_model", "batch": batch, "check": check, "output": "y", "ok": ok}


def test_the_hint_names_dynamic_batch_only_where_it_can_help():
    from surgeon.verify import failure_hint

    baked = [row(1, "vs reference", True), row(3, "vs reference", False), row(3, "per-sample", False)]
    assert "--plugins dynamic_batch makes it dynamic" in failure_hint(baked, baked[1], [], ["dynamic_batch"])
    assert "no installed pass makes a batch dynamic" in failure_hint(baked, baked[1], [], [])
    assert "dynamic_batch ran" in failure_hint(baked, baked[1], ["dynamic_batch"], [])
    numerical = [row(1, "vs reference", True), row(3, "vs reference", False), row(3, "per-sample", True)]
    hint = failure_hint(numerical, numerical[1], ["dynamic_batch"], [])
    assert "no sample is mixed" in hint and "--atol" in hint and "dynamic_batch makes" not in hint
    at_one = [row(1, "vs reference", False)]
    assert failure_hint(at_one, at_one[0], [], ["dynamic_batch"]) == "nothing was written; --no-verify skips this check"


# ---------------------------------------------------------------- the verdict end to end, at its boundary

# Each sample of y has its largest magnitude exactly 1 (x over its own largest |x|), so a stage computing
# y * factor differs from the reference by at most |factor - 1|, reached at that largest value. The default
# tolerance there is atol 1e-4 + rtol 1e-3 * 1, written out here: a changed default must fail these tests.
UNIT_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
unit (float[N, 8] x) => (float[N, 8] y) {
    magnitude = Abs(x)
    largest = ReduceMax <axes = [1], keepdims = 1> (magnitude)
    y = Div(x, largest)
}
"""
ALLOWED = 1.1e-3
UNDER, OVER = 1 + 0.99 * ALLOWED, 1 + 1.01 * ALLOWED

SCALE_PASS = """
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from surgeon import RewritePass, hookimpl


@dataclass(frozen=True)
class ScaleOptions:
    factor: float = 1.0


def scale(graph, options):
    out = graph.outputs[0]
    scaled = gs.Variable(f"{out.name}_scaled", dtype=out.dtype, shape=out.shape)
    factor = gs.Constant("factor", np.array(options.factor, np.float32))
    graph.nodes.append(gs.Node("Mul", name="scale", inputs=[out, factor], outputs=[scaled]))
    graph.outputs[0] = scaled


@hookimpl
def surgeon_passes():
    return [RewritePass(name="scale", doc="Multiplies the output by a factor.", options=ScaleOptions, run=scale)]
"""


@pytest.fixture
def unit_path(tmp_path):
    path = tmp_path / "unit.onnx"
    onnx.save(model_from_text(UNIT_TEXT), str(path))
    return path


@pytest.fixture
def scale_pass(write_plugin):
    return write_plugin("scale", SCALE_PASS)


def scaled_run(source: Path, out: Path, plugin: Path, factor: float) -> dict:
    """``surgeon.run`` of ``source`` with its output multiplied by ``factor``, checked on onnxruntime only."""
    return surgeon.run(source, out, formats=["onnx"], plugins=["scale"], plugin_paths=[plugin],
                       options={"scale": {"factor": factor}})


@pytest.mark.parametrize("factor", [UNDER, 2 - UNDER])
def test_a_divergence_just_under_the_tolerance_passes(unit_path, scale_pass, tmp_path, factor):
    report = scaled_run(unit_path, tmp_path / "out", scale_pass, factor)
    assert report["reference"] == "onnxruntime on the source model"
    rows = report["parity"]
    assert {(row["batch"], row["check"]) for row in rows} == {(1, "vs reference"), (3, "vs reference"),
                                                            (3, "per-sample")}
    assert all(row["ok"] for row in rows)
    against_reference = [row["max_scaled"] for row in rows if row["check"] == "vs reference"]
    assert against_reference == pytest.approx([abs(factor - 1)] * 2, rel=1e-3)


@pytest.mark.parametrize("factor", [OVER, 2 - OVER])
def test_a_divergence_just_over_the_tolerance_fails_and_writes_nothing(unit_path, scale_pass, tmp_path, factor):
    with pytest.raises(surgeon.SurgeonError, match=r"stage 'onnx' at batch size 1 \(vs reference, output "
                                                   r"'y_scaled'\) differs from the reference by up to 0\.00111"):
        scaled_run(unit_path, tmp_path / "out", scale_pass, factor)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("factor, tolerance, code", [
    (OVER, "", 1),
    (OVER, "--rtol 2e-3", 0),
    (OVER, "--atol 1e-3", 0),
    (UNDER, "", 0),
    (UNDER, "--rtol 5e-4", 1),
    (UNDER, "--atol 0", 1),
])
@pytest.mark.parametrize("where", ["command line", "pipeline file"])
def test_atol_and_rtol_change_the_verdict_from_the_command_line_and_the_pipeline_file(
        unit_path, scale_pass, tmp_path, factor, tolerance, code, where):
    """The same model and factor verified with other tolerances, given as flags or as keys of a pipeline file."""
    out = tmp_path / "out"
    if where == "command line":
        args = ["run", unit_path, "-o", out, "--format", "onnx", "--plugins", "scale", "--plugin-path", scale_pass,
                "--set", f"scale.factor={factor!r}", *tolerance.split()]
    else:
        flag, _, value = tolerance.partition(" ")
        keys = f"{flag.removeprefix('--')} = {value}\n" if tolerance else ""
        pipeline = tmp_path / "pipeline.toml"
        pipeline.write_text(f'source = "unit.onnx"\noutput = "out"\nformat = ["onnx"]\nplugins = ["scale"]\n'
                            f'plugin_path = ["scale.py"]\n{keys}\n[scale]\nfactor = {factor!r}\n')
        args = ["run", "--config", pipeline]
    exit_code, stderr = cli_in_process(*args)
    assert exit_code == code, stderr
    assert ("differs from the reference" in stderr) is (code == 1)
    assert out.exists() is (code == 0)


# ---------------------------------------------------------------- samples mixed across the batch


def test_a_model_that_mixes_samples_fails_the_per_sample_check_though_it_matches_its_reference(tmp_path):
    """x minus the mean over the batch: the source computes it too, so every batch size matches the reference,
    but sample i of a batch differs from sample i run alone, which is what a server answering one request gets."""
    path = tmp_path / "centred.onnx"
    onnx.save(model_from_text("""
        <ir_version: 8, opset_import: ["" : 13]>
        centred (float[N, 4] x) => (float[N, 4] y) {
            mean = ReduceMean <axes = [0], keepdims = 1> (x)
            y = Sub(x, mean)
        }
    """), str(path))
    with pytest.raises(surgeon.SurgeonError, match=r"stage 'onnx' at batch size 3 \(per-sample, output 'y'\) "
                                                   r"differs from its samples run alone"):
        surgeon.run(path, tmp_path / "out", formats=["onnx"])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a PyTorch source is checked against PyTorch

FACTORY = """
import torch


class Doubles(torch.nn.Module):
    \"\"\"2 x, or, when ``two_faced``, 3 x in its export: forward() branches on a Python flag the graph cannot
    hold, so the export computes something the PyTorch model does not.\"\"\"

    def __init__(self, two_faced: bool) -> None:
        super().__init__()
        self.two_faced = two_faced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.two_faced and torch.onnx.is_in_onnx_export():
            return 3 * x
        return 2 * x


def honest() -> Doubles:
    return Doubles(two_faced=False)


def two_faced() -> Doubles:
    return Doubles(two_faced=True)
"""


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "doubles.py"
    path.write_text(FACTORY)
    return path


def torch_run(factory: str, out: Path) -> dict:
    """``surgeon.run`` of a PyTorch factory exported at batch 2, checked on onnxruntime only."""
    return surgeon.run(factory, out, formats=["onnx"], options={"torch": {"input_shapes": ["2,4"]}})


def test_a_pytorch_source_is_compared_with_the_pytorch_model(factories, tmp_path):
    report = torch_run(f"{factories}:honest", tmp_path / "out")
    assert report["reference"] == "the PyTorch model"
    assert {(row["stage"], row["batch"]) for row in report["parity"]} == {("onnx", 2)}
    assert all(row["ok"] for row in report["parity"])


def test_an_export_that_computes_otherwise_than_the_pytorch_model_fails(factories, tmp_path):
    """onnxruntime on the export agrees with the export: only the PyTorch model as the reference sees this."""
    with pytest.raises(surgeon.SurgeonError, match=r"stage 'onnx' at batch size 2 \(vs reference, output "
                                                   r"'output'\) differs from the reference"):
        torch_run(f"{factories}:two_faced", tmp_path / "out")
    assert not (tmp_path / "out").exists()
