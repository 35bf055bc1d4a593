"""Parity: does every stage still compute what the source computed?

Seeded random inputs, shaped and typed from the model, are run at several
batch sizes through the reference (PyTorch when the source provides it, else
onnxruntime on the source model) and through each output stage: onnxruntime
on the rewritten ONNX, and every model a server would load (the SavedModel,
a frozen graph), each in a fresh process in graph mode, as a server runs it:
a Python callback (PyFunc) that onnx-tf fell back to runs only in the
process that converted the model, and a batch fixed on a declared output
shape passes an eager check there but fails in graph mode at any other
batch. Per sample, sample i of a batched run must also equal the run of
sample i alone: a model that mixes samples across the batch fails even when
batch 1 matches. A stage that fails to run fails the check.

The padded reference: a rewrite may make a fixed axis of an ONNX file
dynamic under a name (``input_ids`` [1, 16] -> [batch, seq]), and
onnxruntime on the source model runs only at the fixed length L (16). A
request of length S <= L is then checked against what the source model
gives for the same request padded at the end with zeros to L, on the first
S positions of every output axis the rewritten model declares as that name
(``seq``). A zero attention mask makes the padding inert, and in a causal
model later positions never change earlier ones; a model where padding is
not inert fails the check, as it should. Lengths over L cannot be checked
there and are refused before anything is written; PyTorch, when it is the
reference, runs at any length and is fed unpadded. Unless ``--axis-sizes``
says otherwise, such a name is checked at 2, L // 2 and L. What this cannot
see: an output axis the rewrite names as the length when it is not (features
that happen to number L) is cut in the reference as well, so a model that
serves S of them where the original has L passes; the rewrite's own rules are
what keep such an axis whole.

The criterion: a float value passes when

    |actual - expected| <= atol + rtol * scale

where ``scale`` is the largest finite ``|expected|`` of its sample in that
output, the sample being the slice ``output[i]`` along the first axis (taken
as the batch). Why not ``|expected|`` itself, the elementwise rule: float
rounding is relative to the magnitude of what was summed, not of the sum. A
randomly initialized Inception v3 gives logits up to 1e10; a logit near zero
is a sum of terms near 1e10 and carries their rounding, far beyond rtol
times its own magnitude, so the elementwise rule refuses a model that every
stage computes correctly. Why not the largest value of the whole output: one
sample of large values would then forgive a wrong sample of small ones (two
samples swapped, samples mixed across the batch), while each sample is
computed on its own, so its own largest value is what its rounding scales
with. Outputs are judged apart for the same reason. A value alone in its
sample (outputs of zero or one dimension, e.g. a score per sample) is judged
against its own magnitude, which is the elementwise rule.

What this cannot see: inside one sample of one output, a difference below
``rtol`` times the sample's largest value, e.g. a wrong region of small
values beside one huge value. A correct stage may differ that much there; a
lower ``--rtol`` narrows the blind spot, and values of unrelated scale (box
coordinates beside scores) are best given separate outputs.

Integer, bool and string outputs must be equal. NaN at the same places and
Inf of the same sign are equal (a model may compute them on purpose); NaN or
Inf on one side only fails, saying how many and where.

The table gives, per stage, batch size, check and output: ``max abs``, the
largest ``|actual - expected|``; ``max rel``, the largest elementwise
``|actual - expected| / |expected|``; and ``max scaled``, the largest
``|actual - expected| / scale``, the measure the verdict reads (in both
ratios a divisor below atol counts as atol). Every value passes when ``max
scaled`` is at most rtol.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from surgeon.errors import SurgeonError, describe
from surgeon.feeds import Case, Feed, FixedAxis, fixed_axes, fixed_sizes, static_batch
from surgeon.onnx_io import real_inputs

if TYPE_CHECKING:
    from surgeon.context import Reference
    from surgeon.plugin import RewritePass

log = logging.getLogger("surgeon")

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3

Outputs = list[np.ndarray]  # one array per model output, in the model's output order
Runner = Callable[[Sequence[Feed]], list[Outputs]]

@dataclass(frozen=True)
class RunFailure:
    """Why a stage could not answer a feed."""

    message: str


Result = Outputs | RunFailure
Stage = Callable[[Sequence[Feed]], list[Result]]  # called once with every feed of the check


def compare_stages(stages: Mapping[str, Stage], expected: Mapping[Case, Outputs], feeds: Mapping[Case, Feed], *,
                   by_sample: bool, atol: float, rtol: float,
                   names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The parity table: each stage run on the feeds (by case: batch size and named sizes) and compared with the
    expected outputs.

    ``by_sample``: each sample of a batch is also run alone and must equal its part of the batched run (a model
    whose batch is fixed cannot run one sample alone). Every stage gets all the feeds in one call, since a
    served model answers them in one fresh process."""
    runs = []
    for case, feed in feeds.items():
        runs.append(feed)
        if by_sample and case.batch > 1:
            runs += [[array[i : i + 1] for array in feed] for i in range(case.batch)]
    table = []
    for stage_name, stage in stages.items():
        results = iter(stage(runs))
        for case in feeds:
            got = next(results)
            table += compare(stage_name, case, got, expected[case], atol, rtol, names=names)
            if by_sample and case.batch > 1:
                alone = joined([next(results) for _ in range(case.batch)])
                table += compare(stage_name, case, got, alone, atol, rtol, check="per-sample", names=names)
    return table


