"""Running rewrite passes: import once, run every pass, export once.

An onnx-graphsurgeon round trip costs far more than a pass, so the graph is
imported once and exported once, and the checks run once, on the result:
export (which sorts, so finds cycles), the ONNX checker and strict shape
inference. When they fail, the passes are replayed one at a time with every
check after each, to name the pass that broke the graph and how. So a broken
graph costs a replay; a sound one costs nothing more than one set of checks.

Weights stored as external data stay on disk through the round trip (see
``surgeon.onnx_io``): the graph reads a constant's values from its file only
when a pass asks for them, and exports the tensor as the reference it was, so
a model with more weights than a protobuf message can hold (2 GiB) goes
through the passes too.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from surgeon.errors import PluginError, SurgeonError, blamed_on, describe
from surgeon.onnx_io import check_model, external_tensors, nonpositive_attribute, tensor_array
from surgeon.plugin import RewritePass

log = logging.getLogger("surgeon")
# onnx-graphsurgeon prints its warnings on stdout; they mean nothing to surgeon's users
G_LOGGER.severity = G_LOGGER.ERROR

Step = tuple[RewritePass, Any]


@dataclass
class PassRecord:
    """What one pass did, for report.json."""

    name: str
    options: dict[str, Any]
    seconds: float
    nodes_added: int
    nodes_removed: int
    nodes_rewritten: int
    renamed: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.nodes_added or self.nodes_removed or self.nodes_rewritten or self.renamed or self.details)

    def summary(self) -> str:
        parts = [f"{count} {what}" for count, what in (
            (self.nodes_added, "added"), (self.nodes_removed, "removed"), (self.nodes_rewritten, "rewritten")
        ) if count]
        if self.renamed:
            parts.append(", ".join(f"{old} -> {new}" for old, new in self.renamed.items()))
        return "; ".join(parts) or "no change"


def run_passes(model: onnx.ModelProto, steps: Sequence[Step]) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Apply ``steps`` in order; return the rewritten model and a record per pass.

    The rewritten model is never ``model`` itself when it has external data, so that writing it (which re-points
    its external tensors at the written file) leaves the source model reading the source's files."""
    if not steps:
        if external_tensors(model):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # a skeleton: its weights are on disk
            return copy, []
        return model, []
    with gc_paused():
        return _run_passes(model, steps)


def _run_passes(model: onnx.ModelProto, steps: Sequence[Step]) -> tuple[onnx.ModelProto, list[PassRecord]]:
    graph = import_graph(model)
    records = []
    before = Snapshot(graph)
    for rewrite, options in steps:
        started = time.perf_counter()
        details = apply(rewrite, graph, options)
        after = Snapshot(graph)
        record = before.diff(after, rewrite, options, time.perf_counter() - started, details)
        log.info("  %-16s %s (%.2fs)", rewrite.name, record.summary(), record.seconds)
        records.append(record)
        before = after
    rewritten, problem = export_and_check(graph, model)
    if rewritten is None or problem and not validation_problem(model):
        raise blame(model, steps)
    if problem:
        log.warning("the model fails the ONNX checks before and after the rewrites: %s", problem)
    return rewritten, records


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """The onnx-graphsurgeon graph of ``model`` (shared by the pass runner and the detectors); its constants
    stored as external data are read from their files when a pass reads their values."""
    graph = gs.import_onnx(model)
    if external_tensors(model):
        for each in (graph, *graph.subgraphs(recursive=True)):
            for tensor in each.tensors().values():
                if isinstance(tensor, gs.Constant) and type(tensor._values) is LazyValues \
                        and tensor.data_location == onnx.TensorProto.EXTERNAL:
                    tensor._values = tensor.on_disk = OnDisk(tensor._values.tensor)
                    tensor.data_location = None  # the tensor keeps its own; new values set by a pass go inline
    return graph


class OnDisk(LazyValues):
    """The values of a constant stored as external data, read from its file (onnx-graphsurgeon's own would look
    for the file in the working folder); exported, like any ``LazyValues``, as the tensor it was imported from.

    The values read are read-only (a pass that changes a weight gives the constant new values), and the
    constant keeps this object: ``back_on_disk`` puts it back where the values were only read, so that reading a
    weight never moves it into the exported message."""

    def __init__(self, tensor: onnx.TensorProto) -> None:
        super().__init__(tensor)
        self.loaded: np.ndarray | None = None

    def load(self) -> np.ndarray:
        array = tensor_array(self.tensor)
        array.flags.writeable = False
        self.loaded = array
        return array


