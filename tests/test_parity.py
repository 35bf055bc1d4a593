"""The parity check on NaN and Inf: the same NaN or Inf on both sides is equal; one on one side only fails,
saying where; no Python warning reaches the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

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