def raise_on_divergence(table: list[dict[str, Any]], atol: float, rtol: float, batch_fixers_run: Sequence[str],
                        batch_fixers_left_out: Sequence[str], padded: Mapping[str, int] | None = None) -> None:
    """Raise for the first failing row of the table, with what to try (:func:`failure_hint`); ``padded``: the
    named sizes the reference ran padded to (the padded reference)."""
    failed = [row for row in table if not row["ok"]]
    if not failed:
        return
    first = failed[0]
    where = f"stage {first['stage']!r} at {case_of(first).describe()} ({first['check']}, output {first['output']!r})"
    if "error" in first:
        message = f"verification failed: {where} fails: {first['error']}"
    else:
        than = "the reference" if first["check"] == "vs reference" else "its samples run alone"
        message = (f"verification failed: {where} differs from {than} by up to {first['max_abs']:.3g}, "
                   f"{first['max_scaled']:.3g} of its sample's largest value (allowed: atol {atol} + rtol {rtol} "
                   "times that value)")
    raise SurgeonError(message, hint=failure_hint(table, first, batch_fixers_run, batch_fixers_left_out, padded))


def failure_hint(table: list[dict[str, Any]], first: dict[str, Any], batch_fixers_run: Sequence[str],
                 batch_fixers_left_out: Sequence[str], padded: Mapping[str, int] | None = None) -> str:
    """What to try, from the rows that passed: a size baked into the model only when other sizes pass (or, with a
    reference padded to the sizes ``padded``, a model that padding changes), a batch baked in only when batch 1
    passes, the samples of the failing batch are mixed (or not checked), and no pass that fixes a fixed batch ran
    (the installed ones left out of the run are named; ``batch_fixers_run``: those that ran)."""
    hint = "nothing was written; --no-verify skips this check"
    same_stage = [row for row in table if row["stage"] == first["stage"]]
    failed_at = case_of(first)
    other_sizes = [row for row in same_stage if row["batch"] == failed_at.batch and case_of(row) != failed_at]
    passing = ", ".join(case.describe() for case in dict.fromkeys(case_of(row) for row in other_sizes)
                        if all(row["ok"] for row in other_sizes if case_of(row) == case))
    if failed_at.sizes and passing:
        padding = [f"{name} {padded[name]}" for name, _ in failed_at.sizes if padded and name in padded]
        if padding:
            return (f"it passes at {passing}; a shorter length is checked against the original given the input "
                    f"padded with zeros to {', '.join(padding)}: either this model's result changes with that "
                    "padding (an LSTM read at its last step, tokens averaged without a mask), or a size is baked in "
                    "where the rewrite did not follow it; export it from PyTorch with --set torch.dynamic_axes to "
                    f"check against PyTorch instead (docs/dynamic_axes.md); {hint}")
        return (f"it passes at {passing}: the export likely baked a size of a named dimension into the model "
                f"(docs/dynamic_axes.md); {hint}")
    at_one = [row for row in same_stage if case_of(row) == Case(1, failed_at.sizes)]
    if first["batch"] == 1 or not at_one or not all(row["ok"] for row in at_one):
        return hint
    per_sample = [row for row in same_stage if case_of(row) == failed_at and row["check"] == "per-sample"]
    if per_sample and all(row["ok"] for row in per_sample):
        return (f"batch 1 passes and each sample of batch {first['batch']} equals that sample run alone, so no "
                f"sample is mixed: the difference is numerical (--atol, --rtol loosen the check); {hint}")
    if batch_fixers_run:
        return (f"batch 1 passes and {', '.join(batch_fixers_run)} ran: a batch-dependent computation it did not "
                f"see is left (`surgeon inspect MODEL.onnx` lists what it detects); {hint}")
    fix = (f": --plugins {','.join(batch_fixers_left_out)} makes it dynamic" if batch_fixers_left_out
           else " (no installed pass makes a batch dynamic)")
    return f"batch 1 passes, so the export likely baked the batch size into the model{fix}; {hint}"


