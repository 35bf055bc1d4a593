"""The parity check without TensorFlow: the criterion at its boundaries; float32 rounding of outputs spanning
1e-3 to 1e10; the ONNX backend node suite (each expected output against itself, against onnxruntime, and with
divergences injected); and ``compare_stages`` with stand-in stages."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.errors import SurgeonError
from surgeon.feeds import SYMBOLIC_DIM_SIZE, Case, case_feed, cases
from surgeon.testing import BackendCase, backend_node_cases, run_onnx
from surgeon.verify import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Stage,
    Verdict,
    compare_stages,
    each_feed,
    format_table,
    inexact,
    judge,
    raise_on_divergence,
)

ATOL, RTOL = DEFAULT_ATOL, DEFAULT_RTOL


def verdict(got, want, atol: float = ATOL, rtol: float = RTOL) -> Verdict:
    """``judge`` with every warning an error: a RuntimeWarning would reach the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return judge(np.asarray(got), np.asarray(want), atol, rtol)


# ---------------------------------------------------------------- the criterion at its boundaries

# atol + rtol * 8 == 1.25, all exact in binary
A, R = 0.25, 0.125
ABOVE = np.nextafter(1.25, 2.0)


@pytest.mark.parametrize("got, ok", [
    ([[8.0, 1.25]], True),  # a small value may differ by atol + rtol * its sample's largest value
    ([[8.0, ABOVE]], False),
    ([[9.25, 0.0]], True),  # and so may the largest
    ([[np.nextafter(9.25, 10.0), 0.0]], False),
    ([[8.0, -1.25]], True),
])
def test_a_value_may_differ_by_atol_plus_rtol_times_its_samples_largest_value(got, ok):
    assert verdict(got, [[8.0, 0.0]], A, R).ok is ok


def test_each_sample_has_its_own_scale():
    """A sample of large values must not forgive a wrong sample of small ones (a whole-output scale would)."""
    want = np.array([[8.0, 0.0], [1.0, 0.0]])
    assert verdict([[8.0, 0.0], [1.0, 0.375]], want, A, R).ok  # 0.25 + 0.125 * 1
    assert not verdict([[8.0, 0.0], [1.0, 0.5]], want, A, R).ok  # within 0.25 + 0.125 * 8, not of its own sample
    big = np.array([np.full(100, 1e6), np.linspace(-1, 1, 100)])
    assert not verdict(big[[0, 1]] * [[1], [-1]], big).ok  # the small sample's signs flipped


def test_every_axis_after_the_first_belongs_to_the_sample():
    want = np.zeros((2, 3, 4))
    want[0, 2, 3] = 1000.0
    got = want.copy()
    got[0, 0, 0] = 1.0  # 1000 * rtol, beside the sample's largest value
    assert verdict(got, want).ok
    got[1, 0, 0] = 1.0  # in a sample of zeros
    assert not verdict(got, want).ok


@pytest.mark.parametrize("shape", [(), (2,)])
def test_a_value_alone_in_its_sample_is_judged_on_its_own_magnitude(shape):
    """Outputs of zero or one dimension: a score per sample; the elementwise rule."""
    want = np.full(shape, 8.0)
    assert verdict(want + 1.25, want, A, R).ok and not verdict(np.nextafter(want + 1.25, 10.0), want, A, R).ok
    assert verdict([8.0, 0.25], [8.0, 0.0], A, R).ok and not verdict([8.0, 0.26], [8.0, 0.0], A, R).ok


def test_inside_one_sample_a_difference_below_rtol_times_its_largest_value_passes():
    """The blind spot the module docstring names: small values beside a huge one may differ by rtol times it."""
    want = np.array([[1e6, 1.0, 2.0, 3.0]])
    assert verdict([[1e6, 900.0, 2.0, 3.0]], want).ok
    assert not verdict([[1e6, 900.0, 2.0, 3.0]], want, rtol=1e-6).ok  # a lower --rtol narrows it


