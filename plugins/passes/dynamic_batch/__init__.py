"""dynamic_batch: make the batch dimension dynamic, correctly.

Setting the input's batch dim to ``?`` is not enough: tracing bakes the export
batch into the graph (``x.view(x.size(0), -1)`` becomes a Reshape to
``[1, -1]``, zeros built from ``x.size(0)`` become constants concatenated with
batched tensors, attention reshapes use ``x.shape[0]``), and static dims left
on the outputs make onnx-tf reshape the served output to them.

This pass follows the batch from the inputs through the graph (see
``flow``, with the per-op ``rules``, ``shape_rules`` and ``indexing``: index
arithmetic that gathers each sample's rows of a flattened batch), rewrites every
constant that carries the export batch where the batch flows so that it
follows the runtime batch (with the tensors of ``build``), names the batch
dim on the inputs, outputs and intermediate shapes, and stops with an error
naming the node when a model mixes samples or bakes the batch in a way it
cannot rewrite exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from surgeon import Finding, Hazard, RewritePass, SurgeonError, hookimpl
from surgeon_plugins.passes.dynamic_batch.build import BatchBuilder
from surgeon_plugins.passes.dynamic_batch.flow import Flow, follow
from surgeon_plugins.passes.dynamic_batch.rules import RULES
from surgeon_plugins.passes.dynamic_batch.state import Batch


@dataclass(frozen=True)
class DynamicBatchOptions:
    name: str = field(default="batch", metadata={"doc": "name given to batch dims that were fixed"})
    inputs: list[str] = field(default_factory=list,
                              metadata={"doc": "graph inputs that carry the batch (default: every input)"})
    axis: int = field(default=0, metadata={"doc": "the batch axis of those inputs"})

    def __post_init__(self) -> None:
        if self.axis < 0:
            raise ValueError("axis must be 0 or more")
        if not self.name:
            raise ValueError("name must not be empty")


def batched_inputs(graph: gs.Graph, options: DynamicBatchOptions) -> tuple[list[gs.Variable], int | None]:
    """The inputs that carry the batch, and the batch they were exported with (None when already symbolic)."""
    candidates = [t for t in graph.inputs if isinstance(t, gs.Variable)]
    if options.inputs:
        by_name = {t.name: t for t in candidates}
        unknown = [name for name in options.inputs if name not in by_name]
        if unknown:
            raise SurgeonError(f"inputs: the model has no input {unknown[0]!r} "
                               f"(its inputs: {', '.join(by_name) or 'none'})")
        chosen = [by_name[name] for name in options.inputs]
    else:
        chosen = [t for t in candidates if t.shape is not None and len(t.shape) > options.axis]
    if not chosen:
        raise SurgeonError(f"axis: the model has no input with an axis {options.axis}")
    for tensor in chosen:
        if tensor.shape is None or len(tensor.shape) <= options.axis:
            raise SurgeonError(f"axis: input {tensor.name!r} has no axis {options.axis} "
                               f"(shape {tensor.shape})")
    sizes = {t.name: t.shape[options.axis] for t in chosen if is_static(t.shape[options.axis])}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise SurgeonError(f"inputs: they disagree on the batch size on axis {options.axis} ({listed})",
                           hint="name the batched inputs with --set dynamic_batch.inputs=a,b")
    return chosen, next(iter(sizes.values()), None)


def is_static(dim: Any) -> bool:
    return isinstance(dim, int) and dim >= 0


def analyse(graph: gs.Graph, options: DynamicBatchOptions) -> tuple[list[gs.Variable], int | None, Flow]:
    inputs, export_batch = batched_inputs(graph, options)
    try:
        return inputs, export_batch, follow(graph, inputs, options.axis, export_batch, RULES)
    except SurgeonError as error:
        dynamic = [f"{t.name!r} axis {k} ({dim})" for t in inputs for k, dim in enumerate(t.shape or [])
                   if k != options.axis and not is_static(dim)]
        if export_batch is None or not dynamic or error.hint:
            raise
        raise SurgeonError(str(error), hint=f"the batch is fixed beside the dynamic {', '.join(dynamic)}, which "
                           "dynamic_batch does not follow: run it before dynamic_axes (--plugins "
                           "dynamic_batch,dynamic_axes,...), or export the batch dynamic too") from error


def shape_updates(graph: gs.Graph, flow: Flow, name: str) -> list[tuple[gs.Variable, list]]:
    """New shapes for the tensors whose declared shape fixes the batch (symbolic names already there are kept)."""
    updates = []
    for tensor in graph.tensors().values():
        state = flow.state(tensor)
        if isinstance(tensor, gs.Variable) and isinstance(state, Batch) and tensor.shape is not None \
                and state.axis < len(tensor.shape) and is_static(tensor.shape[state.axis]):
            shape = list(tensor.shape)
            shape[state.axis] = name if state.factor == 1 else None  # a merged axis has no name of its own
            updates.append((tensor, shape))
    return updates


def make_dynamic(graph: gs.Graph, options: DynamicBatchOptions) -> dict | None:
    inputs, export_batch, flow = analyse(graph, options)
    builder = BatchBuilder(graph, inputs[0], options.axis)
    for fix in flow.fixes:
        fix.node.inputs[fix.index] = fix.build(builder)
    updates = shape_updates(graph, flow, options.name)
    for tensor, shape in updates:
        tensor.shape = shape
    if not flow.fixes and not updates:
        return None
    return {
        "export_batch": export_batch,
        "inputs": [t.name for t in inputs],
        "rewritten": [f"{fix.where}: {fix.reason}" for fix in flow.fixes],
        "shapes_updated": len(updates),
    }


def detect(graph: gs.Graph, options: DynamicBatchOptions) -> list[Finding]:
    try:
        inputs, export_batch, flow = analyse(graph, options)
    except SurgeonError as error:
        return [Finding(where="graph", message=f"the batch cannot be made dynamic: {error}", fixable=False)]
    updated = {id(tensor) for tensor, _ in shape_updates(graph, flow, options.name)}
    findings = [Finding(where=f"input {t.name!r}", message=f"batch fixed at {export_batch} on axis {options.axis}; "
                        f"would become {options.name!r}") for t in inputs if id(t) in updated]
    findings += [Finding(where=fix.where, message=fix.reason, nodes=(fix.node.name,)) for fix in flow.fixes]
    for tensor in graph.outputs:
        if id(tensor) in updated:
            state = flow.state(tensor)
            if not isinstance(state, Batch):  # shape_updates updates the outputs that hold the batch
                raise TypeError(f"output {tensor.name!r} holds {state!r}, not the batch")
            axis = state.axis
            findings.append(Finding(where=f"output {tensor.name!r}", message=(
                f"declares a fixed batch of {tensor.shape[axis]} on axis {axis}; onnx-tf would reshape the served "
                "output to it")))
    stale = updated - {id(t) for t in (*graph.inputs, *graph.outputs)}
    if stale:
        findings.append(Finding(where="value_info", message=f"{len(stale)} intermediate shapes fix the batch"))
    return findings


@hookimpl
def surgeon_passes():
    return [RewritePass(name="dynamic_batch", doc="Make the batch dimension dynamic, rewriting what bakes it in.",
                        options=DynamicBatchOptions, run=make_dynamic, detect=detect,
                        fixes=frozenset({Hazard.FIXED_BATCH}))]