def back_on_disk(graph: gs.Graph) -> None:
    """Constants whose external values a pass only read export as the external tensors they were imported as."""
    for each in (graph, *graph.subgraphs(recursive=True)):
        for tensor in each.tensors().values():
            on_disk = getattr(tensor, "on_disk", None)
            if isinstance(tensor, gs.Constant) and on_disk is not None and tensor._values is on_disk.loaded:
                tensor._values = on_disk


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a graph is imported, rewritten and exported.

    An onnx-graphsurgeon graph is millions of small linked objects; every
    collection walks them all, for nothing, since they stay alive until export.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def apply(rewrite: RewritePass, graph: gs.Graph, options: Any) -> dict | None:
    """Run one pass; errors name it."""
    try:
        with blamed_on(rewrite.name, "the pass"):
            details = rewrite.run(graph, options)
    except SurgeonError as error:
        if isinstance(error, PluginError):
            raise
        raise PluginError(rewrite.name, str(error)) from error  # several passes run: say which one
    if details is not None and not isinstance(details, dict):
        raise PluginError(rewrite.name, f"returned {type(details).__name__}; a pass returns None or a dict")
    return details


def export_and_check(graph: gs.Graph, original: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """Clean up, sort and export ``graph``; then the ONNX checker and strict shape inference.

    Returns the model (None when it cannot be exported) and the first problem found.
    """
    try:
        graph.cleanup().toposort()  # toposort raises on a cycle
        back_on_disk(graph)
        model = gs.export_onnx(graph)
    except Exception as error:
        return None, f"exporting the graph failed: {describe(error)}"
    model.model_version = original.model_version
    model.doc_string = original.doc_string
    model.metadata_props.extend(original.metadata_props)
    return model, validation_problem(model)


def validation_problem(model: onnx.ModelProto) -> str | None:
    """What the ONNX checker or strict shape inference says is wrong, if anything."""
    crasher = nonpositive_attribute(model.graph)  # would kill the process in shape inference
    if crasher:
        return crasher
    try:
        check_model(model)  # by path when the weights are on disk
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as error:
        return describe(error)
    return None


def blame(model: onnx.ModelProto, steps: Sequence[Step]) -> PluginError:
    """Replay the passes with all checks after each; name the first that fails them."""
    for count in range(1, len(steps) + 1):
        graph = import_graph(model)
        for rewrite, options in steps[:count]:
            apply(rewrite, graph, options)
        culprit = steps[count - 1][0].name
        problems = structural_problems(graph)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return PluginError(culprit, f"left an invalid graph: {problems[0]}{more}")
        _, problem = export_and_check(graph, model)
        if problem:
            return PluginError(culprit, f"left a graph that fails the ONNX checks: {problem}")
    return PluginError(steps[-1][0].name, "the passes together left a graph that fails the ONNX checks")


def structural_problems(graph: gs.Graph, outer: frozenset[int] = frozenset()) -> list[str]:
    """Dangling inputs and tensors with two producers, subgraphs included: the plainest
    explanation of a broken graph, used when naming the pass that broke it."""
    problems: list[str] = []
    producers: dict[int, gs.Node] = {}
    for node in graph.nodes:
        for tensor in node.outputs:
            if id(tensor) in producers:
                problems.append(f"tensor {tensor.name!r} is produced by two nodes, "
                                f"{producers[id(tensor)].name!r} and {node.name!r}")
            producers[id(tensor)] = node
    available = outer | {id(t) for t in graph.inputs} | producers.keys()

    def known(tensor: gs.Tensor) -> bool:
        return id(tensor) in available or not tensor.name or isinstance(tensor, gs.Constant)

    for node in graph.nodes:
        for tensor in node.inputs:
            if not known(tensor):
                problems.append(f"node {node.name or node.op!r} reads {tensor.name!r}, which nothing produces")
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                problems.extend(structural_problems(value, frozenset(available)))
    problems.extend(f"graph output {t.name!r} is produced by no node" for t in graph.outputs if not known(t))
    return problems


class Snapshot:
    """The nodes of a graph and the names of its inputs and outputs at one moment."""

    def __init__(self, graph: gs.Graph) -> None:
        self.nodes = list(graph.nodes)  # alive, so their ids cannot be reused
        # a node whose outputs were cleared is removed (cleanup drops it at export)
        self.signatures = {id(node): _signature(node) for node in self.nodes if node.outputs}
        self.io = [(tensor, tensor.name) for tensor in (*graph.inputs, *graph.outputs)]

    def diff(self, after: Snapshot, rewrite: RewritePass, options: Any, seconds: float, details: dict | None) -> PassRecord:
        later = after.signatures
        removed = rewritten = 0
        for key, signature in self.signatures.items():
            now = later.get(key)
            if now is None:
                removed += 1
            elif now != signature:
                rewritten += 1
        return PassRecord(
            name=rewrite.name,
            options=_plain(asdict(options)),
            seconds=round(seconds, 4),
            nodes_added=len(later) - (len(self.signatures) - removed),
            nodes_removed=removed,
            nodes_rewritten=rewritten,
            renamed={old: tensor.name for tensor, old in self.io if tensor.name != old},
            details=details,
        )


def _signature(node: gs.Node) -> tuple:
    attrs = tuple((key, _value_key(value)) for key, value in node.attrs.items()) if node.attrs else ()
    return (node.op, node.name, node.domain, tuple(map(id, node.inputs)), tuple(map(id, node.outputs)), attrs)


def _value_key(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_value_key(item) for item in value)
    return id(value)


def _plain(value: Any) -> Any:
    """Options as JSON-friendly values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