def stage_runners(model: onnx.ModelProto, served_models: Mapping[str, Path]) -> dict[str, Stage]:
    """The checked stages: onnxruntime on the rewritten ONNX ``model``, then each served model (stage name ->
    what a server loads) in a fresh process."""
    return {"onnx": each_feed(onnxruntime_runner(model)),
            **{name: fresh_process(path, model) for name, path in served_models.items()}}


def each_feed(runner: Runner) -> Stage:
    """Run feed by feed, so that a failing feed is recorded and the others still run."""

    def run(feeds: Sequence[Feed]) -> list[Result]:
        results: list[Result] = []
        for feed in feeds:
            try:
                results.append(runner([feed])[0])
            except Exception as error:
                results.append(RunFailure(describe(error)))
        return results

    return run


def fresh_process(path: Path, model: onnx.ModelProto) -> Stage:
    """Run a served model in one new process for every feed (see ``surgeon.serving``)."""
    from surgeon.serving import run_in_fresh_process

    inputs = [value.name for value in real_inputs(model)]
    outputs = [value.name for value in model.graph.output]

    def run(feeds: Sequence[Feed]) -> list[Result]:
        results = run_in_fresh_process(path, feeds, inputs, outputs)
        return [RunFailure(result) if isinstance(result, str) else result for result in results]

    return run


def reference_outputs(run: Runner, what: str, feeds: Mapping[Case, Feed]) -> dict[Case, Outputs]:
    """What the reference (``what``, in words) computes for each feed, by case; a reference that cannot run is
    the source's problem, not a stage's: no stage is checked then. A ``SurgeonError`` of the reference says in
    its own words why, and passes unchanged."""
    expected = {}
    for case, feed in feeds.items():
        try:
            expected[case] = run([feed])[0]
        except SurgeonError:
            raise
        except Exception as error:
            raise SurgeonError(f"verification: the reference ({what}) cannot run at {case.describe()}: "
                               f"{describe(error)}", hint="--batch-sizes and --axis-sizes pick others; "
                               "--no-verify skips the check") from error
    return expected


