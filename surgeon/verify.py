"""Parity: does every stage still compute what the source computed?

Seeded random inputs, shaped and typed from the model, are run at several
batch sizes through the reference (PyTorch when the source provides it, else
onnxruntime on the source model) and through each output stage: onnxruntime
on the rewritten ONNX, and every model a server would load (the SavedModel,
a frozen graph), each in a fresh process in graph mode, as a server runs it:
a Python callback (PyFunc) that onnx-tf fell back to runs only in the
process that converted the model, and a batch fixed on a declared output
shape passes an eager check there but fails in graph mode at any other
batch. A stage diverges when
``|actual - expected| > atol + rtol * |expected|`` anywhere, or when it fails
to run. Per sample, sample i of a batched run must also equal the run of
sample i alone: a model that mixes samples across the batch fails even when
batch 1 matches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from surgeon.errors import SurgeonError, describe
from surgeon.onnx_io import real_inputs

if TYPE_CHECKING:
    from surgeon.pipeline import RunContext

log = logging.getLogger("surgeon")

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
SEED = 0
SYMBOLIC_DIM_SIZE = 4

Feed = list[np.ndarray]  # one array per model input, in the model's input order
Outputs = list[np.ndarray]  # one array per model output, in the model's output order
Runner = Callable[[Sequence[Feed]], list[Outputs]]


@dataclass(frozen=True)
class RunFailure:
    """Why a stage could not answer a feed."""

    message: str


Result = Outputs | RunFailure
Stage = Callable[[Sequence[Feed]], list[Result]]  # called once with every feed of the check


def check_parity(ctx: RunContext) -> list[dict[str, Any]]:
    """Compare every stage with the reference; return the parity table or raise on divergence."""
    model = ctx.model
    atol, rtol = ctx.config.atol, ctx.config.rtol
    sizes = batch_sizes(model, ctx.config.batch_sizes)
    by_sample = static_batch(model) is None  # a fixed batch cannot run one sample alone
    batched = {size: random_feed(model, size) for size in sizes}
    feeds = []
    for size, feed in batched.items():
        feeds.append(feed)
        if by_sample and size > 1:
            feeds += [[array[i : i + 1] for array in feed] for i in range(size)]
    expected = reference_outputs(ctx, batched)
    names = [value.name for value in model.graph.output]
    table = []
    for stage_name, stage in stage_runners(ctx):
        results = iter(stage(feeds))
        for size in sizes:
            got = next(results)
            table += compare(stage_name, size, got, expected[size], atol, rtol, names=names)
            if by_sample and size > 1:
                alone = joined([next(results) for _ in range(size)])
                table += compare(stage_name, size, got, alone, atol, rtol, check="per-sample", names=names)
    for line in format_table(table):
        log.info("%s", line)
    failed = [row for row in table if not row["ok"]]
    if failed:
        first = failed[0]
        where = (f"stage {first['stage']!r} at batch size {first['batch']} "
                 f"({first['check']}, output {first['output']!r})")
        if "error" in first:
            message = f"verification failed: {where} fails: {first['error']}"
        else:
            message = (f"verification failed: {where} differs from the reference by up to {first['max_abs']:.3g} "
                       f"(atol {atol}, rtol {rtol})")
        raise SurgeonError(message, hint=failure_hint(table, first, ctx.config.plugins))
    return table


def failure_hint(table: list[dict[str, Any]], first: dict[str, Any], plugins: Sequence[str]) -> str:
    """What to try, from the rows that passed: a batch baked into the model only when batch 1 passes, the samples
    of the failing batch are mixed (or not checked), and dynamic_batch did not run."""
    hint = "nothing was written; --no-verify skips this check"
    same_stage = [row for row in table if row["stage"] == first["stage"]]
    at_one = [row for row in same_stage if row["batch"] == 1]
    if first["batch"] == 1 or not at_one or not all(row["ok"] for row in at_one):
        return hint
    per_sample = [row for row in same_stage if row["batch"] == first["batch"] and row["check"] == "per-sample"]
    if per_sample and all(row["ok"] for row in per_sample):
        return (f"batch 1 passes and each sample of batch {first['batch']} equals that sample run alone, so no "
                f"sample is mixed: the difference is numerical (--atol, --rtol loosen the check); {hint}")
    if "dynamic_batch" in plugins:
        return (f"batch 1 passes and dynamic_batch ran: a batch-dependent computation it did not see is left "
                f"(`surgeon inspect MODEL.onnx` lists what it detects); {hint}")
    return ("batch 1 passes, so the export likely baked the batch size into the model: "
            f"--plugins dynamic_batch makes it dynamic; {hint}")


def stage_runners(ctx: RunContext) -> list[tuple[str, Stage]]:
    """The checked stages: onnxruntime on the rewritten ONNX, then each served model in a fresh process."""
    stages: list[tuple[str, Stage]] = [("onnx", each_feed(onnxruntime_runner(ctx.model)))]
    stages += [(name, fresh_process(path, ctx.model)) for name, path in ctx.served_models.items()]
    return stages


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


def reference_outputs(ctx: RunContext, batched: dict[int, Feed]) -> dict[int, Outputs]:
    """What the source computes for each batched feed."""
    run, what = reference_runner(ctx)
    ctx.report["reference"] = what
    expected = {}
    for size, feed in batched.items():
        try:
            expected[size] = run([feed])[0]
        except Exception as error:
            raise SurgeonError(f"verification: the reference ({what}) cannot run at batch size {size}: "
                               f"{describe(error)}", hint="--batch-sizes picks others; --no-verify skips the check"
                               ) from error
    return expected


def reference_runner(ctx: RunContext) -> tuple[Runner, str]:
    """PyTorch when the source set ``ctx.reference``; else onnxruntime on the source model; and what it is.

    When onnxruntime refuses the source model (deprecated operators a pass
    replaced, say), onnxruntime on the rewritten model is the reference: the
    served models are still checked against it, the rewrite itself is not.

    Feeds go through the ``original_inputs`` of the passes that changed what
    the model takes, last pass first. A source model with a fixed batch B
    (exported at B, made dynamic by a rewrite) runs each sample repeated B
    times, keeping the first result: what it computes for that sample alone.
    """
    passes = [(rewrite, options) for rewrite, options in reversed(ctx.plan.passes) if rewrite.original_inputs]

    def source_feed(feed: Feed) -> Feed:
        for rewrite, options in passes:
            feed = list(rewrite.original_inputs(list(feed), options))
        return feed

    if ctx.reference is not None:
        reference = ctx.reference
        return (lambda feeds: [list(map(np.asarray, reference(source_feed(feed)))) for feed in feeds],
                "the PyTorch model")
    try:
        run = onnxruntime_runner(ctx.source_model)
    except Exception as error:
        log.warning("onnxruntime cannot run the source model (%s); the rewritten model is the reference",
                    describe(error))
        return onnxruntime_runner(ctx.model), "onnxruntime on the rewritten model (the source does not run there)"
    fixed = static_batch(ctx.source_model)

    def by_sample(feed: Feed) -> Outputs:
        if fixed is None or not feed or feed[0].ndim == 0 or fixed == len(feed[0]):
            return run([feed])[0]
        samples = [run([[np.repeat(array[i : i + 1], fixed, axis=0) for array in feed]])[0] for i in range(len(feed[0]))]
        return [np.concatenate([outputs[index][:1] for outputs in samples]) for index in range(len(samples[0]))]

    return lambda feeds: [by_sample(source_feed(feed)) for feed in feeds], "onnxruntime on the source model"


def onnxruntime_runner(model: onnx.ModelProto, optimized: bool = True) -> Runner:
    """onnxruntime on ``model``; ``optimized=False`` turns its graph optimizations off, so that it computes the
    graph as written (its fusions may order a float sum differently for another shape of the same graph)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: [session.run(None, dict(zip(names, feed))) for feed in feeds]