def test_zeros_and_a_zero_tolerance():
    zeros = np.zeros((2, 3))
    assert verdict(zeros, zeros, 0.0, 0.0) == Verdict(True, None, 0.0, 0.0, 0.0)
    assert verdict(zeros + ATOL, zeros).ok and not verdict(zeros + 2 * ATOL, zeros).ok
    tiny = verdict(zeros + 1e-30, zeros, 0.0, 0.0)
    assert not tiny.ok and tiny.max_rel == tiny.max_scaled == float("inf")


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_empty_outputs_pass(shape, dtype):
    empty = np.zeros(shape, dtype)
    assert verdict(empty, empty) == Verdict(True, None, 0.0, 0.0, 0.0)


def test_another_shape_fails_saying_so():
    assert verdict(np.zeros((2, 3)), np.zeros((3, 2))) == Verdict(False, "output shape (2, 3), expected (3, 2)")


@pytest.mark.parametrize("got, want, error", [
    (np.array([1001, 5]), np.array([1000, 5]), "1 of 2 values differ (first at [0]: 1001 here, 1000 expected); "
     "int64 outputs must be equal"),  # within atol + rtol * 1000: a float would pass
    (np.array([0], np.uint8), np.array([255], np.uint8), "1 of 1 values differ (first at [0]: 0 here, 255 "
     "expected); uint8 outputs must be equal"),
    (np.array([[True, True]]), np.array([[True, False]]), "1 of 2 values differ (first at [0, 1]: True here, "
     "False expected); bool outputs must be equal"),
    (np.array(["a", "b"], object), np.array(["a", "c"], object), "1 of 2 values differ (first at [1]: b here, "
     "c expected)"),
])
def test_integer_bool_and_string_outputs_must_be_equal(got, want, error):
    assert verdict(want, want).ok
    different = verdict(got, want)
    assert not different.ok and different.error == error


def test_unsigned_integers_do_not_wrap():
    assert verdict(np.array([0], np.uint8), np.array([255], np.uint8)).max_abs == 255.0


def test_complex_outputs_are_compared_by_magnitude():
    want = np.array([[3 + 4j, 0j]], np.complex64)
    assert verdict(want + 5e-3, want).ok and not verdict(want + 6e-3j, want, rtol=1e-4).ok


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("got, ok", [
    ([[INF, NAN, 1.0]], True),
    ([[INF, NAN, 1.125]], True),  # 0.25 + 0.125 * 1 ... 1.375
    ([[INF, NAN, 1.5]], False),  # the Inf beside it is no scale
    ([[-INF, NAN, 1.0]], False),
    ([[INF, 0.0, 1.0]], False),
])
def test_nan_and_inf_are_matched_and_never_a_scale(got, ok):
    result = verdict(got, [[INF, NAN, 1.0]], A, R)
    assert result.ok is ok
    assert result.max_scaled is not None and np.isfinite(result.max_scaled)


# ---------------------------------------------------------------- float rounding of a large dynamic range