def reference_runner(source: onnx.ModelProto, rewritten: onnx.ModelProto, reference: tuple[Reference, str] | None,
                     reshapers: Sequence[tuple[RewritePass, Any]]) -> tuple[Runner, str]:
    """``reference`` (the original model as a function, with what it is in words, when the source can run it);
    else onnxruntime on the ``source`` model; and what it is.

    When onnxruntime refuses the source model (deprecated operators a pass
    replaced, say), onnxruntime on the rewritten model is the reference: the
    served models are still checked against it, the rewrite itself is not.

    Feeds go through the ``original_inputs`` of ``reshapers``, the passes
    that changed what the model takes (in the order they ran), last first. A source model with a fixed batch B
    (exported at B, made dynamic by a rewrite) runs each sample repeated B
    times, keeping the first result: what it computes for that sample alone.
    An axis the source model fixes and the rewritten model names (``seq``)
    is padded with zeros to the fixed length, and the outputs cut back along
    the axes declared with that name (the module docstring: the padded
    reference).
    """
    undo = [(rewrite.original_inputs, options) for rewrite, options in reversed(reshapers) if rewrite.original_inputs]

    def source_feed(feed: Feed) -> Feed:
        for original_inputs, options in undo:
            feed = list(original_inputs(list(feed), options))
        return feed

    if reference is not None:
        original, what = reference
        return lambda feeds: [list(map(np.asarray, original(source_feed(feed)))) for feed in feeds], what
    try:
        run = onnxruntime_runner(source)
    except Exception as error:
        log.warning("onnxruntime cannot run the source model (%s); the rewritten model is the reference",
                    describe(error))
        return onnxruntime_runner(rewritten), "onnxruntime on the rewritten model (the source does not run there)"
    fixed = static_batch(source)
    padded_axes, fixed_lengths = fixed_axes(source, rewritten), fixed_sizes(source, rewritten)

    def by_sample(feed: Feed) -> Outputs:
        if fixed is None or not feed or feed[0].ndim == 0 or fixed == len(feed[0]):
            return run([feed])[0]
        samples = [run([[np.repeat(array[i : i + 1], fixed, axis=0) for array in feed]])[0] for i in range(len(feed[0]))]
        return [np.concatenate([outputs[index][:1] for outputs in samples]) for index in range(len(samples[0]))]

    def at_fed_lengths(feed: Feed) -> Outputs:
        fed = {axis.name: feed[axis.input].shape[axis.axis] for axis in padded_axes}
        return cut_to_lengths(by_sample(zero_padded(source_feed(feed), padded_axes)), rewritten, fed, fixed_lengths)

    what = "onnxruntime on the source model"
    if fixed_lengths:
        what += ", inputs padded with zeros to its fixed " + ", ".join(
            f"{name} {size}" for name, size in fixed_lengths.items())
    return lambda feeds: [at_fed_lengths(feed) for feed in feeds], what


def zero_padded(feed: Feed, axes: Sequence[FixedAxis]) -> Feed:
    """``feed`` with zeros of each input's dtype appended along each of ``axes``, up to the size the source model
    fixes there."""
    padded = list(feed)
    for axis in axes:
        array = padded[axis.input]
        missing = axis.size - array.shape[axis.axis]
        if missing < 0:
            raise longer_than_fixed(axis.name, array.shape[axis.axis], axis.size)
        widths = [(0, 0)] * array.ndim
        widths[axis.axis] = (0, missing)
        padded[axis.input] = np.pad(array, widths)
    return padded


def refuse_longer_than_fixed(axis_sizes: Mapping[str, Sequence[int]], fixed: Mapping[str, int]) -> None:
    """Refuse a size asked for a named dimension longer than the source model fixes it at (``fixed``, by name):
    onnxruntime on the source model runs only at that size, and checks shorter ones padded to it."""
    for name, sizes in axis_sizes.items():
        longer = [size for size in sizes if name in fixed and size > fixed[name]]
        if longer:
            raise longer_than_fixed(name, longer[0], fixed[name])


def longer_than_fixed(name: str, size: int, fixed: int) -> SurgeonError:
    """The error for a ``size`` of ``name`` that the padded reference cannot check: the source fixes it at
    ``fixed``."""
    return SurgeonError(
        f"--axis-sizes {name}={size}: the ONNX file fixes {name} at {fixed}, and nothing computes the original at a "
        f"longer length (each length is checked against the original given the input padded with zeros to {fixed})",
        hint=f"ask for lengths up to {fixed}, or export from PyTorch with --set torch.dynamic_axes=INPUT:AXIS:{name} "
             "to check any length")


