"""dynamic_axes on the ONNX backend node tests shipped with onnx, a suite no one here wrote.

Every case whose first input has a fixed axis 1 longer than 1 gets that axis named ``seq``. The pass must either
make it dynamic without changing any output at the original length (bit for bit), or refuse with an error naming
the node or option at fault; it must never crash or leave a model that computes something else. The full suite is
slow (``-m slow``); a subset of the ops sequence models use runs always.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from surgeon import SurgeonError
from surgeon.errors import PluginError
from surgeon.testing import BackendCase, apply_pass_with_record, assert_idempotent, backend_node_cases, run_onnx

# a refusal names the node or option at fault
NAMED = re.compile(r"^plugin 'dynamic_axes': (node '|the \w+ node making '|an? \w+ node |axes: |"
                   r"the model is at opset \d+; |onnxruntime cannot run the model at its export length|output ')")
# (cumsum, trilu and range cases have scalar inputs or none with a fixed axis 1: none would run here)
SUBSET = ("matmul", "gemm", "softmax", "reshape", "transpose", "gather", "slice", "concat", "expand", "where",
          "add", "layer_normalization", "reduce_mean", "reduce_sum", "lstm", "gru", "shape", "unsqueeze", "squeeze",
          "split", "pad", "attention")


def applies(case: BackendCase) -> bool:
    """The first input has rank 2 or more and a fixed axis 1 longer than 1."""
    if not case.model.graph.input:
        return False
    shape = case.model.graph.input[0].type.tensor_type.shape.dim
    return len(shape) >= 2 and shape[1].HasField("dim_value") and shape[1].dim_value > 1


def axes_of(case: BackendCase) -> list[str]:
    return [f"{case.model.graph.input[0].name}:1:seq"]


def outcome(case: BackendCase, twice: bool = False) -> tuple[str, str]:
    """('rewritten' | 'unchanged' | 'refused' | 'not run', detail), or ('problem', what went wrong): a crash, a
    refusal naming nothing, or outputs that differ at the original length."""
    try:
        expected = run_onnx(case.model, case.inputs, optimized=False)
    except Exception:
        return "not run", "onnxruntime cannot run the original"
    try:
        rewritten, record = apply_pass_with_record("dynamic_axes", case.model, axes=axes_of(case))
    except PluginError as error:
        if not (isinstance(error.__cause__, SurgeonError) and not isinstance(error.__cause__, PluginError)):
            return "problem", f"the pass crashed or broke the graph: {one_line(error)}"
        if not NAMED.search(str(error)):
            return "problem", f"the refusal names nothing: {one_line(error)}"
        return "refused", str(error)
    except Exception as error:  # not even wrapped by the host
        return "problem", f"{type(error).__name__}: {one_line(error)}"
    try:
        got = run_onnx(rewritten, case.inputs, optimized=False)  # bit for bit: what the graphs compute
    except Exception as error:
        return "problem", f"onnxruntime cannot run the rewritten model at the original length: {one_line(error)}"
    if len(got) != len(expected):
        return "problem", f"{len(got)} outputs instead of {len(expected)}"
    for index, (actual, wanted) in enumerate(zip(got, expected)):
        if actual.shape != wanted.shape or actual.dtype != wanted.dtype:
            return "problem", (f"output {index} is {actual.dtype}{list(actual.shape)}, not "
                               f"{wanted.dtype}{list(wanted.shape)}")
        try:
            np.testing.assert_array_equal(actual, wanted)
        except AssertionError as error:
            return "problem", f"output {index} differs at the original length: {one_line(error)}"
    if twice:
        try:
            assert_idempotent("dynamic_axes", case.model, axes=axes_of(case))
        except Exception as error:
            return "problem", f"a second application changes the model: {one_line(error)}"
    return ("rewritten" if record.changed else "unchanged"), ""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:400]


def outcomes(prefixes=("",), twice: bool = False) -> dict[str, tuple[str, str]]:
    return {case.name: outcome(case, twice) for case in backend_node_cases(prefixes) if applies(case)}


def assert_no_problems(results: dict[str, tuple[str, str]]) -> None:
    problems = {name: detail for name, (kind, detail) in results.items() if kind == "problem"}
    assert not problems, f"{len(problems)} cases:\n" + "\n".join(f"{name}: {why}" for name, why in problems.items())


def test_a_subset_of_sequence_ops_keeps_every_output_or_refuses_by_name():
    results = outcomes(SUBSET)
    assert_no_problems(results)
    counts = collections.Counter(kind for kind, _ in results.values())
    assert counts["rewritten"] >= 60, counts  # 66 with onnx 1.18 (TensorFlow 2.15), more cases with newer onnx
    # ops along the length that the pass follows (onnx 1.18's test_attention_3d_causal_expanded reshapes Q
    # [B, S, H * D] straight to [B, H, S, D], splitting the length, and is refused there; it is not listed)
    for name in ("test_softmax_axis_1", "test_matmul_3d", "test_transpose_all_permutations_0",
                 "test_layer_normalization_3d_axis_negative_1_epsilon_expanded"):
        assert results.get(name, ("missing",))[0] == "rewritten", (name, results.get(name))
    # and ones it cannot
    for name, why in (("test_split_equal_parts_2d_opset13", "splits along the length"),
                      ("test_concat_3d_axis_1", "concatenates along the length"),
                      ("test_layer_normalization_3d_axis_negative_1_epsilon", "(the statistics) is used"),
                      ("test_lstm_defaults", "runs over axis 0, but the length is elsewhere in 'X'"),
                      ("test_where_example", "combines the input 'x', 2 long on axis 1, with the length there; if "
                                             "that axis is the length too, name it in axes (x:1:NAME)")):
        kind, detail = results.get(name, ("missing", ""))
        assert kind == "refused" and why in detail, (name, kind, detail)


@pytest.mark.slow
def test_every_backend_case_keeps_its_outputs_or_refuses_by_name():
    results = outcomes(twice=True)
    counts = collections.Counter(kind for kind, _ in results.values())
    print(f"\ndynamic_axes on {len(results)} backend node cases with a fixed axis 1: {dict(counts)}")
    assert_no_problems(results)
    assert counts["rewritten"] >= 250, counts
