"""Parity: does every stage still compute what the source computed?

Seeded random inputs, shaped and typed from the model, are run at several
batch sizes through the reference (PyTorch when the source provides it, else
onnxruntime on the source model) and through each output stage. A stage
diverges when ``|actual - expected| > atol + rtol * |expected|`` anywhere.
Per sample, sample i of a batched run must also equal the run of sample i
alone: a model that mixes samples across the batch fails even when batch 1
matches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from surgeon.errors import SurgeonError

if TYPE_CHECKING:
    from surgeon.pipeline import RunContext

log = logging.getLogger("surgeon")

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
SEED = 0
SYMBOLIC_DIM_SIZE = 4

Feed = list[np.ndarray]  # one array per model input, in the model's input order
Runner = Callable[[Sequence[Feed]], list[list[np.ndarray]]]


def check_parity(ctx: RunContext) -> list[dict[str, Any]]:
    """Compare every stage with the reference; return the parity table or raise on divergence."""
    model = ctx.model
    sizes = batch_sizes(model, ctx.config.batch_sizes)
    expected = reference_runner(ctx)
    table = []
    for stage_name, runner in stage_runners(ctx):
        for size in sizes:
            feed = random_feed(model, size)
            rows = compare(stage_name, size, runner([feed])[0], expected([feed])[0], ctx.config.atol, ctx.config.rtol)
            if size > 1:
                rows += per_sample(stage_name, size, runner, feed, ctx.config.atol, ctx.config.rtol)
            table.extend(rows)
            for row in rows:
                log.info("  %-12s batch %-3d %-14s max abs %.2e  max rel %.2e  %s", row["stage"], row["batch"],
                         row["check"], row["max_abs"], row["max_rel"], "ok" if row["ok"] else "DIVERGES")
    failed = [row for row in table if not row["ok"]]
    if failed:
        first = failed[0]
        raise SurgeonError(
            f"verification failed: stage {first['stage']!r} at batch size {first['batch']} ({first['check']}, "
            f"output {first['output']!r}) differs from the reference by up to {first['max_abs']:.3g} "
            f"(atol {ctx.config.atol}, rtol {ctx.config.rtol})",
            hint="nothing was written; --no-verify skips this check",
        )
    return table


def stage_runners(ctx: RunContext) -> list[tuple[str, Runner]]:
    """The outputs that are checked: the rewritten ONNX, and later stages when present."""
    return [("onnx", onnxruntime_runner(ctx.model))]


def reference_runner(ctx: RunContext) -> Runner:
    """PyTorch when the source set ``ctx.reference``; else onnxruntime on the source model.

    A source model with a fixed batch of 1 (exported at batch 1, made dynamic
    by a rewrite) is run one sample at a time and the results concatenated.
    """
    if ctx.reference is not None:
        reference = ctx.reference
        names = [i.name for i in ctx.model.graph.input]
        return lambda feeds: [list(map(np.asarray, reference(dict(zip(names, feed))))) for feed in feeds]
    source = ctx.source_model
    run = onnxruntime_runner(source)
    if static_batch(source) != 1:
        return run

    def one_by_one(feeds: Sequence[Feed]) -> list[list[np.ndarray]]:
        results = []
        for feed in feeds:
            samples = [run([[array[i : i + 1] for array in feed]])[0] for i in range(len(feed[0]))]
            results.append([np.concatenate(parts) for parts in zip(*samples)])
        return results

    return one_by_one


def onnxruntime_runner(model: onnx.ModelProto) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: [session.run(None, dict(zip(names, feed))) for feed in feeds]


def per_sample(stage_name: str, size: int, runner: Runner, feed: Feed, atol: float, rtol: float) -> list[dict]:
    """Sample i of the batched run must equal the run of sample i alone."""
    batched, *alone = runner([feed] + [[array[i : i + 1] for array in feed] for i in range(size)])
    joined = [np.concatenate(parts) for parts in zip(*alone)]
    return compare(stage_name, size, batched, joined, atol, rtol, check="per-sample")


def compare(stage_name: str, size: int, actual: list[np.ndarray], expected: list[np.ndarray],
            atol: float, rtol: float, check: str = "vs reference") -> list[dict[str, Any]]:
    if len(actual) != len(expected):
        raise SurgeonError(f"stage {stage_name!r} gives {len(actual)} outputs, the reference {len(expected)}")
    rows = []
    for index, (got, want) in enumerate(zip(actual, expected)):
        got, want = np.asarray(got), np.asarray(want)
        row = {"stage": stage_name, "batch": size, "check": check, "output": index}
        if got.shape != want.shape:
            rows.append({**row, "max_abs": float("inf"), "max_rel": float("inf"), "ok": False,
                         "error": f"shape {got.shape} != {want.shape}"})
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        scale = np.abs(want.astype(np.float64))
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(scale, atol)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= atol + rtol * scale)) and not np.isnan(diff).any()
        rows.append({**row, "max_abs": max_abs, "max_rel": max_rel, "ok": ok})
    return rows


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
    inputs = _real_inputs(model)
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
    for value in _real_inputs(model):
        tensor_type = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else SYMBOLIC_DIM_SIZE for dim in tensor_type.shape.dim]
        if shape:
            shape[0] = size
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(dtype)
        else:
            array = rng.integers(0, 4, shape).astype(dtype)
        feed.append(array)
    return feed


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]