def relu_net(elem_type: int, layers: list[np.ndarray]) -> onnx.ModelProto:
    """x @ w1 -> Relu -> ... -> @ wn, in float32 or float64, with the weights given."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    nodes, last = [], "x"
    for index in range(len(layers)):
        nodes.append(helper.make_node("MatMul", [last, f"w{index}"], [f"h{index}"]))
        last = f"h{index}"
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [last], [f"r{index}"]))
            last = f"r{index}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "relu_net", [helper.make_tensor_value_info("x", elem_type, ["N", layers[0].shape[0]])],
        [helper.make_tensor_value_info("y", elem_type, ["N", layers[-1].shape[1]])],
        [numpy_helper.from_array(w.astype(dtype), f"w{index}") for index, w in enumerate(layers)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_float32_rounding_of_outputs_spanning_1e_minus_3_to_1e10_passes():
    """Like a randomly initialized Inception v3: ReLU layers on inputs of up to 1e10 give logits of up to 1e10
    beside logits near zero, whose float32 rounding the elementwise rule refuses. The same net in float32 and in
    float64 on onnxruntime, on 32 samples from 1e-3 to 1e10: each passes, and the elementwise rule fails some."""
    rng = np.random.default_rng(0)
    widths = [256, 512, 512, 512, 8000]
    layers = [rng.standard_normal((fan_in, fan_out)) * np.sqrt(2 / fan_in)
              for fan_in, fan_out in zip(widths, widths[1:])]
    x = rng.standard_normal((32, widths[0])) * np.logspace(-3, 10, 32)[:, None]
    (want,) = run_onnx(relu_net(TensorProto.DOUBLE, layers), [x])
    (got,) = run_onnx(relu_net(TensorProto.FLOAT, layers), [x.astype(np.float32)])
    assert 1e9 < np.abs(want).max() < 1e11 and np.abs(want).min() < 1e-3
    elementwise = np.abs(got - want) > ATOL + RTOL * np.abs(want)
    assert elementwise.sum() > 10, "the test lost its point: the elementwise rule passes these outputs"
    result = verdict(got, want)
    assert result.ok and result.max_rel > RTOL and result.max_scaled < RTOL / 10, result


# ---------------------------------------------------------------- the ONNX backend node suite

ONNX = ".".join(onnx.__version__.split(".")[:2])
# (case name, why onnxruntime's outputs differ from the expected ones[, the onnx release whose cases alone do]):
# a real difference, which the check must report
ONNXRUNTIME_DIFFERS: list[tuple[str, ...]] = [
    (r"test_attention_4d_with_past_and_present_qk_matmul_bias_[34]d_mask_causal",
     "onnxruntime writes the lowest float32 where the causal mask makes the scores -Inf"),
    (r"test_maxunpool_export_with_output_shape", "onnxruntime places the values otherwise with output_shape"),
    (r"test_resize_downsample_scales_(cubic|linear)_align_corners",
     "onnxruntime downsamples otherwise with align_corners"),
    (r"test_training_dropout.*", "random: onnxruntime draws another dropout mask"),
    (r"test_attention_[34]d.*", "onnx 1.18 shipped Attention outputs that later releases correct (onnxruntime "
     "gives the corrected ones)", "1.18"),
]


def swapped_samples(want: np.ndarray) -> np.ndarray | None:
    """Samples 0 and 1 swapped (values 0 and 1 of a one-dimensional output)."""
    if want.ndim == 0 or len(want) < 2:
        return None
    wrong = want.copy()
    wrong[[0, 1]] = want[[1, 0]]
    return wrong


def sign_flipped(want: np.ndarray) -> np.ndarray:
    """The sign of one value of the median magnitude flipped."""
    wrong = want.flatten()
    at = np.argsort(np.abs(wrong), kind="stable")[wrong.size // 2]
    wrong[at] = -wrong[at]
    return wrong.reshape(want.shape)


def off_by_a_tenth(want: np.ndarray) -> np.ndarray:
    """The middle value off by 10% of the output's largest magnitude."""
    wrong = want.flatten()
    wrong[wrong.size // 2] += 0.1 * np.abs(wrong).max()
    return wrong.reshape(want.shape)


def channels_permuted(want: np.ndarray) -> np.ndarray | None:
    """The second axis (the channels of an NCHW tensor) rotated by one."""
    if want.ndim < 2 or want.shape[1] < 2:
        return None
    return np.roll(want, 1, axis=1)


def relu_instead(want: np.ndarray) -> np.ndarray:
    """What Relu of the output gives: the wrong op wherever the output is negative."""
    return np.maximum(want, 0)


INJECTIONS: dict[str, Callable[[np.ndarray], np.ndarray | None]] = {
    "swapped samples": swapped_samples, "sign flipped": sign_flipped, "off by 10% of the scale": off_by_a_tenth,
    "channels permuted": channels_permuted, "wrong op (relu)": relu_instead,
}


def is_divergence(wrong: np.ndarray, want: np.ndarray) -> bool:
    """The test's own notion, independent of the criterion: some value moved by at least 10% of the largest
    magnitude in its sample (the slice along the first axis; the value alone in an output of under two
    dimensions) and by at least 10 atol. That is 100 times what the criterion forgives as rounding."""
    with np.errstate(invalid="ignore", over="ignore"):
        moved = np.abs(wrong.astype(np.float64) - want.astype(np.float64))
    moved = np.where(np.isfinite(moved), moved, np.inf)  # a value cast to NaN or Inf
    magnitude = np.abs(want.astype(np.float64))
    largest = magnitude if want.ndim < 2 else magnitude.reshape(len(want), -1).max(axis=1).reshape(
        (-1,) + (1,) * (want.ndim - 1))
    return bool(np.any((moved >= 0.1 * largest) & (moved >= 10 * ATOL)))


def as_declared(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """onnxruntime returns float8 outputs as their bits (uint8): read them as the expected type."""
    if got.dtype.kind == "u" and got.dtype != want.dtype and got.dtype.itemsize == want.dtype.itemsize:
        return got.view(want.dtype)
    return got


@dataclass
class SuiteTally:
    """What the backend suite showed: the counts the test asserts and prints."""

    cases: int = 0
    float_outputs: int = 0
    against_itself_failed: list[str] = field(default_factory=list)
    onnxruntime_cannot_run: int = 0
    onnxruntime_agrees: int = 0
    onnxruntime_differs: dict[str, str] = field(default_factory=dict)
    injected: Counter[str] = field(default_factory=Counter)
    caught: Counter[str] = field(default_factory=Counter)
    not_a_divergence: Counter[str] = field(default_factory=Counter)  # the injection moved too little
    missed: list[str] = field(default_factory=list)
    whole_output_scale_misses: int = 0  # what a scale over the whole output would let through

    def summary(self) -> str:
        return (f"{self.cases} cases, {self.float_outputs} float outputs; onnxruntime agrees on "
                f"{self.onnxruntime_agrees}, differs on {len(self.onnxruntime_differs)} (known), cannot run "
                f"{self.onnxruntime_cannot_run}; divergences injected {sum(self.injected.values())}, caught "
                f"{sum(self.caught.values())} ({dict(self.caught)}); injections too small to count "
                f"{sum(self.not_a_divergence.values())}; a whole-output scale would miss "
                f"{self.whole_output_scale_misses}")


def tally(cases: list[BackendCase]) -> SuiteTally:
    result = SuiteTally(cases=len(cases))
    for case in cases:
        for index, want in enumerate(case.outputs):
            if not verdict(want, want).ok:
                result.against_itself_failed.append(f"{case.name} output {index}")
        floats = [(index, want) for index, want in enumerate(case.outputs) if inexact(want.dtype)]
        result.float_outputs += len(floats)
        for index, want in floats:
            inject(result, f"{case.name} output {index}", want)
        try:
            got = run_onnx(case.model, case.inputs)
        except Exception:
            result.onnxruntime_cannot_run += 1
            continue
        differs = [f"output {index}: {outcome}" for index, want in floats
                   if not (outcome := verdict(as_declared(np.asarray(got[index]), want), want)).ok]
        if differs:
            result.onnxruntime_differs[case.name] = differs[0]
        else:
            result.onnxruntime_agrees += 1
    return result


def inject(result: SuiteTally, name: str, want: np.ndarray) -> None:
    """Every injection that applies to ``want`` (finite values only: NaN and Inf have their own tests)."""
    if want.size == 0 or not np.all(np.isfinite(want.astype(np.float64))):
        return
    for kind, injection in INJECTIONS.items():
        wide = injection(want.astype(np.float64))
        if wide is None:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            wrong = wide.astype(want.dtype)
        if not is_divergence(wrong, want):
            result.not_a_divergence[kind] += 1
            continue
        result.injected[kind] += 1
        if verdict(wrong, want).ok:
            result.missed.append(f"{name}: {kind}")
        else:
            result.caught[kind] += 1
        wide_want, wide_wrong = want.astype(np.float64), wrong.astype(np.float64)
        with np.errstate(invalid="ignore"):
            forgiven = np.abs(wide_wrong - wide_want) <= ATOL + RTOL * np.abs(wide_want).max()
        result.whole_output_scale_misses += bool(np.all(forgiven))


def check_suite(cases: list[BackendCase]) -> SuiteTally:
    result = tally(cases)
    print(result.summary())
    assert not result.against_itself_failed
    known = [pattern for pattern, _, *release in ONNXRUNTIME_DIFFERS if release in ([], [ONNX])]
    unknown = {name: why for name, why in result.onnxruntime_differs.items()
               if not any(re.fullmatch(pattern, name) for pattern in known)}
    assert not unknown, unknown
    assert not result.missed, result.missed
    assert result.caught == result.injected
    return result


def test_a_sample_of_the_backend_suite_passes_against_itself_and_onnxruntime_and_catches_every_divergence():
    """Every fifth case; -m slow runs them all."""
    result = check_suite(backend_node_cases()[::5])
    assert result.cases > 250 and result.onnxruntime_agrees > 200
    assert set(result.injected) == set(INJECTIONS) and min(result.injected.values()) > 20


@pytest.mark.slow
def test_the_whole_backend_suite_passes_against_itself_and_onnxruntime_and_catches_every_divergence():
    """Every case of the suite onnx ships or generates (1421 in onnx 1.18, 1684 in 1.23)."""
    result = check_suite(backend_node_cases())
    assert result.cases > 1000 and result.onnxruntime_agrees > 1000
    assert set(result.injected) == set(INJECTIONS) and min(result.injected.values()) > 100


# ---------------------------------------------------------------- compare_stages with stand-in stages


def stage_of(compute: Callable[[np.ndarray], np.ndarray]) -> Stage:
    """A stage computing ``compute`` of the one input, feed by feed."""
    return each_feed(lambda feeds: [[compute(feed[0])] for feed in feeds])


def refuses_batches(x: np.ndarray) -> np.ndarray:
    if len(x) > 1:
        raise ValueError("a batch fixed at 1")
    return 2 * x


FEEDS = {Case(size): [np.random.default_rng(size).standard_normal((size, 4)).astype(np.float32)] for size in (1, 3)}
EXPECTED = {size: [2 * feed[0].astype(np.float64)] for size, feed in FEEDS.items()}
STAGES = {
    "faithful": stage_of(lambda x: 2 * x),
    "mixes": stage_of(lambda x: 2 * x + x.mean(axis=0) - x),  # right for one sample alone
    "refuses": stage_of(refuses_batches),
}


def test_each_stage_is_compared_at_each_batch_size_and_sample_by_sample():
    table = compare_stages(STAGES, EXPECTED, FEEDS, by_sample=True, atol=ATOL, rtol=RTOL, names=["y"])
    verdicts = {(row["stage"], row["batch"], row["check"]): row["ok"] for row in table}
    assert verdicts == {
        ("faithful", 1, "vs reference"): True, ("faithful", 3, "vs reference"): True,
        ("faithful", 3, "per-sample"): True,
        ("mixes", 1, "vs reference"): True, ("mixes", 3, "vs reference"): False, ("mixes", 3, "per-sample"): False,
        ("refuses", 1, "vs reference"): True, ("refuses", 3, "vs reference"): False,
        ("refuses", 3, "per-sample"): False,
    }
    assert {row["output"] for row in table} == {"y"}
    refused = [row for row in table if row["stage"] == "refuses" and not row["ok"]]
    assert all(row["error"] == "ValueError: a batch fixed at 1" and row["max_abs"] is None for row in refused)


def test_a_stage_gets_every_feed_in_one_call_and_a_fixed_batch_no_single_samples():
    calls = []

    def stage(feeds):
        calls.append([len(feed[0]) for feed in feeds])
        return [[2 * feed[0]] for feed in feeds]

    compare_stages({"served": stage}, EXPECTED, FEEDS, by_sample=True, atol=ATOL, rtol=RTOL)
    assert calls == [[1, 3, 1, 1, 1]]
    table = compare_stages({"served": stage}, EXPECTED, FEEDS, by_sample=False, atol=ATOL, rtol=RTOL)
    assert calls[-1] == [1, 3] and {row["check"] for row in table} == {"vs reference"}
    assert {row["output"] for row in table} == {0}  # numbered without names


def test_the_first_failure_is_raised_with_its_measures_and_a_hint():
    table = compare_stages(STAGES, EXPECTED, FEEDS, by_sample=True, atol=ATOL, rtol=RTOL, names=["y"])
    with pytest.raises(SurgeonError) as raised:
        raise_on_divergence(table, ATOL, RTOL, [], [])
    first = next(row for row in table if not row["ok"])
    assert str(raised.value).startswith(
        f"verification failed: stage 'mixes' at batch size 3 (vs reference, output 'y') differs from the reference "
        f"by up to {first['max_abs']:.3g}, {first['max_scaled']:.3g} of its sample's largest value (allowed: atol "
        f"0.0001 + rtol 0.001 times that value)\n  hint: batch 1 passes, so the export likely baked the batch")
    raise_on_divergence([row for row in table if row["stage"] == "faithful"], ATOL, RTOL, [], [])


def test_a_failing_run_and_a_per_sample_difference_are_raised_in_their_own_words():
    rows = [{"stage": "tf", "batch": 3, "check": "per-sample", "output": "y", "max_abs": 0.5, "max_rel": 1.0,
             "max_scaled": 0.25, "ok": False}]
    with pytest.raises(SurgeonError, match=r"\(per-sample, output 'y'\) differs from its samples run alone by up "
                                           r"to 0.5, 0.25 of its sample's largest value"):
        raise_on_divergence(rows, ATOL, RTOL, [], [])
    rows[0] |= {"error": "ValueError: no"}
    with pytest.raises(SurgeonError, match=r"\(per-sample, output 'y'\) fails: ValueError: no"):
        raise_on_divergence(rows, ATOL, RTOL, [], [])


def test_the_table_shows_every_measure():
    table = compare_stages(STAGES, EXPECTED, FEEDS, by_sample=True, atol=ATOL, rtol=RTOL, names=["y"])
    lines = format_table(table)
    assert lines[0] == "parity:"
    assert lines[1].split() == ["stage", "batch", "check", "output", "max", "abs", "max", "rel", "max", "scaled"]
    assert lines[2].split()[:4] == ["faithful", "1", "vs", "reference"] and lines[2].endswith("  ok")
    assert lines[-1].split()[:8] == ["refuses", "3", "per-sample", "y", "-", "-", "-", "FAILS:"]
    assert any(line.endswith("  DIVERGES") for line in lines)


# ---------------------------------------------------------------- named sizes (a dynamic sequence)


def sequence_feeds(lengths: tuple[int, ...]) -> dict[Case, list[np.ndarray]]:
    return {Case(batch, (("seq", length),)): [np.random.default_rng(batch * length).standard_normal(
        (batch, length)).astype(np.float32)] for batch in (1, 3) for length in lengths}


def cumulative_up_to_8(x: np.ndarray) -> np.ndarray:
    """Right for sequences of length 8 at most: as if the export baked the length 8 into a constant."""
    total = np.cumsum(x, axis=1)
    total[:, 8:] = 0
    return total


def test_cases_with_named_sizes_are_compared_labelled_and_hinted():
    feeds = sequence_feeds((8, 16))
    expected = {case: [np.cumsum(feed[0].astype(np.float64), axis=1)] for case, feed in feeds.items()}
    table = compare_stages({"served": stage_of(cumulative_up_to_8)}, expected, feeds, by_sample=True, atol=ATOL,
                           rtol=RTOL, names=["y"])
    verdicts = {(row["batch"], row["sizes"]["seq"], row["check"]): row["ok"] for row in table}
    assert verdicts == {(1, 8, "vs reference"): True, (1, 16, "vs reference"): False,
                        (3, 8, "vs reference"): True, (3, 8, "per-sample"): True,
                        (3, 16, "vs reference"): False, (3, 16, "per-sample"): True}
    assert any(line.split()[:3] == ["served", "1", "seq=16"] for line in format_table(table))
    with pytest.raises(SurgeonError) as raised:
        raise_on_divergence(table, ATOL, RTOL, [], ["dynamic_batch"])
    assert "stage 'served' at batch size 1 with seq 16 (vs reference" in str(raised.value)
    assert "it passes at batch size 1 with seq 8: the export likely baked a size of a named dimension" \
        in str(raised.value)


def test_every_batch_size_is_combined_with_every_named_size():
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["ids"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.INT64, ["batch", "seq"])]))
    checked = cases(model, [1, 3], {"seq": [8, 16, 32]})
    assert [(case.batch, dict(case.sizes)) for case in checked] == [
        (batch, {"seq": length}) for batch in (1, 3) for length in (8, 16, 32)]
    assert [case_feed(model, case)[0].shape for case in checked[:3]] == [(1, 8), (1, 16), (1, 32)]
    assert case_feed(model, Case(3))[0].shape == (3, SYMBOLIC_DIM_SIZE)
    with pytest.raises(SurgeonError, match=r"--axis-sizes tokens: no input has a dynamic dimension named 'tokens' "
                                           r"\(named dimensions: batch, seq\)"):
        cases(model, None, {"tokens": [8]})
    with pytest.raises(SurgeonError, match="'batch' is on axis 0 of an input, where the batch is"):
        cases(model, None, {"batch": [2]})