def joined(samples: list[Result]) -> Result:
    """The runs of single samples, concatenated along the batch; the first failure if one failed."""
    failures = [sample for sample in samples if isinstance(sample, RunFailure)]
    if failures:
        return failures[0]
    return [np.concatenate(parts) for parts in zip(*samples)]


def compare(stage_name: str, size: int, actual: Result, expected: Result, atol: float, rtol: float,
            check: str = "vs reference", names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per output: max abs and rel error, and whether it is within ``atol + rtol * |expected|``."""
    failure = next((result.message for result in (actual, expected) if isinstance(result, RunFailure)), None)
    if failure is None and len(actual) != len(expected):
        failure = f"{len(actual)} outputs, expected {len(expected)}"
    rows = []
    for index, name in enumerate(range(len(expected)) if names is None else names):
        row = {"stage": stage_name, "batch": size, "check": check, "output": name}
        got, want = (None, None) if failure else (np.asarray(actual[index]), np.asarray(expected[index]))
        error = failure or (f"output shape {got.shape}, expected {want.shape}" if got.shape != want.shape else None)
        if error:
            rows.append({**row, "max_abs": None, "max_rel": None, "ok": False, "error": error})
            continue
        if not (np.issubdtype(want.dtype, np.number) or want.dtype == np.bool_):  # strings: exact
            equal = got.shape == want.shape and bool(np.all(got == want))
            rows.append({**row, "max_abs": 0.0 if equal else None, "max_rel": 0.0 if equal else None, "ok": equal})
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        finite = np.isfinite(got64) & np.isfinite(want64)
        diff = np.abs(np.where(finite, got64, 0.0) - np.where(finite, want64, 0.0))
        scale = np.abs(np.where(finite, want64, 0.0))
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(scale, atol)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * scale))
        lone = lone_nonfinite(got64, want64)
        if lone:
            rows.append({**row, "max_abs": max_abs, "max_rel": max_rel, "ok": False, "error": lone})
            continue
        rows.append({**row, "max_abs": max_abs, "max_rel": max_rel, "ok": ok})
    return rows


def lone_nonfinite(got: np.ndarray, want: np.ndarray) -> str | None:
    """Where NaN or Inf stands on one side only, in words; None when both hold NaN at the same places and Inf of
    the same sign (a model may compute them on purpose)."""
    matched = (np.isnan(got) & np.isnan(want)) | (np.isinf(want) & (got == want))
    lone = ~(np.isfinite(got) & np.isfinite(want)) & ~matched
    if not lone.any():
        return None
    first = tuple(int(i) for i in np.argwhere(lone)[0])
    return (f"{int(lone.sum())} of {lone.size} values are NaN or Inf on one side only "
            f"(first at {list(first)}: {got[first]} here, {want[first]} expected)")


def format_table(table: list[dict[str, Any]]) -> list[str]:
    """The parity table as aligned lines for the terminal."""
    header = ("stage", "batch", "check", "output", "max abs", "max rel", "")
    lines = [header]
    for row in table:
        errors = [f"{row[key]:.2e}" if row[key] is not None else "-" for key in ("max_abs", "max_rel")]
        verdict = "ok" if row["ok"] else f"FAILS: {row['error']}" if "error" in row else "DIVERGES"
        lines.append((row["stage"], str(row["batch"]), row["check"], str(row["output"]), *errors, verdict))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    return ["parity:"] + [("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])
                          .rstrip() for line in lines]


def batch_sizes(model: onnx.ModelProto, requested: Sequence[int] | None) -> list[int]:
    """The requested sizes; by default 1 and 3 when the batch is dynamic, else the fixed batch."""
    fixed = static_batch(model)
    if requested:
        wrong = [size for size in requested if fixed is not None and size != fixed]
        if wrong:
            raise SurgeonError(f"--batch-sizes {wrong[0]}: the model's batch is fixed at {fixed}",
                               hint="make it dynamic with --plugins dynamic_batch")
        return list(requested)
    return [fixed] if fixed is not None else [1, 3]


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed leading dimension of the first input, or None when it is symbolic."""
    inputs = real_inputs(model)
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value"):
        return None
    return dims[0].dim_value


def random_feed(model: onnx.ModelProto, size: int) -> Feed:
    """Seeded random inputs for ``model`` with batch ``size`` (the same at every call)."""
    rng = np.random.default_rng(SEED)
    feed = []
    for value in real_inputs(model):
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else SYMBOLIC_DIM_SIZE for dim in tensor_type.shape.dim]
        if shape:
            shape[0] = size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(dtype)
        elif dtype == np.uint8:  # images: the whole range
            array = rng.integers(0, 256, shape).astype(dtype)
        else:
            array = rng.integers(0, 4, shape).astype(dtype)
        feed.append(array)
    return feed
