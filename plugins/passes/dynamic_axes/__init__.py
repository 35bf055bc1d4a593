"""dynamic_axes: make a fixed axis other than the batch dynamic (the token length of a text model exported at one
length), rewriting what bakes its size in.

Declaring the input's axis dynamic is not enough: the export's length L is baked into reshapes
(``[1, 16, -1, 64]``), into positions folded from ``arange``, into position embeddings and causal masks folded to
L rows, and into the shapes masks are expanded to. This pass follows the length from the inputs named in ``axes``
through the graph (see ``flow``, with the per-op ``rules``), cuts what holds L rows to the runtime length, makes
the shape entries that bake L follow it, names the axis on the inputs, outputs and intermediate shapes, and stops
with an error naming the node where the length goes somewhere it cannot follow.

What the rewritten model computes at a length S is what the original computes for its first S positions: a cut
is exact for S <= L. The original runs only at L, so an ONNX file is verified at each length S <= L against the
original given the same input padded with zeros to L (attention masks then mask the padding, and causal models
never see it); a PyTorch model is verified against PyTorch at S.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from surgeon import Finding, RewritePass, SurgeonError, hookimpl
from surgeon.axes import DynamicAxis, parse_dynamic_axis
from surgeon_plugins.passes.dynamic_axes.flow import Carries, Flow, LengthBuilder, numpy_kind
from surgeon_plugins.passes.dynamic_axes.rules import RULES


@dataclass(frozen=True)
class DynamicAxesOptions:
    axes: list[str] = field(default_factory=list, metadata={
        "doc": "fixed axes to make dynamic, as INPUT:AXIS:NAME (input_ids:1:seq,attention_mask:1:seq); "
               "verify them with --axis-sizes NAME=8,16"})

    def __post_init__(self) -> None:
        names = {axis.name for axis in self.parsed()}
        if len(names) > 1:
            raise ValueError(f"axes: one name at a time (got {', '.join(sorted(names))}); every axis listed takes "
                             "the same length")

    def parsed(self) -> list[DynamicAxis]:
        return [parse_dynamic_axis(text) for text in self.axes]


@dataclass(frozen=True)
class Start:
    """Where the length enters: the inputs and axes that hold it, its name and its size at the export."""

    inputs: list[tuple[gs.Variable, int]]
    name: str
    length: int


def start(graph: gs.Graph, options: DynamicAxesOptions) -> Start | None:
    """The named axes, checked against the graph; None when every one is already dynamic."""
    axes = options.parsed()
    if not axes:
        raise SurgeonError("axes: name the axes to make dynamic, e.g. "
                           "--set dynamic_axes.axes=input_ids:1:seq,attention_mask:1:seq")
    by_name = {t.name: t for t in graph.inputs if isinstance(t, gs.Variable)}
    inputs, lengths = [], {}
    for axis in axes:
        tensor = by_name.get(axis.input)
        if tensor is None:
            raise SurgeonError(f"axes: the model has no input {axis.input!r} (its inputs: {', '.join(by_name)})")
        if tensor.shape is None or axis.axis >= len(tensor.shape):
            raise SurgeonError(f"axes: input {axis.input!r} has no axis {axis.axis} (shape {tensor.shape})")
        size = tensor.shape[axis.axis]
        if isinstance(size, int) and size > 0:
            inputs.append((tensor, axis.axis))
            lengths[f"{axis.input}:{axis.axis}"] = size
    name = axes[0].name
    asked = {(axis.input, axis.axis) for axis in axes}
    taken = [f"{t.name!r} axis {k}" for t in by_name.values() for k, dim in enumerate(t.shape or [])
             if dim == name and (t.name, k) not in asked]
    if taken and inputs:
        raise SurgeonError(f"axes: the model already names {taken[0]} {name!r}; the length needs a name of its own")
    if not inputs:
        return None
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{where} is {size}" for where, size in lengths.items())
        raise SurgeonError(f"axes: the axes named {name!r} differ in size ({listed})")
    length = next(iter(lengths.values()))
    if length == 1:
        raise SurgeonError(f"axes: the model was exported at {name} 1, which leaves nothing to follow; "
                           "export it at a length of 2 or more")
    return Start(inputs, name, length)


def analyse(graph: gs.Graph, options: DynamicAxesOptions) -> tuple[Start, Flow] | None:
    begin = start(graph, options)
    if begin is None:
        return None
    if int(graph.opset) < 11:
        raise SurgeonError(f"the model is at opset {graph.opset}; dynamic_axes needs opset 11 or later "
                           "(run opset_compat first, or export at a newer opset)")
    flow = Flow(graph, begin.inputs, begin.length, RULES)
    flow.walk()
    return begin, flow


def name_axes(graph: gs.Graph, flow: Flow, name: str) -> int:
    """Name the length on every declared shape that holds it (a merged axis gets no name); how many changed."""
    changed = 0
    for tensor in graph.tensors().values():
        state = flow.state(tensor)
        if not isinstance(tensor, gs.Variable) or not isinstance(state, Carries) or tensor.shape is None:
            continue
        shape = list(tensor.shape)
        for along in state.alongs:
            if along.axis < len(shape):
                shape[along.axis] = name if shape[along.axis] == flow.length else None
        if shape != list(tensor.shape):
            tensor.shape = shape
            changed += 1
    return changed


def make_dynamic(graph: gs.Graph, options: DynamicAxesOptions) -> dict | None:
    analysed = analyse(graph, options)
    if analysed is None:
        return None
    begin, flow = analysed
    source, axis = begin.inputs[0]
    rewritten = flow.apply(LengthBuilder(graph, source, axis))
    return {
        "name": begin.name,
        "export_length": begin.length,
        "inputs": [f"{tensor.name}:{axis}" for tensor, axis in begin.inputs],
        "rewritten": rewritten,
        "shapes_updated": name_axes(graph, flow, begin.name),
    }


def detect(graph: gs.Graph, options: DynamicAxesOptions) -> list[Finding]:
    """With ``axes`` named: what the pass would rewrite, or why it cannot. Without: the integer inputs with a
    fixed axis after the batch, the token ids of a text model exported at one length."""
    if not options.axes:
        return [Finding(where=f"input {t.name!r}", message=f"axis {axis} fixed at {size}: a token length? "
                        f"--set dynamic_axes.axes={t.name}:{axis}:seq makes it dynamic")
                for t in graph.inputs if isinstance(t, gs.Variable) and t.dtype is not None
                and numpy_kind(t.dtype) in ("i", "u") and t.shape is not None
                for axis, size in enumerate(t.shape) if axis > 0 and isinstance(size, int) and size > 1]
    try:
        analysed = analyse(graph, options)
    except SurgeonError as error:
        return [Finding(where="graph", message=f"the length cannot be made dynamic: {error}", fixable=False)]
    if analysed is None:
        return []
    begin, flow = analysed
    findings = [Finding(where=f"input {tensor.name!r}", message=f"axis {axis} fixed at {begin.length}; would "
                        f"become {begin.name!r}") for tensor, axis in begin.inputs]
    findings += [Finding(where=fixes.node.name or fixes.node.op, message="; ".join(dict.fromkeys(fixes.reasons)),
                         nodes=(fixes.node.name,)) for fixes in flow.fixes.values()]
    return findings


@hookimpl
def surgeon_passes():
    return [RewritePass(name="dynamic_axes", doc="Make a fixed axis such as the token length dynamic, rewriting "
                        "what bakes it in.", options=DynamicAxesOptions, run=make_dynamic, detect=detect)]
