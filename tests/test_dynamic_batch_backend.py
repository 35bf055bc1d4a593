"""dynamic_batch on the ONNX backend node tests shipped with onnx, a suite no one here wrote.

Every case's first input is taken as the batched one (or, with the default
options, every input), at the batch it was saved with. The pass must either
make the batch dynamic without changing any output at that original batch
size, or refuse with an error naming what mixes samples; it must never crash
or leave a model that computes something else. The full suite is slow
(``-m slow``); a representative subset runs always.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from surgeon import SurgeonError
from surgeon.errors import PluginError
from surgeon.testing import (BackendCase, apply_pass, apply_pass_with_record, assert_idempotent, backend_node_cases,
                             run_onnx)

# a refusal names the node, output or option at fault
NAMED = re.compile(r"^plugin 'dynamic_batch': (node '|the \w+ node making '|output '|inputs: |axis: )")
SUBSET = ("reshape", "expand", "tile", "concat", "slice", "flatten", "gather", "resize", "constantofshape",
          "lstm", "gridsample", "squeeze", "unsqueeze", "transpose", "split", "gemm", "conv", "maxpool", "softmax",
          "reduce_mean", "layer_normalization", "shape", "where")


def outcome(case: BackendCase, first_input_only: bool = True, twice: bool = False) -> str:
    """'rewritten' (constants), 'renamed' (shapes only), 'unchanged', 'refused' or 'not run' (onnxruntime cannot
    run the original); asserts that outputs are kept and that a refusal names what is at fault."""
    try:
        expected = run_onnx(case.model, case.inputs, optimized=False)
    except Exception:
        return "not run"
    options = {"inputs": [case.model.graph.input[0].name]} if first_input_only and case.model.graph.input else {}
    try:
        rewritten, record = apply_pass_with_record("dynamic_batch", case.model, **options)
    except PluginError as error:
        refusal = isinstance(error.__cause__, SurgeonError) and not isinstance(error.__cause__, PluginError)
        assert refusal, f"{case.name}: the pass crashed or broke the graph: {error}"
        assert NAMED.search(str(error)), f"{case.name}: the refusal names nothing: {error}"
        return "refused"
    got = run_onnx(rewritten, case.inputs, optimized=False)  # bit for bit: what the graphs compute
    assert len(got) == len(expected), case.name
    for actual, wanted in zip(got, expected):
        assert actual.shape == wanted.shape and actual.dtype == wanted.dtype, case.name
        np.testing.assert_array_equal(actual, wanted, err_msg=case.name)
    if twice:
        assert_idempotent("dynamic_batch", case.model, **options)
    if not record.changed:
        return "unchanged"
    return "rewritten" if record.details["rewritten"] else "renamed"


def outcomes(prefixes=("",), **settings) -> dict[str, str]:
    return {case.name: outcome(case, **settings) for case in backend_node_cases(prefixes)}


def test_a_representative_subset_keeps_every_output_or_refuses_by_name():
    results = outcomes(SUBSET)
    counts = collections.Counter(results.values())
    assert counts["renamed"] + counts["rewritten"] >= 140, counts
    # the grid of GridSample is a per-sample input: the shared one is repeated for every sample
    assert results["test_gridsample"] == "rewritten"
    # reducing over the batch, splitting it or squeezing it away cannot follow another batch size
    for name in ("test_reduce_mean_default_axes_keepdims_example", "test_split_equal_parts_1d_opset13",
                 "test_squeeze"):
        assert results[name] == "refused", name


def test_a_shared_grid_is_repeated_for_each_sample():
    (case,) = [c for c in backend_node_cases(("gridsample",)) if c.name == "test_gridsample"]
    rewritten = apply_pass("dynamic_batch", case.model, inputs=["X"])
    (alone,) = run_onnx(rewritten, case.inputs)
    (three,) = run_onnx(rewritten, [np.concatenate([case.inputs[0]] * 3), case.inputs[1]])
    np.testing.assert_array_equal(three, np.concatenate([alone] * 3))


@pytest.mark.slow
@pytest.mark.parametrize("first_input_only", [True, False], ids=["first input batched", "default options"])
def test_every_backend_case_keeps_its_outputs_or_refuses_by_name(first_input_only):
    results = outcomes(first_input_only=first_input_only, twice=True)
    counts = collections.Counter(results.values())
    print(f"\ndynamic_batch on {len(results)} backend node cases: {dict(counts)}")
    assert counts["renamed"] + counts["rewritten"] >= (450 if first_input_only else 400), counts