def cut_to_lengths(outputs: Outputs, model: onnx.ModelProto, fed: Mapping[str, int],
                   fixed: Mapping[str, int]) -> Outputs:
    """``outputs`` of the source model run at the ``fixed`` sizes, cut to the ``fed`` size of each name along every
    axis ``model`` declares with that name; an output of another size there cannot be cut, and is refused."""
    cut = []
    for value, output in zip(model.graph.output, outputs):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            name = dim.dim_param
            if name not in fed:
                continue
            if axis >= output.ndim or output.shape[axis] != fixed[name]:
                raise SurgeonError(
                    f"verification: output {value.name!r} of the rewritten model declares axis {axis} as {name}, "
                    f"but the source model, run at its fixed {name} {fixed[name]}, gives it shape "
                    f"{list(output.shape)}: the output cannot be cut to the {name} fed",
                    hint=f"the rewrite names an output axis {name} that does not follow the inputs' {name}; "
                         "--no-verify skips the check")
            output = output[(slice(None),) * axis + (slice(0, fed[name]),)]
        cut.append(output)
    return cut


def onnxruntime_runner(model: onnx.ModelProto, optimized: bool = True) -> Runner:
    """onnxruntime on ``model``; ``optimized=False`` turns its graph optimizations off, so that it computes the
    graph as written (its fusions may order a float sum differently for another shape of the same graph).

    A model whose weights are on disk (``surgeon.onnx_io``) is handed over without them, and onnxruntime reads
    them from their folder, as it reads a model file beside its data: no message ever holds them."""
    import onnxruntime

    from surgeon.onnx_io import data_folder, stripped

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failing run is reported once, in the parity table
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    folder = data_folder(model)
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        model = stripped(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: [session.run(None, dict(zip(names, feed))) for feed in feeds]


def joined(samples: list[Result]) -> Result:
    """The runs of single samples, concatenated along the batch; the first failure if one failed."""
    failures = [sample for sample in samples if isinstance(sample, RunFailure)]
    if failures:
        return failures[0]
    return [np.concatenate(parts) for parts in zip(*samples)]


def compare(stage_name: str, case: Case | int, actual: Result, expected: Result, atol: float, rtol: float,
            check: str = "vs reference", names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One table row per output, named by ``names`` (else numbered): its measures and verdict (:func:`judge`);
    ``batch`` holds the batch size (``case``, or a plain batch size), and ``sizes`` the named sizes of the case
    when it has any."""
    if isinstance(case, int):
        case = Case(case)
    labels = list(names) if names is not None else list(range(len(expected))) if isinstance(expected, list) else [0]
    rows = []
    for label, verdict in zip(labels, verdicts(actual, expected, len(labels), atol, rtol)):
        row = {"stage": stage_name, "batch": case.batch, "check": check, "output": label,
               "max_abs": verdict.max_abs, "max_rel": verdict.max_rel, "max_scaled": verdict.max_scaled,
               "ok": verdict.ok}
        rows.append(row | ({"sizes": dict(case.sizes)} if case.sizes else {})
                    | ({"error": verdict.error} if verdict.error else {}))
    return rows


def case_of(row: dict[str, Any]) -> Case:
    """The case a table row was measured at."""
    return Case(row["batch"], tuple(row.get("sizes", {}).items()))


@dataclass(frozen=True)
class Verdict:
    """Whether one output passes, and how far it is from what was expected; ``error`` says why it fails when the
    measures do not (a run that failed, another shape, NaN on one side, an integer that differs)."""

    ok: bool
    error: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    max_scaled: float | None = None


def verdicts(actual: Result, expected: Result, count: int, atol: float, rtol: float) -> list[Verdict]:
    """One verdict for each of the ``count`` outputs."""
    if isinstance(actual, RunFailure):
        return [Verdict(False, actual.message)] * count
    if isinstance(expected, RunFailure):
        return [Verdict(False, expected.message)] * count
    if len(actual) != len(expected):
        return [Verdict(False, f"{len(actual)} outputs, expected {len(expected)}")] * count
    return [judge(np.asarray(got), np.asarray(want), atol, rtol) for got, want in zip(actual, expected)]


def judge(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> Verdict:
    """The criterion of the module docstring: floats within ``atol + rtol * scale`` of their sample, everything
    else equal, NaN and Inf matched."""
    if got.shape != want.shape:
        return Verdict(False, f"output shape {got.shape}, expected {want.shape}")
    if want.dtype.kind in "OSU":  # strings: nothing to measure
        if np.array_equal(got, want):
            return Verdict(True, None, 0.0, 0.0, 0.0)
        return Verdict(False, first_of(np.asarray(got != want), got, want, "differ"))
    wide_got, wide_want = widened(got), widened(want)
    finite = np.isfinite(wide_got) & np.isfinite(wide_want)
    with np.errstate(over="ignore"):  # values near the largest float64 differ by Inf: a failure, not a warning
        diff = np.abs(np.where(finite, wide_got, 0) - np.where(finite, wide_want, 0))
    magnitude = np.abs(np.where(np.isfinite(wide_want), wide_want, 0))
    scale = sample_scale(magnitude)
    measures = (largest(diff), largest(ratio(diff, np.maximum(magnitude, atol))),
                largest(ratio(diff, np.maximum(scale, atol))))
    matched = (np.isnan(wide_got) & np.isnan(wide_want)) | (np.isinf(wide_want) & (wide_got == wide_want))
    lone = ~finite & ~matched
    if lone.any():
        return Verdict(False, first_of(lone, got, want, "are NaN or Inf on one side only"), *measures)
    if not inexact(want.dtype):
        unequal = np.asarray(got != want)
        if unequal.any():
            why = f"{first_of(unequal, got, want, 'differ')}; {want.dtype} outputs must be equal"
            return Verdict(False, why, *measures)
        return Verdict(True, None, *measures)
    return Verdict(bool(np.all(diff <= atol + rtol * scale)), None, *measures)


def inexact(dtype: np.dtype) -> bool:
    """Floating point: NumPy's, and ml_dtypes' (bfloat16, float8 ...), whose kind says nothing."""
    return np.issubdtype(dtype, np.inexact) or dtype.name.startswith(("float", "bfloat"))


def widened(array: np.ndarray) -> np.ndarray:
    """``array`` as float64 (complex128 if complex), so that differences neither wrap nor round."""
    return array.astype(np.complex128 if np.iscomplexobj(array) else np.float64)


def sample_scale(magnitude: np.ndarray) -> np.ndarray:
    """The largest magnitude of each value's sample (the slice along the first axis), broadcastable against
    ``magnitude``; a value is its own sample in an output of zero or one dimension."""
    if magnitude.ndim < 2:
        return magnitude
    return magnitude.max(axis=tuple(range(1, magnitude.ndim)), keepdims=True, initial=0.0)


def ratio(diff: np.ndarray, divisor: np.ndarray) -> np.ndarray:
    """``diff / divisor``: 0 where both are 0, Inf where only the divisor is (``atol`` may be 0)."""
    return np.divide(diff, divisor, out=np.where(diff > 0, np.inf, 0.0), where=divisor > 0)


def largest(values: np.ndarray) -> float:
    """The largest of ``values``; 0 for none."""
    return float(values.max(initial=0.0))


def first_of(mask: np.ndarray, got: np.ndarray, want: np.ndarray, what: str) -> str:
    """How many values ``mask`` marks, and the first of them, in words."""
    first = tuple(int(i) for i in np.argwhere(mask)[0])
    return (f"{int(mask.sum())} of {mask.size} values {what} "
            f"(first at {list(first)}: {got[first]} here, {want[first]} expected)")


def format_table(table: list[dict[str, Any]]) -> list[str]:
    """The parity table as aligned lines for the terminal."""
    header = ("stage", "batch", "check", "output", "max abs", "max rel", "max scaled", "")
    lines = [header]
    for row in table:
        measures = [f"{row[key]:.2e}" if row[key] is not None else "-"
                    for key in ("max_abs", "max_rel", "max_scaled")]
        verdict = "ok" if row["ok"] else f"FAILS: {row['error']}" if "error" in row else "DIVERGES"
        lines.append((row["stage"], str(case_of(row)), row["check"], str(row["output"]), *measures, verdict))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    return ["parity:"] + [("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
                          .rstrip() for line in lines]
